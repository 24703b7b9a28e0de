"""The CUDA C sources (gpu/*.cu) as sources: the host build (its cache, its launch grid, its
kernel timings), warning-free compilation on the host and with nvcc, and the kernels each file
exports.  What the kernels compute is tested per family: test_deform_conv_gpu.py (deformable
and Active Convolution), test_ddf_gpu.py, test_roi_gpu.py, test_lsdfn_gpu.py,
test_mimic_loss_gpu.py; empty inputs, bad arguments, device arrays and reproducibility of every
backend in test_backends_generic.py.
"""

import ast
import importlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from refdyn.gpu import cuda_c, host, host_compiler
from refdyn.testing.deform_conv_cases import DeformConvConfig, make_case

KERNEL_DIR = Path(host.__file__).resolve().parent

pytestmark = pytest.mark.backend("host")
#: The case the kernel-timing tests time.
CONFIGS = {"dcnv2 float32": DeformConvConfig(dtype="float32", seed=1)}


def test_launch_grid_sets_the_grid_of_every_launch_and_restores_it():
    before = host.GRID_BLOCKS, host.BLOCK_THREADS
    with host.launch_grid(4, 5):
        assert (host.GRID_BLOCKS, host.BLOCK_THREADS) == (4, 5)
    assert (host.GRID_BLOCKS, host.BLOCK_THREADS) == before != (4, 5)


def test_host_build_is_cached_per_source_and_rebuilt_when_ddf_cu_or_the_header_changes(
        tmp_path, monkeypatch):
    sources = tmp_path / "src"
    sources.mkdir()
    header, kernels = sources / host.COMPAT_HEADER.name, sources / "ddf.cu"
    shutil.copy(host.COMPAT_HEADER, header)
    shutil.copy(KERNEL_DIR / "ddf.cu", kernels)
    monkeypatch.setattr(host, "COMPAT_HEADER", header)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = host.build_library(kernels)
    assert first.parent == tmp_path / "cache" / "refdyn" and first.name.startswith("ddf-")
    built_at = first.stat().st_mtime_ns
    assert host.build_library(kernels) == first and first.stat().st_mtime_ns == built_at
    kernels.write_text(kernels.read_text() + "\n// changed\n")
    second = host.build_library(kernels)
    header.write_text(header.read_text() + "\n// changed\n")
    third = host.build_library(kernels)
    assert len({first, second, third}) == 3 and second.exists() and third.exists()
    assert sorted(p.name for p in first.parent.iterdir()) == sorted(
        p.name for p in (first, second, third))


@pytest.mark.parametrize("source", ["deform_conv.cu", "ddf.cu", "roi.cu",
                                    "mimic_loss.cu"])
def test_kernel_source_compiles_without_warnings_on_the_host(tmp_path, source):
    result = subprocess.run(
        [host_compiler(), *host.COMPILE_FLAGS, "-Wall", "-Wextra", "-Werror", "-x", "c++",
         "-include", str(host.COMPAT_HEADER), str(KERNEL_DIR / source), "-o",
         str(tmp_path / "lib.so")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")
@pytest.mark.parametrize("source", ["deform_conv.cu", "ddf.cu", "roi.cu", "mimic_loss.cu"])
def test_kernel_source_compiles_with_nvcc(tmp_path, source):
    """nvcc builds the file (finding common.cuh beside it) and exports exactly the kernels
    refdyn.gpu.cuda_c reads from its declarations."""
    ptx = tmp_path / "kernels.ptx"
    result = subprocess.run(
        ["nvcc", "-std=c++17", "--ptx", "-arch=sm_80", "-Werror", "all-warnings",
         str(KERNEL_DIR / source), "-o", str(ptx)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx.read_text()))
    assert entries == cuda_c.exported_kernels()[source]


def test_host_build_key_changes_with_common_cuh(tmp_path, monkeypatch):
    """An edited common.cuh rebuilds every library: its content is part of the build key."""
    header = tmp_path / "common.cuh"
    shutil.copy(host.COMMON_HEADER, header)
    monkeypatch.setattr(host, "COMMON_HEADER", header)
    key = host._build_key(host_compiler(), KERNEL_DIR / "ddf.cu")
    header.write_text(header.read_text() + "\n// changed\n")
    assert host._build_key(host_compiler(), KERNEL_DIR / "ddf.cu") != key


def test_every_kernel_is_named_after_its_file():
    """Each file <stem>.cu exports kernels named <stem>_... only (one stem per family)."""
    kernels = cuda_c.exported_kernels()
    assert sorted(kernels) == sorted(path.name for path in KERNEL_DIR.glob("*.cu"))
    for source, names in kernels.items():
        assert names and all(name.startswith(Path(source).stem + "_") for name in names), source


def _called_name(call: ast.Call) -> str | None:
    """The name of the function or method ``call`` calls (``launch``, ``kernel_name``)."""
    function = call.func
    return function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)


def glue_kernel_names(stem: str) -> set[str]:
    """Every kernel name the launch glue gpu/<stem>_launch.py can produce: each literal name a
    ``launch(...)`` call passes as it is, and each ``kernel_name("<name>", ...)`` named for every
    dtype.  Fails on a launch whose name is neither, which this could not check."""
    glue = KERNEL_DIR / f"{stem}_launch.py"
    launch_module = importlib.import_module(f"refdyn.gpu.{stem}_launch")
    names = set()
    for call in ast.walk(ast.parse(glue.read_text(encoding="utf-8"))):
        if not (isinstance(call, ast.Call) and _called_name(call) == "launch"):
            continue
        kernel = call.args[0]
        if isinstance(kernel, ast.Constant):
            names.add(kernel.value)
            continue
        assert isinstance(kernel, ast.Call) and _called_name(kernel) == "kernel_name" \
            and isinstance(kernel.args[0], ast.Constant), \
            f"{glue.name}:{call.lineno}: a kernel name this test cannot read"
        names.update(launch_module.kernel_name(kernel.args[0].value, dtype)
                     for dtype in cuda_c.KERNEL_SUFFIX)
    return names


@pytest.mark.parametrize("source", sorted(cuda_c.exported_kernels()))
def test_launch_glue_launches_exactly_the_kernels_its_file_exports(source):
    """Every kernel name gpu/<stem>_launch.py can produce is one <stem>.cu exports (so
    source_of finds it), and every kernel <stem>.cu exports is launched."""
    assert glue_kernel_names(Path(source).stem) == cuda_c.exported_kernels()[source]


def test_source_of_names_the_file_of_a_kernel_and_refuses_an_unknown_one():
    assert cuda_c.source_of("lsdfn_dfn_forward_f64") == "lsdfn.cu"
    assert cuda_c.source_of("deform_conv_sort_contributions") == "deform_conv.cu"
    with pytest.raises(KeyError, match="exports a kernel named 'mimic_rows_f32'"):
        cuda_c.source_of("mimic_rows_f32")


def test_kernel_times_records_each_launch_inside_the_block_only():
    case = make_case(CONFIGS["dcnv2 float32"])
    host.deform_conv2d(**case.forward_kwargs())
    with host.kernel_times() as times:
        host.deform_conv2d(**case.forward_kwargs())
        with host.kernel_times() as inner:
            host.deform_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                        deterministic=True)
    assert [t.name for t in times] == ["deform_conv_columns_f32"]   # the inner block's are apart
    assert [t.name for t in inner] == [f"deform_conv_{name}_f32" for name in (
        "grad_offset_mask", "count_contributions", "fill_contributions")] + [
        "deform_conv_sort_contributions"] + [f"deform_conv_{name}_f32" for name in (
            "weigh_contributions", "grad_input_gather", "columns")]
    assert all(t.seconds > 0 and t.bytes > 0 for t in times + inner)
    host.deform_conv2d(**case.forward_kwargs())
    assert len(times) == 1 and host.KERNEL_LOG.pending is None


@pytest.mark.backend("cupy")
def test_cupy_kernel_times_are_device_times_of_each_launch():
    from refdyn.gpu import cupy as cupy_backend
    case = make_case(CONFIGS["dcnv2 float32"])
    cupy_backend.deform_conv2d(**case.forward_kwargs())
    with cupy_backend.kernel_times() as times:
        cupy_backend.deform_conv2d_backward(case.grad_output, **case.backward_kwargs())
    assert [t.name for t in times] == [f"deform_conv_{name}_f32" for name in (
        "grad_offset_mask", "grad_input_atomic", "columns")]
    assert all(t.seconds > 0 and t.bytes > 0 for t in times)

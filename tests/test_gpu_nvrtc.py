"""Every CUDA C file of gpu/ compiles by NVRTC exactly as refdyn.gpu.cupy compiles it for an
sm_90 device (H100, H200), with no GPU here; and the float code NVRTC makes is IEEE as that
module promises.

``refdyn.gpu.cupy.compile_source`` runs as on a device, through CuPy's ``compile_using_nvrtc``,
with compute capability 9.0 given instead of read from the device.  Every nvrtcCompileProgram
call is recorded with the options NVRTC received and the PTX it made.  The options are recorded,
not rebuilt, so they are what CuPy passes: refdyn's NVRTC_OPTIONS (the include path of
common.cuh among them), then CuPy's -arch=sm_90 and --device-as-default-execution-space.  For
each source:

- it compiles to a cubin for sm_90 without a warning, so a kernel that would not compile on a
  device fails CI: an undeclared identifier, or a call of a ``__host__`` function, which the
  host build (refdyn.gpu.host) accepts; the nvcc tests of test_gpu_cuda_c.py and
  test_lsdfn_gpu.py skip where nvcc is not installed, and nvcc's options are not CuPy's
  (CuPy adds --device-as-default-execution-space, for one);
- the last -ftz is false and the last --fmad is false (NVRTC obeys the last of conflicting
  options), and there is no --use_fast_math;
- the PTX carries both: no float instruction flushes subnormals (.ftz) except the approximate
  ones CUDA's math library uses inside expf for either setting, and every float add, sub and mul
  has an explicit rounding mode, which the PTX ISA exempts from contraction into fused
  multiply-adds (so neither NVRTC nor ptxas fuses them);
- the kernels it exports are exactly those refdyn.gpu.cuda_c reads from its declarations, so
  refdyn.gpu.cupy.launch looks for each kernel in the file that has it.

The last test shows the PTX checks can fail: with -ftz=true appended after refdyn's options (as
cupy.RawModule appends it) and --fmad=true, both find instructions.

Skipped only where CuPy is not installed; pip install '.[test]' installs cupy-cuda13x and NVRTC.
"""

import re

import pytest

pytest.importorskip("cupy", reason="cupy-cuda13x is not installed (pip install '.[test]')")

from cupy.cuda import compiler  # noqa: E402
from cupy_backends.cuda.libs import nvrtc  # noqa: E402

from refdyn.gpu import cuda_c  # noqa: E402
from refdyn.gpu import cupy as cupy_backend  # noqa: E402

#: Compute capability of an H100 or H200, as CuPy passes it to NVRTC.
ARCH = "90"
SOURCES = sorted(path.name for path in cupy_backend.SOURCE_DIR.glob("*.cu"))
#: Every option CuPy passes to NVRTC for sm_90, in order: refdyn's, then CuPy's two.
EXPECTED_OPTIONS = ("--std=c++17", "--fmad=false", "-ftz=false", f"-I{cupy_backend.SOURCE_DIR}",
                    f"-arch=sm_{ARCH}", "--device-as-default-execution-space")
#: The opcode (``add.rn.f32``) of each PTX instruction line, after any predicate guard.
OPCODE = re.compile(r"^\s*(?:@!?%\w+\s+)?([a-z][\w.]*)", re.MULTILINE)
ROUNDING_MODES = {"rn", "rz", "rm", "rp"}


def opcodes(ptx: str) -> set[str]:
    """The opcodes of the instructions in ``ptx``."""
    return set(OPCODE.findall(ptx))


def flushing_instructions(ptx: str) -> set[str]:
    """Opcodes that flush float32 subnormals (``.ftz``), except approximate ones (``.approx``):
    refdyn's sources use no approximate intrinsics, and CUDA's expf uses ``ex2.approx.ftz.f32``
    on a range-reduced argument whatever -ftz says."""
    return {op for op in opcodes(ptx) if "ftz" in op.split(".") and "approx" not in op.split(".")}


def contractible_instructions(ptx: str) -> set[str]:
    """Float add, sub and mul opcodes without an explicit rounding mode: the ones the PTX ISA lets
    the optimizer fuse into fused multiply-adds."""
    return {op for op in opcodes(ptx)
            if op.split(".")[0] in ("add", "sub", "mul") and op.split(".")[-1] in ("f32", "f64")
            and not ROUNDING_MODES & set(op.split("."))}


def last_value(options, name: str) -> str | None:
    """The value of the last ``-name=value`` or ``--name=value`` in ``options`` (NVRTC obeys the
    last), or None."""
    values = [option.split("=", 1)[1] for option in options
              if re.fullmatch(rf"--?{name}=\w+", option)]
    return values[-1] if values else None


@pytest.fixture
def nvrtc_compiles(monkeypatch):
    """The NVRTC compiles made during the test, each as (options, PTX, log).

    Wraps nvrtcCompileProgram where CuPy calls it.  Also takes CuPy's per-device memo off its
    choice of -arch: the memo's key asks the CUDA driver for the current device, which needs one,
    while the choice depends only on the architecture given, NVRTC's version and
    CUPY_COMPILE_WITH_PTX.
    """
    compiles = []
    compile_program = nvrtc.compileProgram

    def recording_compile(program, options):
        compile_program(program, options)
        compiles.append((tuple(options), nvrtc.getPTX(program).decode(),
                         nvrtc.getProgramLog(program)))

    monkeypatch.setattr(nvrtc, "compileProgram", recording_compile)
    monkeypatch.setattr(compiler, "_get_arch_for_options_for_nvrtc",
                        compiler._get_arch_for_options_for_nvrtc.__wrapped__)
    return compiles


@pytest.mark.parametrize("source", SOURCES)
def test_source_compiles_for_sm_90_as_the_cupy_backend_compiles_it(source, nvrtc_compiles):
    """The checks listed in this module's docstring, for one source."""
    binary = cupy_backend.compile_source(source, arch=ARCH)
    [(options, ptx, log)] = nvrtc_compiles
    assert binary.startswith(b"\x7fELF"), f"no cubin for sm_{ARCH}; options: {options}"
    assert options == EXPECTED_OPTIONS
    assert (last_value(options, "ftz"), last_value(options, "fmad")) == ("false", "false"), options
    assert not any("use_fast_math" in option for option in options), options
    assert log.strip() == "", f"NVRTC warns with options {options}:\n{log}"
    assert flushing_instructions(ptx) == set()
    assert contractible_instructions(ptx) == set()
    kernels = set(re.findall(r"\.entry\s+(\w+)", ptx))
    assert kernels and kernels == cuda_c.exported_kernels()[source]


def test_ptx_checks_see_flushing_and_contraction(monkeypatch, nvrtc_compiles):
    """The PTX checks are not vacuous: with -ftz=true after refdyn's options (where
    cupy.RawModule puts it) and --fmad=true, they find flushing float32 adds and multiplies, and
    adds and multiplies open to contraction."""
    monkeypatch.setattr(cupy_backend, "NVRTC_OPTIONS",
                        cupy_backend.NVRTC_OPTIONS + ("--fmad=true", "-ftz=true"))
    cupy_backend.compile_source("ddf.cu", arch=ARCH)
    [(options, ptx, _)] = nvrtc_compiles
    assert {"add.ftz.f32", "mul.ftz.f32"} <= flushing_instructions(ptx), options
    assert {"add.ftz.f32", "mul.ftz.f32", "add.f64", "mul.f64"} <= \
        contractible_instructions(ptx), options

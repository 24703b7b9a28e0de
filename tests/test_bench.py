"""``refdyn bench``: the report's structure, the peers' correctness checks, missing peers.

No timing is asserted: the benchmark runs with ``--quick`` (tiny sizes) and one repeat.
"""

import importlib.util
import json

import numpy as np
import pytest

from refdyn import bench, bench_cases, bench_peers, bench_report, bench_sections, bench_timing, \
    cli
from refdyn.testing.deform_conv_cases import DeformConvConfig


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    assert cli.main(["bench", "--quick", "--repeats", "1", "--json", str(path)]) == 0
    return json.loads(path.read_text())


def all_rows(report):
    yield from report["standard"]["rows"]
    for point in report["scaling"]["points"]:
        yield from point["rows"]
    for case in report["operators"]["cases"]:
        yield from case["rows"]


def test_report_has_every_section(report):
    assert set(report["cases"]) == set(bench.CASES)
    assert report["machine"]["usable_cores"] >= 1 and report["machine"]["numpy"] == np.__version__
    standard = report["standard"]
    assert {row["pass"] for row in standard["rows"]
            if row["implementation"] == bench_sections.NUMPY} == set(bench_sections.PASSES)
    assert [row["pass"] for row in standard["memory"]] == ["forward", "backward"]
    assert [(p["series"], p["value"]) for p in report["scaling"]["points"]] == [
        (series, value) for series, value, _ in bench_cases.scaling_configs(quick=True)]
    assert {case["operator"] for case in report["operators"]["cases"]} == {
        "roi_align", "lsdfn", "ddf"}
    issue_goals = report["goals"][:len(bench_sections.GOALS)]
    assert [goal["goal"] for goal in issue_goals] == [goal[0] for goal in bench_sections.GOALS]
    assert all(goal["met"] is None for goal in issue_goals)  # --quick


def test_every_row_is_timed_or_says_why(report):
    for row in all_rows(report):
        if row["times_s"]:
            assert len(row["times_s"]) == 1 and row["median_s"] == row["times_s"][0]
            assert row["check_error"] <= bench_timing.CHECK_TOLERANCE
            assert not row["not_run"]
        else:
            assert row["not_run"], row


def test_ratios_are_computed_from_the_reported_medians(report):
    medians = {(row["implementation"], row["pass"]): row["median_s"]
               for row in report["standard"]["rows"] if row["times_s"]}
    assert report["standard"]["ratios"], "at least NumPy against ONNX Runtime is expected"
    for ratio in report["standard"]["ratios"]:
        top = medians[(ratio["numerator"], ratio["pass"])]
        bottom = medians[(ratio["denominator"], ratio["pass"])]
        assert ratio["ratio"] == pytest.approx(top / bottom)


def test_numpy_memory_is_within_the_documented_bound(report):
    memory = report["standard"]["memory"] + [row for point in report["scaling"]["points"]
                                             for row in point["memory"]]
    assert all(row["within_bound"] and row["extra_bytes"] <= row["bound_bytes"]
               for row in memory)
    assert report["goals"][-1]["met"] is True


def test_onnxruntime_peer_passes_its_check(report):
    pytest.importorskip("onnxruntime")
    rows = [row for row in report["standard"]["rows"]
            if row["implementation"] == "onnxruntime DeformConv"]
    assert len(rows) == 1 and rows[0]["times_s"] and rows[0]["check_error"] < 1e-5


@pytest.mark.parametrize("config", [
    DeformConvConfig(batch=2, in_channels=4, out_channels=3, height=7, width=5,
                     offset_groups=2, offset_kind="normal", dtype="float32"),
    DeformConvConfig(batch=1, in_channels=2, out_channels=2, height=9, width=8, stride=(2, 1),
                     dilation=(1, 2), padding=(0, 2), with_mask=False, offset_kind="normal",
                     dtype="float32"),
    DeformConvConfig(height=1, width=4, kernel=(1, 3), offset_kind="normal", dtype="float32"),
], ids=["offset-groups", "stride-dilation-no-mask", "one-row"])
def test_torch_composition_matches_refdyn(config):
    pytest.importorskip("torch")
    case = bench_cases.Bench("deform_conv2d", config)
    geometry = {name: case.case.params[name] for name in ("stride", "padding", "dilation")}
    peer = bench_peers.torch_cpu_deform_conv2d(case.case.arrays, geometry, case.case.grad_output,
                                               case.expected, threads=1)
    errors = peer.check()
    assert errors["forward"] < 1e-5 and errors["backward"] < 1e-5, errors


def test_missing_peers_are_reported_not_failed(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name.split(".")[
        0] in ("torch", "onnx", "onnxruntime") else real(name, *args))
    result = bench.run(bench.build_parser().parse_args(["--quick", "--repeats", "1",
                                                        "--case", "standard"]))
    reasons = {row["implementation"]: row["not_run"] for row in result["standard"]["rows"]}
    assert reasons["onnxruntime DeformConv"].startswith("not installed (onnx, onnxruntime)")
    assert "pip install" in reasons["torch CPU grid_sample+matmul"]
    assert "not installed" in reasons["torchvision CUDA"]
    assert "scaling" not in result and "not installed" in capsys.readouterr().out


@pytest.mark.parametrize("arguments, message", [
    (["--case", "standard,nope"], "unknown case(s) nope"),
    (["--case", ","], "(none given)"),
    (["--repeats", "0"], "must be a positive integer"),
    (["--repeats", "many"], "must be a positive integer"),
])
def test_bad_arguments_are_rejected_clearly(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", *arguments])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_offsets_are_moved_off_the_kinks_only_near_them():
    offset = np.array([-2.0, -1.0004, 0.9996, 0.3, 1e-4, -1e-4, 2.5], dtype=np.float32)
    moved = bench_cases.off_the_kinks(offset, margin=1e-3)
    distance = np.abs(moved - np.round(moved))
    assert np.all(distance >= 1e-3 - 1e-7) and moved.dtype == offset.dtype
    np.testing.assert_array_equal(moved[[3, 6]], offset[[3, 6]])
    assert np.all(np.abs(moved - offset) <= 1e-3 + 1e-7)


def test_gpu_rows_run_end_to_end_on_the_numba_simulator(monkeypatch, nb):
    """The GPU half of the standard case runs through where no GPU is: with the CUDA simulator
    standing in for a device, the Numba rows are checked against the float64 reference and
    timed, and their achieved bandwidth is reported (on a GPU this runs on the device)."""
    from refdyn import gpu
    devices = gpu.cuda_device_count()
    monkeypatch.setattr(gpu, "cuda_device_count", lambda: max(1, devices))
    if devices == 0:  # the simulator stands in for Numba only: CuPy needs a real device
        real_problem = gpu.backend_problem
        monkeypatch.setattr(gpu, "backend_problem", lambda backend: "no CUDA device"
                            if backend == "cupy" else real_problem(backend))
    report = bench.run(bench.build_parser().parse_args(
        ["--quick", "--repeats", "1", "--case", "standard"]))
    numba_rows = [row for row in report["standard"]["rows"]
                  if row["implementation"] == "refdyn numba"]
    assert [row["pass"] for row in numba_rows] == list(bench_sections.PASSES)
    for row in numba_rows:
        assert row["times_s"] and row["check_error"] <= bench_timing.CHECK_TOLERANCE, row
        assert row["bytes_moved"] > 0
    lines = bench_report.format_rows(numba_rows, {"bytes_per_s": 1e12})
    assert all("of peak" in line for line in lines[1:])


def test_kernel_rows_time_every_cuda_c_kernel_of_a_call(monkeypatch):
    """The per-kernel table (CUDA events on a GPU) through the host backend's CPU clock: every
    kernel of a forward and a backward, its launches, time and argument bytes."""
    from refdyn.gpu import host
    monkeypatch.setattr(bench_timing, "gpu_problem", lambda backend: None)
    case = bench_cases.Bench("deform_conv2d", bench_cases.standard_config(quick=True))
    peer = bench_timing.refdyn_peer(case, "host", ("forward", "backward"))
    rows = bench_sections.kernel_rows(peer, host.kernel_times)
    kernels = {(row["pass"], row["kernel"]): row for row in rows}
    assert set(kernels) == {("forward", "deform_conv_columns_f32"),
                            ("backward", "deform_conv_columns_f32"),
                            ("backward", "deform_conv_grad_offset_mask_f32"),
                            ("backward", "deform_conv_grad_input_atomic_f32")}
    arrays = case.case.arrays
    columns_bytes = (arrays["input"].nbytes + arrays["offset"].nbytes + arrays["mask"].nbytes
                     + arrays["input"].nbytes * 9 + 18 * 8)      # the columns: C_in K H W float32
    assert kernels["forward", "deform_conv_columns_f32"]["bytes"] == columns_bytes
    assert all(row["launches"] == 1 and row["seconds"] > 0 for row in rows)
    lines = bench_report.format_kernels(rows, {"bytes_per_s": 1e12})
    assert len(lines) == 4 and all("GB/s" in line and "of peak" in line for line in lines)


def test_a_goal_from_disturbed_timings_is_flagged_unstable():
    steady = bench_timing.Row(bench_sections.NUMPY, "forward", times_s=[1.0, 1.01, 1.02])
    disturbed = bench_timing.Row("onnxruntime DeformConv", "forward", times_s=[0.4, 0.8, 0.8])
    calm = bench_timing.Row("onnxruntime DeformConv", "forward", times_s=[0.4, 0.41, 0.42])
    for peer, unstable in ((disturbed, True), (calm, False)):
        found = bench_sections.ratios([steady, peer],
                                      [(bench_sections.NUMPY, "onnxruntime DeformConv")])
        report = {"quick": False, "standard": {"ratios": found, "memory": []}}
        goal = bench_sections.goals(report)[0]
        assert goal["ratio"] == pytest.approx(steady.median_s / peer.median_s)
        assert goal["met"] is (goal["ratio"] <= 3.0) and goal["unstable"] is unstable
        assert goal["spread"] == pytest.approx(max(1.01, peer.median_s / min(peer.times_s)))
        text = bench_report.format_report({
            "machine": {"cpu": "", "cores": 1, "usable_cores": 1, "platform": "", "numpy": "",
                        "numpy_blas": "", "onnxruntime_intra_op_threads": 1, "torch_threads": 1,
                        "cuda_devices": 0},
            "repeats": 3, "quick": False, "goals": [goal]})
        assert ("UNSTABLE" in text) is unstable

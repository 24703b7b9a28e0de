"""``refdyn validate TARGET``: the report, its files, exit status, known differences kept
apart, and the not-installed path."""

import dataclasses
import importlib.util
import json
import re

import numpy as np
import pytest

import refdyn
from refdyn import cli
from refdyn.testing import targets
from refdyn.testing.targets import ConfigClass, KnownDifference, Suite, Target


def planted_target(offset_error: float) -> Target:
    """A target whose deform_conv2d adds ``offset_error`` to one output element."""
    def candidate(**kwargs):
        out = refdyn.deform_conv2d(**kwargs)
        if out.size:
            out.flat[-1] += offset_error
        return out

    return Target(
        "planted", "refdyn plus a planted error", (), "nothing to install",
        lambda: [Suite("deform_conv2d", "forward", lambda: candidate,
                       (ConfigClass("kinks, float64", {"offset_kinds": ("integer",),
                                                       "dtypes": ("float64",)}),))],
        lambda: [KnownDifference("a documented difference", "a source",
                                 lambda: "measured 0.5")])


def run(monkeypatch, capsys, target, *extra):
    monkeypatch.setitem(targets.TARGETS, target.name, target)
    status = cli.main(["validate", target.name, "--max-examples", "10", *extra])
    return status, capsys.readouterr().out


def test_not_installed_target_is_reported_with_its_install_command(monkeypatch, capsys):
    missing = Target("missing", "needs a module that does not exist",
                     ("refdyn_no_such_module",), "pip install refdyn-no-such-module",
                     lambda: pytest.fail("suites of a missing target must not be built"))
    status, output = run(monkeypatch, capsys, missing)
    assert status == 0
    assert "not installed (refdyn_no_such_module): pip install refdyn-no-such-module" in output
    assert "not run (this is not a failure)" in output


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None,
                    reason="torchvision is installed here; the comparison runs instead")
def test_torchvision_without_torchvision_is_not_a_failure(capsys):
    assert cli.main(["validate", "torchvision"]) == 0
    assert "pip install torch torchvision" in capsys.readouterr().out


def test_real_disagreement_fails_with_the_counterexample(monkeypatch, capsys, tmp_path):
    status, output = run(monkeypatch, capsys, planted_target(1e-3), "--json",
                         str(tmp_path / "report.json"), "--markdown", str(tmp_path / "report.md"))
    assert status == 1
    assert "DISAGREES: deform_conv2d forward, kinks, float64" in output
    assert "configuration: batch=1" in output and "expected" in output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "disagreements"
    assert report["classes"][0]["verdict"] == "DISAGREES"
    assert report["classes"][0]["max_abs_error"] == pytest.approx(1e-3)
    markdown = (tmp_path / "report.md").read_text()
    assert "## Disagreements (minimal counterexamples)" in markdown


def test_known_differences_are_reported_apart_and_do_not_fail(monkeypatch, capsys):
    status, output = run(monkeypatch, capsys, planted_target(0.0))
    assert status == 0
    table, known = output.split("Known convention differences")
    assert "agrees" in table and "DISAGREES" not in table
    assert "a documented difference" in known and "measured 0.5" in known


onnx_missing = pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="onnx and onnxruntime are not installed (pip install 'refdyn[validate]')")


@onnx_missing
def test_onnxruntime_agrees_and_writes_the_reports(capsys, tmp_path):
    status = cli.main(["validate", "onnxruntime", "--max-examples", "15", "--json",
                       str(tmp_path / "ort.json"), "--markdown", str(tmp_path / "ort.md")])
    output = capsys.readouterr().out
    assert status == 0, output
    report = json.loads((tmp_path / "ort.json").read_text())
    assert report["status"] == "agrees"
    classes = {(c["operator"], c["config_class"]) for c in report["classes"]}
    for operator in ("deform_conv2d", "roi_align"):
        for dtype in ("float32", "float64"):
            assert (operator, f"far out-of-range, {dtype}") in classes
            assert any(name.startswith("interior samples") and name.endswith(dtype)
                       for op, name in classes if op == operator)
    assert all(c["examples"] >= 1 for c in report["classes"])
    known = output.split("Known convention differences")[1]
    assert "where the mask is 0" in known and "NaN outputs refdyn 4 of 16" in known
    assert "| operator | direction |" in (tmp_path / "ort.md").read_text()


@onnx_missing
def test_onnx_reference_known_differences_are_measured(capsys):
    assert cli.main(["validate", "onnx-reference", "--max-examples", "10"]) == 0
    known = capsys.readouterr().out.split("Known convention differences")[1]
    error = float(known.split("max |error| ")[1].split()[0])
    assert 1e-9 < error < 1e-4          # float32-sized, far above the float64 tolerance
    assert "the evaluator raised" in known


@onnx_missing
def test_onnx_candidates_see_a_planted_layout_error():
    """The ONNX candidate really runs the target: feeding it swapped offsets disagrees."""
    from refdyn.testing.conformance import run_conformance

    ort = targets.onnx_deform_conv2d(targets.run_onnxruntime)

    def swapped(input, offset, weight, **kwargs):
        pairs = offset.reshape(offset.shape[0], offset.shape[1] // 2, 2, *offset.shape[2:])
        return ort(input, pairs[:, :, ::-1].reshape(offset.shape).copy(), weight, **kwargs)

    result = run_conformance(swapped, "deform_conv2d", offset_kinds=("normal",),
                             boundaries=("zeros",), dtypes=("float32",), derandomize=True)
    assert not result.ok and "samples at offset group" in result.counterexample
    assert np.isfinite(result.max_abs_error) and result.max_abs_error > 1e-3


def test_torchvision_suites_cover_issue_7_without_building_candidates():
    """deform_conv2d, roi_align and ps_roi_align, forward and backward; building the suites
    imports nothing from torchvision (the not-installed path above stays cheap)."""
    suites = targets.TARGETS["torchvision"].suites()
    covered = {(suite.operator, suite.direction) for suite in suites}
    assert covered == {(operator, direction) for operator in ("deform_conv2d", "roi_align",
                                                              "ps_roi_align")
                       for direction in ("forward", "backward")}
    assert all(suite.classes for suite in suites)


def test_adaptive_rois_without_samples_are_left_out():
    from refdyn.testing.roi_cases import RoIPoolConfig

    def config(**kwargs):
        return RoIPoolConfig(operator="ps_roi_align", **kwargs)

    excluded = targets.adaptive_rois_without_samples("ps_roi_align")
    assert excluded("ps_roi_align", config(roi_kind="zero_size", sampling_ratio=0))
    assert excluded("ps_roi_align", config(roi_kind="inverted", sampling_ratio=0))
    assert not excluded("ps_roi_align", config(roi_kind="zero_size", sampling_ratio=2))
    assert not excluded("ps_roi_align", config(roi_kind="inside", sampling_ratio=0))
    assert not excluded("ps_roi_align", config(roi_kind="zero_size", sampling_ratio=0, rois=0))
    assert not excluded("roi_align", config(roi_kind="zero_size", sampling_ratio=0))
    aligned_roi_align = targets.adaptive_rois_without_samples("roi_align")
    roi_align_config = RoIPoolConfig(operator="roi_align", roi_kind="inverted", sampling_ratio=0)
    assert aligned_roi_align("roi_align", roi_align_config)
    assert not aligned_roi_align("roi_align", dataclasses.replace(roi_align_config, aligned=False))


def fake_torchvision(monkeypatch):
    """``torchvision.ops.ps_roi_align`` with torchvision's signature, computed by refdyn through
    a torch autograd Function: it exercises the target's argument passing and autograd path."""
    import sys
    import types

    torch = pytest.importorskip("torch")

    class PSRoIAlign(torch.autograd.Function):
        @staticmethod
        def forward(ctx, input, boxes, output_size, spatial_scale, sampling_ratio):
            ctx.save_for_backward(input, boxes)
            ctx.params = (output_size, spatial_scale, sampling_ratio)
            return torch.from_numpy(refdyn.ps_roi_align(input.detach().numpy(), boxes.numpy(),
                                                        *ctx.params))

        @staticmethod
        def backward(ctx, grad):
            input, boxes = ctx.saved_tensors
            grads = refdyn.ps_roi_align_backward(grad.numpy(), input.detach().numpy(),
                                                 boxes.numpy(), *ctx.params)
            return torch.from_numpy(grads.grad_input), None, None, None, None

    def ps_roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1):
        assert isinstance(output_size, tuple) and isinstance(sampling_ratio, int)
        return PSRoIAlign.apply(input, boxes, output_size, spatial_scale, sampling_ratio)

    ops = types.ModuleType("torchvision.ops")
    ops.ps_roi_align = ps_roi_align
    package = types.ModuleType("torchvision")
    package.ops = ops
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.ops", ops)


def test_torchvision_ps_roi_align_suites_run_through_a_stand_in(monkeypatch, capsys, tmp_path):
    fake_torchvision(monkeypatch)
    real = targets.TARGETS["torchvision"]
    suites = [suite for suite in real.suites() if suite.operator == "ps_roi_align"]
    stand_in = Target("torchvision-stand-in", real.description, (), real.install,
                      lambda: suites, lambda: real.known_differences()[1:])
    status, output = run(monkeypatch, capsys, stand_in, "--json", str(tmp_path / "tv.json"))
    assert status == 0, output
    report = json.loads((tmp_path / "tv.json").read_text())
    directions = {(c["operator"], c["direction"]) for c in report["classes"]}
    assert directions == {("ps_roi_align", "forward"), ("ps_roi_align", "backward")}
    assert all(c["examples"] >= 1 for c in report["classes"])
    known = output.split("Known convention differences")[1]
    assert "0 NaN of 8 outputs, refdyn 0 (all 0)" in known     # the stand-in divides like refdyn


# ---- refdyn validate all: isolation, the matrix ----

def worker(tmp_path, body: str):
    """A worker process that writes its progress file, runs ``body``, then writes its report:
    (command, progress file, report file)."""
    import sys

    progress, report = str(tmp_path / "progress"), str(tmp_path / "report.json")
    code = (f"open({progress!r}, 'w').write('configuration X')\n{body}\n"
            f"open({report!r}, 'w').write('{{}}')")
    return [sys.executable, "-c", code], progress, report


def test_a_hanging_framework_call_is_killed_and_reported(tmp_path):
    import time

    from refdyn.validate import _run_worker

    command, progress, report = worker(tmp_path, "import time\ntime.sleep(60)")
    started = time.monotonic()
    problem = _run_worker(command, {}, progress, 1.5, report)
    assert problem.startswith("hung: no answer for 1.5 s") and time.monotonic() - started < 30
    assert open(progress).read() == "configuration X"


def test_a_crashing_framework_is_reported_with_its_exit_status(tmp_path):
    from refdyn.validate import _run_worker

    command, progress, report = worker(tmp_path, "import os\nos.abort()")
    assert _run_worker(command, {}, progress, 30, report).startswith("crashed (exit status -6)")
    command, progress, report = worker(tmp_path, "print('fine')")
    assert _run_worker(command, {}, progress, 30, report) is None


def test_a_framework_allocating_without_bound_fails_inside_its_memory_limit(tmp_path):
    from refdyn.validate import WORKER_MEMORY, _run_worker

    command, progress, report = worker(tmp_path, f"block = bytearray({WORKER_MEMORY + (1 << 30)})")
    assert "MemoryError" in _run_worker(command, {}, progress, 30, report)


def test_validate_all_reports_every_target_and_the_matrix(monkeypatch, tmp_path, capsys):
    from refdyn import validate

    missing = Target("missing", "needs a module that does not exist", ("refdyn_no_such_module",),
                     "pip install refdyn-no-such-module", lambda: [])
    planted = planted_target(1e-3)

    def fake_worker(name, max_examples, time_limit):
        report = validate.validate(targets.TARGETS[name], max_examples)
        if name == "crashing":
            report.failure = "crashed (exit status -11)\n  while running: configuration X"
        return report

    monkeypatch.setattr(targets, "TARGETS", {"missing": missing, "planted": planted,
                                             "crashing": Target("crashing", "crashes", (), "",
                                                                lambda: [])})
    monkeypatch.setattr(validate, "TARGETS", targets.TARGETS)
    monkeypatch.setattr(validate, "_worker_report", fake_worker)
    status = cli.main(["validate", "all", "--max-examples", "5", "--json",
                       str(tmp_path / "all.json"), "--markdown", str(tmp_path / "all.md")])
    output = capsys.readouterr().out
    assert status == 1
    assert "Not run: not installed (refdyn_no_such_module): pip install refdyn-no-such-module" in output
    assert "CRASHED OR HUNG" in output and "configuration X" in output
    assert "DISAGREES: deform_conv2d forward, kinks, float64" in output
    assert output.rstrip().endswith("1 with real disagreements")
    assert "FAILED (planted, crashing)" in output
    reports = json.loads((tmp_path / "all.json").read_text())
    assert [report["status"] for report in reports] == ["not installed", "disagreements",
                                                        "crashed or hung"]
    markdown = (tmp_path / "all.md").read_text()
    assert markdown.startswith("# Conformance of other frameworks with refdyn")
    assert re.search(r"\| deform_conv2d \| planted \| forward \| kinks, float64 \| \d+ \| 0 \| "
                     r"1\.00e-03 \|", markdown)


def test_rejected_inputs_are_counted_not_compared():
    from refdyn.testing.conformance import run_conformance

    def refuses_one_pixel(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1,
                          aligned=False):
        if input.shape[-1] == 1:
            raise RuntimeError("width 1 is not supported")
        return refdyn.roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)

    result = run_conformance(refuses_one_pixel, "roi_align", max_examples=60, derandomize=True,
                             rejections_allowed=True)
    assert result.ok and 0 < result.rejected < result.examples
    assert "RuntimeError: width 1 is not supported" in result.rejection
    assert not run_conformance(refuses_one_pixel, "roi_align", max_examples=60,
                               derandomize=True).ok


@pytest.mark.parametrize("name,measured", [
    ("paddle", ["nan", "std::bad_alloc", "[[0.64, 0.16], [0.16, 0.04]]", "by up to 3.46"]),
    ("openvino", ["nan", "comes back as 1.0", "masked to 0, max |error| "]),
    ("torchvision", ["8 NaN of 8 outputs"])])
def test_cpu_framework_targets_agree_and_measure_their_defects(name, measured, capsys):
    """The installed framework agrees on every class, and each documented convention and
    defect is measured again on this version (the probes print what they found)."""
    target = targets.TARGETS[name]
    if target.problem():
        pytest.skip(f"{name}: {target.problem()}")
    status = cli.main(["validate", name, "--max-examples", "4"])
    output = capsys.readouterr().out
    assert status == 0, output
    known = output.split("Known convention differences")[1]
    for text in measured:
        assert text in known, known
    if name == "openvino":      # the unpadded rule is refdyn's border rule, masked outside
        assert float(known.split("masked to 0, max |error| ")[1].split()[0]) < 1e-5


def test_torchvision_float32_roi_align_passes_thousands_of_edge_examples():
    """torchvision computes the RoIAlign grid in float32: integer RoIs across the edges put
    samples within rounding of x = -1 and x = W, where it reads the other side of the rule.
    Those elements are counted as near jumps, never as disagreements."""
    target = targets.TARGETS["torchvision"]
    if target.problem():
        pytest.skip(f"torchvision: {target.problem()}")
    from refdyn.testing.conformance import run_conformance

    for direction, candidate in (("forward", targets.torchvision_roi_align_forward()),
                                 ("backward", targets.torchvision_roi_align_backward())):
        result = run_conformance(candidate, "roi_align", direction, dtypes=("float32",),
                                 roi_kinds=("integer_edges",), max_examples=2000,
                                 derandomize=True)
        assert result.ok, result.counterexample
        assert result.examples == 2000 and result.near_jumps > 0 and result.max_abs_error < 1e-5


def test_a_new_worker_goes_on_after_the_class_a_framework_hung_in(monkeypatch):
    """_worker_report's restart: the hung class is reported with its configuration, the next
    worker takes it from the journal and runs the remaining classes."""
    from refdyn import validate

    classes = (ConfigClass("kinks, float64", {"offset_kinds": ("integer",), "dtypes": ("float64",)}),
               ConfigClass("zero offsets, float64", {"offset_kinds": ("zero",),
                                                     "dtypes": ("float64",)}))
    target = Target("two", "two classes", (), "", lambda: [
        Suite("deform_conv2d", "forward", lambda: refdyn.deform_conv2d, classes)])
    monkeypatch.setitem(targets.TARGETS, "two", target)
    calls = []

    def fake_run_worker(command, environment, progress, time_limit, output):
        calls.append(command)
        if len(calls) == 1:
            with open(progress, "w") as handle:
                handle.write("configuration X")
            return "hung: no answer for 1 s (killed)"
        report = validate.validate(target, 5, environment[validate.JOURNAL_FILE_VARIABLE])
        with open(output, "w") as handle:
            json.dump(report.to_json(), handle)
        return None

    monkeypatch.setattr(validate, "_run_worker", fake_run_worker)
    report = validate._worker_report("two", 5, 1.0)
    assert len(calls) == 2 and [c.config_class for c in report.classes] == [
        "kinks, float64", "zero offsets, float64"]
    hung, ran = report.classes
    assert hung.verdict == "CRASHED OR HUNG" and "hung" in hung.counterexample
    assert "configuration X" in hung.counterexample
    assert ran.verdict == "agrees" and ran.examples == 5


def test_paddle_backward_leaves_out_aligned_rois_below_one_pixel_inverted_ones_included():
    """Paddle's roi_align backward clamps every side to >= 1 pixel, so an inverted side (negative)
    is as far from its forward as a tiny one; the CI run of the whole matrix found the inverted
    RoI [2.80, 2.40, 1.79, 0.95] (sides -1.0 and -1.4) when only |side| < 1 was left out."""
    from refdyn.testing.framework_targets import aligned_roi_below_one_pixel
    from refdyn.testing.roi_cases import RoIPoolConfig

    def config(**kwargs):      # seed 3: one RoI, sides 3.05 and 2.00 (inverted: their negatives)
        return RoIPoolConfig(operator="roi_align", aligned=True, sampling_ratio=1, rois=1,
                             seed=3, **kwargs)

    assert aligned_roi_below_one_pixel("roi_align", config(roi_kind="inverted"))
    assert aligned_roi_below_one_pixel("roi_align", config(roi_kind="tiny"))
    assert not aligned_roi_below_one_pixel("roi_align", config(roi_kind="inside"))
    assert not aligned_roi_below_one_pixel(
        "roi_align", dataclasses.replace(config(roi_kind="inverted"), aligned=False))
    assert not aligned_roi_below_one_pixel("ps_roi_align", config(roi_kind="inverted"))

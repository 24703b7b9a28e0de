"""``refdyn validate TARGET``: the report, its files, exit status, known differences kept
apart, and the not-installed path."""

import importlib.util
import json

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


def test_zero_size_adaptive_ps_roi_align_configs_are_left_out():
    from refdyn.testing.roi_cases import RoIPoolConfig

    def config(**kwargs):
        return RoIPoolConfig(operator="ps_roi_align", **kwargs)

    excluded = targets.empty_adaptive_ps_roi_align
    assert excluded("ps_roi_align", config(roi_kind="zero_size", sampling_ratio=0))
    assert not excluded("ps_roi_align", config(roi_kind="zero_size", sampling_ratio=2))
    assert not excluded("ps_roi_align", config(roi_kind="inside", sampling_ratio=0))
    assert not excluded("ps_roi_align", config(roi_kind="zero_size", sampling_ratio=0, rois=0))
    assert not excluded("roi_align", config(roi_kind="zero_size", sampling_ratio=0))


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

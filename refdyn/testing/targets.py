"""Other implementations ``refdyn validate`` compares with refdyn.

A :class:`Target` names the modules it needs, how to install them, and its :class:`Suite` s:
one operator and direction each, a candidate with refdyn's signature (built from
:mod:`refdyn.testing.adapters`), and the configuration classes to run (strategy knobs).  Its
:class:`KnownDifference` probes measure documented convention differences on a fixed input;
they are reported apart from the suites.  A further target plugs in by adding to
:data:`TARGETS`.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .. import deform_conv2d
from .adapters import onnx_deform_conv_attributes, onnx_roi_align_inputs

DEFORM_CONV_OPSET, ROI_ALIGN_OPSET = 19, 16
#: Examples ``refdyn validate`` draws per configuration class unless told otherwise.
DEFAULT_EXAMPLES = 100
#: Seconds one framework call may take in ``refdyn validate all`` before it is reported as hung.
DEFAULT_TIME_LIMIT = 60


@dataclass(frozen=True)
class ConfigClass:
    """A named class of configurations: the strategy knobs that draw it."""

    name: str
    knobs: dict


@dataclass(frozen=True)
class Suite:
    """One operator and direction of a target: ``candidate()`` builds the function to check."""

    operator: str
    direction: str
    candidate: Callable[[], Callable]
    classes: tuple[ConfigClass, ...]


@dataclass(frozen=True)
class KnownDifference:
    """A documented convention difference; ``probe()`` measures it and returns one line.
    ``excludes(operator, config)`` names the configurations the difference affects, which the
    target's suites leave out (None: it affects none of them).  ``reproduce``: for a defect,
    the operator and the strategy knobs that draw its configurations, so that ``refdyn
    validate`` shrinks a minimal reproducer (None: none, e.g. one that would crash the worker)."""

    name: str
    source: str
    probe: Callable[[], str]
    excludes: Optional[Callable[[str, object], bool]] = None
    reproduce: Optional[tuple[str, dict]] = None


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    modules: tuple[str, ...]
    install: str
    suites: Callable[[], list[Suite]]
    known_differences: Callable[[], list[KnownDifference]] = field(default=lambda: [])

    def problem(self) -> Optional[str]:
        """Why the target cannot run here (a module is missing), or None."""
        return not_installed(self.modules, self.install)

    def versions(self) -> dict[str, str]:
        """The version of each module the target runs (its ``__version__``)."""
        return {name: str(getattr(importlib.import_module(name), "__version__", "unknown"))
                for name in self.modules}


def not_installed(modules, install: str) -> Optional[str]:
    """"not installed (<the missing modules>): <install>" when one of ``modules`` is missing,
    else None."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    return f"not installed ({', '.join(missing)}): {install}" if missing else None


def _classes(dtypes, kind_knob: str, kinds: dict[str, tuple[str, ...]], **common):
    return tuple(ConfigClass(f"{name}, {dtype}", {kind_knob: values, "dtypes": (dtype,), **common})
                 for name, values in kinds.items() for dtype in dtypes)


#: deform_conv2d configuration classes by offset kind (refdyn.testing.deform_conv_cases).
DEFORM_CONV_KINDS = {"interior samples (fractional offsets off the kinks)": ("kink_free",),
                     "border samples (zero offsets, taps at -1 and H)": ("zero",),
                     "kinks (integer offsets)": ("integer",),
                     "far out-of-range": ("far",),
                     "trained-like (normal offsets)": ("normal",)}
#: roi_align configuration classes by RoI kind (refdyn.testing.roi_cases).
ROI_ALIGN_KINDS = {"interior samples": ("inside",),
                   "border samples": ("partly_outside", "zero_size"),
                   "kinks (integer RoIs)": ("integer",),
                   "integer RoIs across the edges (samples on x = -1, W)": ("integer_edges",),
                   "tiny, inverted and duplicated RoIs": ("tiny", "inverted", "duplicated"),
                   "far out-of-range": ("outside",)}
#: deform_ps_roi_pool configuration classes (the official rules).
PS_ROI_POOL_KINDS = {"interior samples": ("inside",),
                     "border samples (skip lines)": ("partly_outside", "zero_size"),
                     "integer RoIs": ("integer", "integer_edges"),
                     "tiny, inverted and duplicated RoIs": ("tiny", "inverted", "duplicated"),
                     "far out-of-range": ("outside",)}


# ---- ONNX: one-node models run by ONNX Runtime or the reference evaluator ----

def onnx_node_model(op_type: str, inputs: dict, attributes: dict, opset: int):
    """A model of one ``op_type`` node; inputs that are None are left out (empty names)."""
    from onnx import helper

    names = [name if value is not None else "" for name, value in inputs.items()]
    while names and not names[-1]:
        names.pop()
    present = {name: value for name, value in inputs.items() if value is not None}
    first = next(iter(present.values()))
    graph = helper.make_graph(
        [helper.make_node(op_type, names, ["Y"], **attributes)], op_type,
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                       value.shape) for name, value in present.items()],
        [helper.make_tensor_value_info("Y", helper.np_dtype_to_tensor_dtype(first.dtype), None)])
    # IR version 9 (opset 19's) is what every ONNX Runtime release since 1.15 loads.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def run_onnxruntime(model, feeds: dict) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def run_onnx_reference(model, feeds: dict) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, feeds)[0]


def onnx_deform_conv2d(run: Callable) -> Callable:
    """A candidate with :func:`refdyn.deform_conv2d`'s signature running ONNX DeformConv."""
    def candidate(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None,
                  boundary="zeros"):
        if boundary != "zeros":
            raise ValueError("ONNX DeformConv has only the zeros boundary rule")
        attributes = onnx_deform_conv_attributes(input, offset, weight, stride, padding, dilation)
        inputs = {"X": input, "W": weight, "offset": offset, "B": bias, "mask": mask}
        model = onnx_node_model("DeformConv", inputs, attributes, DEFORM_CONV_OPSET)
        return run(model, {name: value for name, value in inputs.items() if value is not None})
    return candidate


def onnx_roi_align(run: Callable) -> Callable:
    """A candidate with :func:`refdyn.roi_align`'s signature running ONNX RoiAlign."""
    def candidate(input, rois, output_size=7, spatial_scale=1.0, sampling_ratio=-1,
                  aligned=False):
        boxes, batch_indices, mode = onnx_roi_align_inputs(rois, aligned)
        height, width = (int(v) for v in np.broadcast_to(output_size, 2))
        attributes = {"coordinate_transformation_mode": mode, "mode": "avg",
                      "output_height": height, "output_width": width,
                      "sampling_ratio": max(int(sampling_ratio), 0),
                      "spatial_scale": float(spatial_scale)}
        inputs = {"X": input, "rois": boxes, "batch_indices": batch_indices}
        return run(onnx_node_model("RoiAlign", inputs, attributes, ROI_ALIGN_OPSET), inputs)
    return candidate


def _onnx_suites(run: Callable, deform_conv_dtypes, roi_align_dtypes) -> list[Suite]:
    return [Suite("deform_conv2d", "forward", lambda: onnx_deform_conv2d(run),
                  _classes(deform_conv_dtypes, "offset_kinds", DEFORM_CONV_KINDS,
                           boundaries=("zeros",))),
            Suite("roi_align", "forward", lambda: onnx_roi_align(run),
                  _classes(roi_align_dtypes, "roi_kinds", ROI_ALIGN_KINDS))]


def _one_pixel_deform_conv(operator: str, config) -> bool:
    return operator == "deform_conv2d" and (config.height == 1 or config.width == 1)


def _probe_onnx_reference_float64() -> str:
    from .deform_conv_cases import DeformConvConfig, make_case

    case = make_case(DeformConvConfig(batch=2, height=6, width=7, offset_kind="normal",
                                      dtype="float64", seed=7))
    actual = onnx_deform_conv2d(run_onnx_reference)(**case.forward_kwargs())
    error = float(np.max(np.abs(actual - deform_conv2d(**case.forward_kwargs()))))
    return (f"float64 DeformConv, 2 x 2 x 6 x 7 input, normal offsets: max |error| "
            f"{error:.2g} (refdyn's float64 tolerance: 1e-10 relative); the float32 classes "
            f"above agree")


def _probe_onnx_reference_one_pixel() -> str:
    from .deform_conv_cases import DeformConvConfig, make_case

    case = make_case(DeformConvConfig(height=1, width=4, kernel=(1, 1), padding=(0, 0)))
    try:
        onnx_deform_conv2d(run_onnx_reference)(**case.forward_kwargs())
    except Exception as error:   # the documented outcome: NaN coordinates, then a failed cast
        return f"1 x 4 input: the evaluator raised {type(error).__name__}: {error}"
    return "1 x 4 input: the evaluator ran (this onnx release no longer divides by H - 1)"


def _probe_onnxruntime_zero_mask() -> str:
    import onnxruntime

    image = np.ones((1, 1, 4, 4), dtype=np.float32)
    image[0, 0, 1, 1] = np.inf
    arguments = dict(input=image, offset=np.zeros((1, 2, 4, 4), np.float32),
                     weight=np.ones((1, 1, 1, 1), np.float32),
                     mask=np.zeros((1, 1, 4, 4), np.float32))
    with np.errstate(invalid="ignore"):
        expected = int(np.isnan(deform_conv2d(**arguments)).sum())
    actual = int(np.isnan(onnx_deform_conv2d(run_onnxruntime)(**arguments)).sum())
    verdict = ("not observed in this release" if actual == expected else
               "observed: onnxruntime skips the masked-out samples")
    return (f"4 x 4 image with one inf pixel, 1 x 1 kernel, zero offsets, mask 0: NaN outputs "
            f"refdyn {expected} of 16 (0 x inf), onnxruntime {onnxruntime.__version__} "
            f"{actual} of 16: {verdict}; finite inputs give the same result either way")


# ---- torchvision: torch tensors on CUDA when the build has it, else on the CPU ----

def _torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _tensor(array, requires_grad=False):
    import torch

    if array is None:
        return None
    return torch.tensor(np.asarray(array), device=_torch_device(), requires_grad=requires_grad)


def _pair(value) -> tuple[int, int]:
    return tuple(int(v) for v in np.broadcast_to(value, 2))


def torchvision_deform_conv2d_forward() -> Callable:
    """``torchvision.ops.deform_conv2d`` with :func:`refdyn.deform_conv2d`'s signature."""
    import torch
    from torchvision.ops import deform_conv2d as tv_deform_conv2d

    def candidate(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None,
                  boundary="zeros"):
        if boundary != "zeros":
            raise ValueError("torchvision deform_conv2d has only the zeros boundary rule")
        with torch.no_grad():
            out = tv_deform_conv2d(_tensor(input), _tensor(offset), _tensor(weight),
                                   _tensor(bias), _pair(stride), _pair(padding),
                                   _pair(dilation), _tensor(mask))
        return out.cpu().numpy()
    return candidate


def torchvision_deform_conv2d_backward() -> Callable:
    """Autograd through ``torchvision.ops.deform_conv2d``, returning ``grad_<input>``."""
    from torchvision.ops import deform_conv2d as tv_deform_conv2d

    def candidate(grad_output, input, offset, weight, bias=None, stride=1, padding=0,
                  dilation=1, mask=None, coord_grad="torchvision", boundary="zeros"):
        if boundary != "zeros" or coord_grad != "torchvision":
            raise ValueError("torchvision has the zeros boundary and its own offset gradient")
        leaves = {name: _tensor(value, requires_grad=True) for name, value in
                  dict(input=input, offset=offset, weight=weight, bias=bias, mask=mask).items()}
        out = tv_deform_conv2d(leaves["input"], leaves["offset"], leaves["weight"],
                               leaves["bias"], _pair(stride), _pair(padding), _pair(dilation),
                               leaves["mask"])
        out.backward(_tensor(grad_output))
        return {f"grad_{name}": None if leaf is None else leaf.grad.cpu().numpy()
                for name, leaf in leaves.items()}
    return candidate


def _torchvision_roi(name: str, input, rois, output_size, spatial_scale, sampling_ratio, flags):
    """``torchvision.ops.<name>`` (roi_align, ps_roi_align) on tensors: boxes (K, 5) and the
    argument order are refdyn's; ``flags`` are the keyword arguments beyond sampling_ratio
    (roi_align's ``aligned``)."""
    from torchvision import ops

    return getattr(ops, name)(input, _tensor(rois), _pair(output_size), float(spatial_scale),
                              int(sampling_ratio), **flags)


def _torchvision_roi_forward(name: str) -> Callable:
    """``torchvision.ops.<name>`` with refdyn's signature of the same operator."""
    import torch

    def candidate(input, rois, output_size=7, spatial_scale=1.0, sampling_ratio=-1, **flags):
        with torch.no_grad():
            return _torchvision_roi(name, _tensor(input), rois, output_size, spatial_scale,
                                    sampling_ratio, flags).cpu().numpy()
    return candidate


def _torchvision_roi_backward(name: str) -> Callable:
    """Autograd through ``torchvision.ops.<name>`` (input gradient only, like refdyn)."""
    def candidate(grad_output, input, rois, output_size=7, spatial_scale=1.0, sampling_ratio=-1,
                  **flags):
        leaf = _tensor(input, requires_grad=True)
        out = _torchvision_roi(name, leaf, rois, output_size, spatial_scale, sampling_ratio, flags)
        out.backward(_tensor(grad_output))
        return {"grad_input": leaf.grad.cpu().numpy()}
    return candidate


def torchvision_roi_align_forward() -> Callable:
    """``torchvision.ops.roi_align`` (boxes (K, 5)), refdyn's signature already."""
    return _torchvision_roi_forward("roi_align")


def torchvision_roi_align_backward() -> Callable:
    """Autograd through ``torchvision.ops.roi_align`` (input gradient only, like refdyn)."""
    return _torchvision_roi_backward("roi_align")


def torchvision_ps_roi_align_forward() -> Callable:
    """``torchvision.ops.ps_roi_align`` (boxes (K, 5)), refdyn's signature already."""
    return _torchvision_roi_forward("ps_roi_align")


def torchvision_ps_roi_align_backward() -> Callable:
    """Autograd through ``torchvision.ops.ps_roi_align`` (input gradient only, like refdyn)."""
    return _torchvision_roi_backward("ps_roi_align")


def _both_directions(operator: str, forward: Callable[[], Callable],
                     backward: Callable[[], Callable], classes) -> list[Suite]:
    """The forward and the backward suite of one operator over the same classes."""
    return [Suite(operator, "forward", forward, classes),
            Suite(operator, "backward", backward, classes)]


def _torchvision_suites() -> list[Suite]:
    dtypes = ("float32", "float64")
    conv = dict(boundaries=("zeros",), coord_grads=("torchvision",))
    rois = _classes(dtypes, "roi_kinds", ROI_ALIGN_KINDS)
    return (_both_directions("deform_conv2d", torchvision_deform_conv2d_forward,
                             torchvision_deform_conv2d_backward,
                             _classes(dtypes, "offset_kinds", DEFORM_CONV_KINDS, **conv))
            + _both_directions("roi_align", torchvision_roi_align_forward,
                               torchvision_roi_align_backward, rois)
            + _both_directions("ps_roi_align", torchvision_ps_roi_align_forward,
                               torchvision_ps_roi_align_backward, rois))


def adaptive_rois_without_samples(*operators: str) -> Callable[[str, object], bool]:
    """A predicate: whether a configuration of one of ``operators`` has an aligned RoI (no size
    clamp: ps_roi_align, or roi_align with aligned) whose width or height is <= 0 (zero-size or
    inverted) with the adaptive grid (sampling_ratio <= 0): ceil(size / P) <= 0 samples, which
    some kernels divide by (0 / 0 = NaN) or allocate from."""
    def without_samples(operator: str, config) -> bool:
        aligned = operator == "ps_roi_align" or (operator == "roi_align" and config.aligned)
        if operator not in operators or not aligned or config.sampling_ratio > 0 \
                or config.rois == 0:
            return False
        from .roi_cases import make_case

        rois = make_case(config).arrays["rois"]
        return bool(np.any((rois[:, 3] <= rois[:, 1]) | (rois[:, 4] <= rois[:, 2])))
    return without_samples


#: The knobs that draw RoIs without samples (zero-size and inverted), for shrunk reproducers.
EMPTY_ROIS = {"roi_kinds": ("zero_size", "inverted")}


def _probe_torchvision_ps_roi_align_empty_bins() -> str:
    from .. import ps_roi_align

    image = np.arange(8, dtype=np.float64).reshape(1, 8, 1, 1) * np.ones((1, 1, 4, 4))
    boxes = np.array([[0, 1.5, 1.0, 1.5, 3.0]])         # zero width, height 2
    ours = ps_roi_align(image, boxes, 2, 1.0, 0)
    theirs = torchvision_ps_roi_align_forward()(image, boxes, 2, 1.0, 0)
    return (f"zero-width RoI, 2 x 2 bins, adaptive sampling: torchvision gives "
            f"{int(np.isnan(theirs).sum())} NaN of {theirs.size} outputs, refdyn "
            f"{int(np.isnan(ours).sum())} (all {float(np.max(np.abs(ours))):g})")


def probe_offset_gradient_rule(backward: Callable[[], Callable]) -> Callable[[], str]:
    """A probe: how far the offset gradient of a deform_conv2d ``backward`` candidate (built by
    the factory) is from each of refdyn's coord_grad rules where taps sit exactly on -1."""
    def probe() -> str:
        from .. import deform_conv2d_backward
        from .deform_conv_cases import DeformConvConfig, make_case

        case = make_case(DeformConvConfig(offset_kind="zero", with_mask=False))
        arguments = {k: v for k, v in case.forward_kwargs().items() if k != "boundary"}
        actual = backward()(case.grad_output, **arguments)["grad_offset"]
        errors = {rule: float(np.max(np.abs(actual - deform_conv2d_backward(
            case.grad_output, **arguments, coord_grad=rule).grad_offset)))
            for rule in ("torchvision", "mmcv")}
        return (f"zero offsets, 3 x 3 kernel, padding 1 (border taps at -1): grad_offset "
                f"differs from refdyn's coord_grad='mmcv' by up to {errors['mmcv']:.3g} and "
                f"from coord_grad='torchvision' by up to {errors['torchvision']:.3g}")
    return probe


ONNX_DTYPES = ("float32", "float64")

TARGETS: dict[str, Target] = {
    "onnxruntime": Target(
        "onnxruntime",
        f"ONNX Runtime CPU: DeformConv (opset {DEFORM_CONV_OPSET}), RoiAlign "
        f"(opset {ROI_ALIGN_OPSET}), forward",
        ("onnx", "onnxruntime"), "pip install 'refdyn[validate]'  (onnx, onnxruntime)",
        lambda: _onnx_suites(run_onnxruntime, ONNX_DTYPES, ONNX_DTYPES),
        lambda: [KnownDifference(
            "ONNX Runtime skipping the interpolation where the mask is 0 (visible only with a "
            "non-finite input)", "refdyn multiplies by the mask (0 x inf = NaN), as the ONNX "
            "reference evaluator does; the probe checks whether this release skips",
            _probe_onnxruntime_zero_mask)]),
    "onnx-reference": Target(
        "onnx-reference",
        f"onnx.reference.ReferenceEvaluator: DeformConv (opset {DEFORM_CONV_OPSET}), RoiAlign "
        f"(opset {ROI_ALIGN_OPSET}), forward; DeformConv in float32 only (see the known "
        f"differences)",
        ("onnx",), "pip install 'refdyn[validate]'  (onnx)",
        lambda: _onnx_suites(run_onnx_reference, ("float32",), ONNX_DTYPES),
        lambda: [
            KnownDifference(
                "the evaluator rounds DeformConv sampling coordinates to float32",
                "onnx/reference/ops/op_grid_sample.py denormalizes grid coordinates into a "
                "float32 array, for every input dtype", _probe_onnx_reference_float64),
            KnownDifference(
                "the evaluator cannot run DeformConv on a 1-pixel-high or -wide input "
                "(configurations with H = 1 or W = 1 are left out of the classes above)",
                "onnx/reference/ops/op_deform_conv.py normalizes coordinates by H - 1 and "
                "W - 1", _probe_onnx_reference_one_pixel, _one_pixel_deform_conv)]),
    "torchvision": Target(
        "torchvision",
        "torchvision.ops deform_conv2d, roi_align and ps_roi_align, forward and backward "
        "(autograd), on CUDA when the installed build has it, else on the CPU",
        ("torch", "torchvision"), "pip install 'refdyn[validate]'  (torch and torchvision, a pair that loads together)",
        _torchvision_suites,
        lambda: [
            KnownDifference(
                "torchvision's offset gradient at a coordinate of exactly -1 is the right "
                "derivative (refdyn coord_grad='torchvision'; mmcv and DCNv2 return 0)",
                "pytorch/vision issue 6885",
                probe_offset_gradient_rule(torchvision_deform_conv2d_backward)),
            KnownDifference(
                "torchvision ps_roi_align pools a RoI of zero or negative width or height with "
                "adaptive sampling to NaN (0 / 0); refdyn pools it to 0 as roi_align does "
                "(such ps_roi_align configurations are left out of the classes above)",
                "torchvision/csrc/ops/cpu/ps_roi_align_kernel.cpp divides by "
                "roi_bin_grid_h * roi_bin_grid_w without roi_align's max(count, 1)",
                _probe_torchvision_ps_roi_align_empty_bins,
                adaptive_rois_without_samples("ps_roi_align"), ("ps_roi_align", EMPTY_ROIS))]),
}


def _paddle_suites() -> list[Suite]:
    from . import framework_targets as paddle

    dtypes = ("float32", "float64")
    conv = dict(boundaries=("zeros",), coord_grads=("mmcv",))
    return (_both_directions("deform_conv2d", lambda: paddle.paddle_deform_conv2d,
                             lambda: paddle.paddle_deform_conv2d_backward,
                             _classes(dtypes, "offset_kinds", DEFORM_CONV_KINDS, **conv))
            + _both_directions("roi_align", lambda: paddle.paddle_roi_align,
                               lambda: paddle.paddle_roi_align_backward,
                               _classes(dtypes, "roi_kinds", ROI_ALIGN_KINDS)))


def _paddle_known_differences() -> list[KnownDifference]:
    from . import framework_targets as paddle

    return [
        KnownDifference(
            "convention: Paddle's deform_conv2d offset gradient is mmcv's (0 where a sampling "
            "coordinate is exactly -1; refdyn coord_grad='mmcv', which the classes above use)",
            "paddle/phi/kernels/impl/deformable_conv_grad_kernel_impl.h returns 0 for "
            "h <= -1 or h >= H",
            probe_offset_gradient_rule(lambda: paddle.paddle_deform_conv2d_backward)),
        KnownDifference(
            "defect: Paddle's roi_align pools an aligned RoI of zero width or height with "
            "adaptive sampling to NaN (0 / 0); such configurations are left out above",
            "measured; refdyn and torchvision average no samples to 0",
            paddle.probe_empty_aligned_roi(paddle.paddle_roi_align),
            adaptive_rois_without_samples("roi_align"),
            ("roi_align", {"roi_kinds": ("zero_size",), "dtypes": ("float64",)})),
        KnownDifference(
            "defect: Paddle's roi_align allocates without bound (and so crashes or exhausts "
            "the memory) on an inverted aligned RoI (x2 < x1 or y2 < y1) with adaptive "
            "sampling; such configurations are left out above (with the zero-size ones)",
            "measured in a worker process limited to 6 GiB",
            paddle.probe_paddle_inverted_roi),
        KnownDifference(
            "defect: Paddle's roi_align backward clamps the RoI size to >= 1 pixel even when "
            "aligned (its forward does not), so for an aligned RoI with a side below one pixel "
            "(an inverted side, x2 < x1 or y2 < y1, included) it is not the gradient of the "
            "forward; such configurations are left out above",
            "measured against the transpose of Paddle's own forward",
            paddle.probe_paddle_aligned_backward, paddle.aligned_roi_below_one_pixel,
            ("roi_align", {"roi_kinds": ("tiny",), "dtypes": ("float64",)}))]


def _openvino_suites() -> list[Suite]:
    from . import framework_targets as openvino

    dtypes = ("float32",)
    return [Suite("deform_conv2d", "forward", lambda: openvino.openvino_deform_conv2d,
                  _classes(dtypes, "offset_kinds", DEFORM_CONV_KINDS, boundaries=("zeros",))),
            Suite("deform_ps_roi_pool", "forward", lambda: openvino.openvino_deform_ps_roi_pool,
                  _classes(dtypes, "roi_kinds", PS_ROI_POOL_KINDS)),
            Suite("roi_align", "forward", lambda: openvino.openvino_roi_align,
                  _classes(dtypes, "roi_kinds", ROI_ALIGN_KINDS)),
            Suite("roi_align", "forward", lambda: openvino.openvino_roi_align_half_pixel,
                  tuple(ConfigClass(f"aligned_mode half_pixel: {config_class.name}",
                                    config_class.knobs)
                        for config_class in _classes(dtypes, "roi_kinds", ROI_ALIGN_KINDS)))]


def _openvino_known_differences() -> list[KnownDifference]:
    from . import framework_targets as openvino

    return [
        KnownDifference(
            "the CPU plugin computes float64 models in float32",
            "measured: INFERENCE_PRECISION_HINT f32, a float64 model's layers run in f32",
            openvino.probe_openvino_float64),
        KnownDifference(
            "convention: DeformableConvolution-8 with bilinear_interpolation_pad=False (and "
            "DeformableConvolution-1) reads 0 for a sample outside [0, H) x [0, W) and, inside, "
            "clamps it to [0, H - 1] x [0, W - 1] (the last row and column strip read the edge "
            "pixel): refdyn's boundary='border' times the indicator of [0, H) x [0, W), one-sided "
            "(above and left of the image 0 at once, below and right a pixel's strip of edge). "
            "The operation's specification says a point within one pixel outside is shifted to "
            "the inner boundary; none is: outside points read 0",
            "measured on this version; the specification of DeformableConvolution-8",
            openvino.probe_openvino_unpadded_rule),
        KnownDifference(
            "DeformablePSROIPooling pools group_size x group_size bins (no pooled_size); "
            "configurations with pooled_size != group_size are left out above",
            "OpenVINO DeformablePSROIPooling-1 specification", lambda: "by construction",
            openvino.pooled_size_is_not_group_size),
        KnownDifference(
            "defect: ROIAlign-9 (half_pixel_for_nn and half_pixel) pools an aligned RoI of "
            "zero or negative width or height with adaptive sampling to NaN; such "
            "configurations are left out above",
            "measured; refdyn and torchvision average no samples to 0",
            openvino.probe_empty_aligned_roi(openvino.openvino_roi_align),
            adaptive_rois_without_samples("roi_align"),
            ("roi_align", {**EMPTY_ROIS, "dtypes": ("float32",)}))]


TARGETS["paddle"] = Target(
    "paddle", "PaddlePaddle CPU: paddle.vision.ops deform_conv2d (forward, every gradient) and "
    "roi_align (forward, input gradient)", ("paddle",),
    "pip install 'refdyn[validate]'  (paddlepaddle)", _paddle_suites, _paddle_known_differences)
TARGETS["openvino"] = Target(
    "openvino", "OpenVINO CPU plugin, forward: DeformableConvolution-8 (bilinear_interpolation_pad"
    " true), DeformablePSROIPooling-1, ROIAlign-9 (asymmetric, half_pixel_for_nn, and half_pixel "
    "on RoIs moved by -0.5); float32",
    ("openvino",), "pip install 'refdyn[validate]'  (openvino)", _openvino_suites,
    _openvino_known_differences)

"""The one list of every operator refdyn implements, with its implementations per backend.

Generic checks (backend equality, finite differences, adjoint tests, ``refdyn check``) iterate
over :data:`OPERATORS`, so an operator is covered by all of them as soon as it is registered
here.  Everything is named by import path and loaded on use, so listing a GPU backend never
imports CuPy or Numba.

Backends: ``literal`` (loops over the paper's equations), ``vectorized`` (the NumPy default and
the reference the others are compared with), ``host`` (the CUDA C sources compiled for the
CPU), ``numba`` (Numba CUDA, or its simulator without a GPU), ``cupy`` (CUDA C through CuPy).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Optional

REFERENCE_BACKEND = "vectorized"
GPU_BACKENDS = ("host", "numba", "cupy")


def load(path):
    """Import ``"package.module:attribute"`` and return the attribute (a callable is returned as is)."""
    if callable(path):
        return path
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _always_available() -> Optional[str]:
    return None


def _gpu_backend(name: str) -> Callable[[], Optional[str]]:
    def problem() -> Optional[str]:
        from refdyn.gpu import backend_problem
        return backend_problem(name)
    return problem


@dataclass(frozen=True)
class Implementation:
    """One backend's forward and backward (import paths or callables) and why it may not run here."""

    forward: object
    backward: object
    problem: Callable[[], Optional[str]] = _always_available

    def load(self) -> tuple[Callable, Callable]:
        return load(self.forward), load(self.backward)


@dataclass(frozen=True)
class Option:
    """A refdyn-only argument of an operator (a convention switch no framework's signature
    has): its name, the value that gives the operator's documented default behaviour, and the
    keyword of the operator's Hypothesis strategy that draws its values.  refdyn.testing passes
    it to a candidate only when the candidate's signature names it; otherwise the candidate is
    compared under ``default`` unless the caller chose the values with ``knob``."""

    name: str
    default: object
    knob: str


#: The convention switches of the sampling operators: the boundary rule and the offset-gradient
#: rule at the image edge (refdyn.bilinear_numpy).
SAMPLING_OPTIONS = (Option("boundary", "zeros", "boundaries"),
                    Option("coord_grad", "torchvision", "coord_grads"))


@dataclass(frozen=True)
class Operator:
    """A registered operator.

    differentiable: the array inputs whose gradients the backward returns (as ``grad_<name>``);
    linear: the inputs the output is affine in, checked by the adjoint (dot-product) test;
    kinked: the inputs through which the output has kinks (bilinear sampling coordinates):
    finite differences with respect to them need kink-free cases;
    configs: Hypothesis strategy factory; make_case: configuration -> Case;
    examples: (thorough: bool) -> the fixed configurations ``refdyn check`` runs;
    options: the refdyn-only arguments (:class:`Option`), which a candidate of another
    implementation need not accept;
    gpu_extras: the arguments the GPU mirrors (refdyn.gpu.cupy, .host, .numba) add to the NumPy
    signature (the backward's ``deterministic``: how grad_input is summed);
    gpu_defaults: the arguments whose default the GPU mirrors choose for themselves
    (``chunk_elements``: a GPU multiplies the columns of many images at once);
    rounding_neighbours: for an operator whose output jumps where a sample crosses a rule line
    (RoI samples at x = -1 or W), case -> pairs of cases with every sample moved by d and 2 d
    (a few units of the dtype's rounding) in each direction; refdyn.testing accepts an element
    that matches the one-sided limit they extrapolate to.
    """

    name: str
    summary: str
    differentiable: tuple[str, ...]
    linear: tuple[str, ...]
    kinked: tuple[str, ...]
    implementations: dict[str, Implementation]
    configs: str
    make_case: str
    examples: str
    options: tuple[Option, ...] = ()
    gpu_extras: tuple[str, ...] = ()
    gpu_defaults: tuple[str, ...] = ()
    rounding_neighbours: Optional[str] = None

    def implementation(self, backend: str) -> Implementation:
        return self.implementations[backend]


def _gpu_implementation(backend: str, function: str) -> Implementation:
    """``function`` and ``function_backward`` of the GPU module ``refdyn.gpu.<backend>``."""
    module = f"refdyn.gpu.{backend}"
    return Implementation(f"{module}:{function}", f"{module}:{function}_backward",
                          _gpu_backend(backend))


def every_backend(module: str, function: str, gpu: bool = True) -> dict[str, Implementation]:
    """The implementations named by refdyn's convention: ``function`` and ``function_backward``
    in ``refdyn.<module>`` (vectorized), with a ``_literal`` suffix (literal), and, with ``gpu``,
    in each GPU module ``refdyn.gpu.<backend>``."""
    path = f"refdyn.{module}"
    implementations = {
        "literal": Implementation(f"{path}:{function}_literal", f"{path}:{function}_backward_literal"),
        "vectorized": Implementation(f"{path}:{function}", f"{path}:{function}_backward"),
    }
    if gpu:
        implementations.update({backend: _gpu_implementation(backend, function)
                                for backend in GPU_BACKENDS})
    return implementations


DEFORM_CONV2D = Operator(
    name="deform_conv2d",
    summary="deformable convolution, DCNv1 Eq. 2 / DCNv2 Eq. 1 (torchvision layout)",
    differentiable=("input", "offset", "weight", "bias", "mask"),
    linear=("input", "weight", "mask"),
    kinked=("offset",),
    implementations=every_backend("deform_conv_numpy", "deform_conv2d"),
    configs="refdyn.testing.strategies:deform_conv2d_configs",
    make_case="refdyn.testing.deform_conv_cases:make_case",
    examples="refdyn.testing.deform_conv_cases:example_configs",
    options=SAMPLING_OPTIONS,
    gpu_extras=("deterministic",),
    gpu_defaults=("chunk_elements",),
)

BILINEAR_SAMPLE = Operator(
    name="bilinear_sample",
    summary="bilinear sampling G of an image batch at fractional points, DCNv1 Eq. 3-4",
    differentiable=("image", "y", "x"),
    linear=("image",),
    kinked=("y", "x"),
    implementations=every_backend("bilinear_numpy", "bilinear_sample", gpu=False),
    configs="refdyn.testing.strategies:bilinear_sample_configs",
    make_case="refdyn.testing.bilinear_cases:make_case",
    examples="refdyn.testing.bilinear_cases:example_configs",
    options=SAMPLING_OPTIONS,
)

ACTIVE_CONV2D = Operator(
    name="active_conv2d",
    summary="Active Convolution: learned positions shared by every output position",
    differentiable=("input", "positions", "weight", "bias"),
    linear=("input", "weight"),
    kinked=("positions",),
    implementations=every_backend("active_conv_numpy", "active_conv2d"),
    configs="refdyn.testing.strategies:active_conv2d_configs",
    make_case="refdyn.testing.active_conv_cases:make_case",
    examples="refdyn.testing.active_conv_cases:example_configs",
    options=SAMPLING_OPTIONS,
    gpu_extras=("deterministic",),
)

DDF = Operator(
    name="ddf",
    summary="decoupled dynamic filter: spatial x channel dynamic filters, depth-wise",
    differentiable=("features", "channel_filter", "spatial_filter"),
    # "mul" is linear in each input; "add" ((D^sp + D^ch) F) is affine in each filter, which the
    # adjoint test (it subtracts f(0)) accepts as well.
    linear=("features", "channel_filter", "spatial_filter"),
    kinked=(),
    implementations=every_backend("ddf_numpy", "ddf"),
    configs="refdyn.testing.strategies:ddf_configs",
    make_case="refdyn.testing.ddf_cases:make_case",
    examples="refdyn.testing.ddf_cases:example_configs",
)


def _roi_operator(name: str, module: str, summary: str, differentiable, linear, kinked,
                  options: tuple[Option, ...] = ()) -> Operator:
    """A RoI pooling operator of ``refdyn.<module>`` with cases from ``refdyn.testing.roi_cases``
    and its GPU mirrors (gpu/roi.cu, gpu/roi_numba.py)."""
    return Operator(options=options,
        name=name, summary=summary, differentiable=differentiable, linear=linear, kinked=kinked,
        implementations=every_backend(module, name),
        configs=f"refdyn.testing.strategies:{name}_configs",
        make_case="refdyn.testing.roi_cases:make_case",
        examples=f"refdyn.testing.roi_cases:{name}_examples",
        rounding_neighbours="refdyn.testing.roi_cases:rounding_neighbours",
    )


# RoIs are inputs of every RoI operator but get no gradient (as in every implementation).
ROI_ALIGN = _roi_operator("roi_align", "roi_align_numpy",
                          "RoIAlign, torchvision semantics (aligned flag, adaptive sampling_ratio)",
                          ("input",), ("input",), ())
PS_ROI_ALIGN = _roi_operator("ps_roi_align", "roi_align_numpy",
                             "position-sensitive RoIAlign, torchvision semantics (always aligned)",
                             ("input",), ("input",), ())
DEFORM_ROI_ALIGN = _roi_operator(
    "deform_roi_align", "roi_align_numpy",
    "mmcv DeformRoIPool on RoIAlign (offsets x first); with a mask DCNv2 Eq. 2 modulated pooling",
    ("input", "offset", "mask"), ("input", "mask"), ("offset",),
    (Option("coord_grad", "torchvision", "coord_grads"),))
DEFORM_ROI_POOL = _roi_operator(
    "deform_roi_pool", "roi_pool_numpy",
    "deformable RoI pooling, DCNv1 Eq. 6 (Eq. 5 RoI pooling without offsets), average form",
    ("input", "offset"), ("input",), ("offset",))
DEFORM_PS_ROI_POOL = _roi_operator(
    "deform_ps_roi_pool", "roi_pool_numpy",
    "deformable PS RoI pooling, official DCN rules (PS RoI pooling without offsets)",
    ("input", "offset"), ("input",), ("offset",))
MIMIC_LOSS = Operator(
    name="mimic_loss",
    summary="DCNv2 R-CNN feature mimic loss: sum over RoIs of 1 - cosine similarity",
    differentiable=("features", "target"),
    linear=(),
    kinked=("features", "target"),     # the cosine jumps at a zero feature vector
    implementations=every_backend("mimic_loss_numpy", "mimic_loss"),
    configs="refdyn.testing.strategies:mimic_loss_configs",
    make_case="refdyn.testing.mimic_loss_cases:make_case",
    examples="refdyn.testing.mimic_loss_cases:example_configs",
)

LSDFN_SAMPLE = Operator(
    name="lsdfn_sample",
    summary="LS-DFN sampled dynamic filtering with full position-specific kernels, Eq. 2",
    differentiable=("features", "kernels"),
    linear=("features", "kernels"),
    kinked=(),
    implementations=every_backend("lsdfn_numpy", "lsdfn_sample"),
    configs="refdyn.testing.strategies:lsdfn_sample_configs",
    make_case="refdyn.testing.lsdfn_cases:make_lsdfn_sample_case",
    examples="refdyn.testing.lsdfn_cases:lsdfn_sample_example_configs",
)

LSDFN = Operator(
    name="lsdfn",
    summary="LS-DFN end to end: Eq. 6/7 kernels, Eq. 3/4 attention, Eq. 5 fusion",
    differentiable=("features", "u", "v", "sample_attention", "position_attention",
                    "full_attention"),
    # With fuse="sum" the output is affine in every input; max fusion keeps it positively
    # homogeneous only in the features (each sample is linear in X), so only they are listed.
    linear=("features",),
    # Integer offsets: no bilinear kinks.  Max fusion's ties are the only kinks (lsdfn_cases).
    kinked=(),
    implementations=every_backend("lsdfn_numpy", "lsdfn"),
    configs="refdyn.testing.strategies:lsdfn_configs",
    make_case="refdyn.testing.lsdfn_cases:make_lsdfn_case",
    examples="refdyn.testing.lsdfn_cases:lsdfn_example_configs",
)

DFN = Operator(
    name="dfn",
    summary="Dynamic Filter Networks' dynamic local filtering, per-pixel k x k filters",
    differentiable=("features", "filters"),
    linear=("features",),   # the filters too without the softmax (tests/test_lsdfn.py)
    kinked=(),
    implementations=every_backend("lsdfn_dfn_numpy", "dfn"),
    configs="refdyn.testing.strategies:dfn_configs",
    make_case="refdyn.testing.lsdfn_cases:make_dfn_case",
    examples="refdyn.testing.lsdfn_cases:dfn_example_configs",
)

OPERATORS: dict[str, Operator] = {op.name: op for op in (BILINEAR_SAMPLE, DEFORM_CONV2D,
                                                          ACTIVE_CONV2D, DDF, ROI_ALIGN,
                                                          PS_ROI_ALIGN, DEFORM_ROI_ALIGN, DEFORM_ROI_POOL,
                                                          DEFORM_PS_ROI_POOL, MIMIC_LOSS,
                                                          LSDFN_SAMPLE, LSDFN, DFN)}
BACKENDS = ("literal", "vectorized", "host", "numba", "cupy")

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
class Operator:
    """A registered operator.

    differentiable: the array inputs whose gradients the backward returns (as ``grad_<name>``);
    linear: the inputs the output is affine in, checked by the adjoint (dot-product) test;
    kinked: the inputs through which the output has kinks (bilinear sampling coordinates):
    finite differences with respect to them need kink-free cases;
    configs: Hypothesis strategy factory; make_case: configuration -> Case;
    examples: (thorough: bool) -> the fixed configurations ``refdyn check`` runs.
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

    def implementation(self, backend: str) -> Implementation:
        return self.implementations[backend]


def _gpu_implementation(backend: str, function: str) -> Implementation:
    """``function`` and ``function_backward`` of the GPU module ``refdyn.gpu.<backend>``."""
    module = f"refdyn.gpu.{backend}"
    return Implementation(f"{module}:{function}", f"{module}:{function}_backward",
                          _gpu_backend(backend))


DEFORM_CONV2D = Operator(
    name="deform_conv2d",
    summary="deformable convolution, DCNv1 Eq. 2 / DCNv2 Eq. 1 (torchvision layout)",
    differentiable=("input", "offset", "weight", "bias", "mask"),
    linear=("input", "weight", "mask"),
    kinked=("offset",),
    implementations={
        "literal": Implementation("refdyn.deform_conv:deform_conv2d_literal",
                                  "refdyn.deform_conv:deform_conv2d_backward_literal"),
        "vectorized": Implementation("refdyn.deform_conv:deform_conv2d",
                                     "refdyn.deform_conv:deform_conv2d_backward"),
        **{backend: _gpu_implementation(backend, "deform_conv2d") for backend in GPU_BACKENDS},
    },
    configs="refdyn.testing.strategies:deform_conv2d_configs",
    make_case="refdyn.testing.deform_conv_cases:make_case",
    examples="refdyn.testing.deform_conv_cases:example_configs",
)

BILINEAR_SAMPLE = Operator(
    name="bilinear_sample",
    summary="bilinear sampling G of an image batch at fractional points, DCNv1 Eq. 3-4",
    differentiable=("image", "y", "x"),
    linear=("image",),
    kinked=("y", "x"),
    implementations={
        "literal": Implementation("refdyn.bilinear:bilinear_sample_literal",
                                  "refdyn.bilinear:bilinear_sample_backward_literal"),
        "vectorized": Implementation("refdyn.bilinear:bilinear_sample",
                                     "refdyn.bilinear:bilinear_sample_backward"),
    },
    configs="refdyn.testing.strategies:bilinear_sample_configs",
    make_case="refdyn.testing.bilinear_cases:make_case",
    examples="refdyn.testing.bilinear_cases:example_configs",
)

ACTIVE_CONV2D = Operator(
    name="active_conv2d",
    summary="Active Convolution: learned positions shared by every output position (paper 002)",
    differentiable=("input", "positions", "weight", "bias"),
    linear=("input", "weight"),
    kinked=("positions",),
    implementations={
        "literal": Implementation("refdyn.active_conv:active_conv2d_literal",
                                  "refdyn.active_conv:active_conv2d_backward_literal"),
        "vectorized": Implementation("refdyn.active_conv:active_conv2d",
                                     "refdyn.active_conv:active_conv2d_backward"),
        **{backend: _gpu_implementation(backend, "active_conv2d") for backend in GPU_BACKENDS},
    },
    configs="refdyn.testing.strategies:active_conv2d_configs",
    make_case="refdyn.testing.active_conv_cases:make_case",
    examples="refdyn.testing.active_conv_cases:example_configs",
)

DDF = Operator(
    name="ddf",
    summary="decoupled dynamic filter: spatial x channel dynamic filters, depth-wise (paper 003)",
    differentiable=("features", "channel_filter", "spatial_filter"),
    # "mul" is linear in each input; "add" ((D^sp + D^ch) F) is affine in each filter, which the
    # adjoint test (it subtracts f(0)) accepts as well.
    linear=("features", "channel_filter", "spatial_filter"),
    kinked=(),
    implementations={
        "literal": Implementation("refdyn.decoupled_dynamic_filter:ddf_literal", "refdyn.decoupled_dynamic_filter:ddf_backward_literal"),
        "vectorized": Implementation("refdyn.decoupled_dynamic_filter:ddf", "refdyn.decoupled_dynamic_filter:ddf_backward"),
    },
    configs="refdyn.testing.strategies:ddf_configs",
    make_case="refdyn.testing.ddf_cases:make_case",
    examples="refdyn.testing.ddf_cases:example_configs",
)

OPERATORS: dict[str, Operator] = {op.name: op for op in (BILINEAR_SAMPLE, DEFORM_CONV2D,
                                                          ACTIVE_CONV2D, DDF)}
BACKENDS = ("literal", "vectorized", "host", "numba", "cupy")

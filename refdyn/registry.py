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


def _deform_conv_backend(backend: str) -> Implementation:
    module = f"refdyn.gpu.{backend}"
    return Implementation(f"{module}:deform_conv2d", f"{module}:deform_conv2d_backward",
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
        "host": _deform_conv_backend("host"),
        "numba": _deform_conv_backend("numba"),
        "cupy": _deform_conv_backend("cupy"),
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

OPERATORS: dict[str, Operator] = {op.name: op for op in (BILINEAR_SAMPLE, DEFORM_CONV2D)}
BACKENDS = ("literal", "vectorized", "host", "numba", "cupy")

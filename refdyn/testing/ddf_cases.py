"""Configurations of ``ddf`` and the arrays they describe (NumPy only).

A :class:`DDFConfig` names sizes and hyper-parameters; :func:`make_case` turns it into a
:class:`~refdyn.testing.cases.Case` deterministically (its ``seed``).  The operator has no kinks
(it is a sum of products), so every case is valid for finite differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ddf_numpy import ddf, ddf_backward
from . import cases
from .cases import Case, Config


@dataclass(frozen=True)
class DDFConfig(Config):
    """One ddf configuration: features (batch, channels, height, width), ``head`` channel groups
    with their own spatial filter, an odd ``kernel_size``."""

    batch: int = 1
    channels: int = 2
    height: int = 5
    width: int = 5
    kernel_size: int = 3
    dilation: int = 1
    stride: int = 1
    head: int = 1
    kernel_combine: str = "mul"
    dtype: str = "float64"
    seed: int = 0

    @property
    def out_size(self) -> tuple[int, int]:
        return self.height // self.stride, self.width // self.stride


def make_case(config: DDFConfig) -> Case:
    """The arrays of a configuration: features and both filters ~ N(0, 1)."""
    rng = np.random.default_rng(config.seed)
    dtype = np.dtype(config.dtype)
    k = config.kernel_size
    out_h, out_w = config.out_size
    batch = config.batch
    arrays = {
        "features": rng.standard_normal((batch, config.channels, config.height, config.width)),
        "channel_filter": rng.standard_normal((batch, config.channels, k, k)),
        "spatial_filter": rng.standard_normal((batch, config.head * k * k, out_h, out_w)),
    }
    grad_output = rng.standard_normal((batch, config.channels, out_h, out_w))
    return Case(arrays={name: value.astype(dtype) for name, value in arrays.items()},
                params={"kernel_size": k, "dilation": config.dilation, "stride": config.stride,
                        "kernel_combine": config.kernel_combine},
                grad_output=grad_output.astype(dtype),
                description=config.describe(),
                kink_free=True)


def example_configs(thorough: bool = False) -> list[DDFConfig]:
    """Fixed configurations for ``refdyn check``: every feature at least once, tiny sizes.

    The first one is float64 (the finite-difference case).
    """
    configs = [
        DDFConfig(),
        DDFConfig(batch=2, channels=4, height=7, width=6, head=2, stride=2, dilation=2, seed=1),
        DDFConfig(kernel_combine="add", height=6, width=7, stride=3, seed=2),
        DDFConfig(channels=3, head=3, kernel_size=5, dtype="float32", seed=3),
        DDFConfig(kernel_size=1, height=4, width=3, stride=2, kernel_combine="add", seed=4),
        DDFConfig(batch=0, seed=5),
    ]
    if thorough:
        configs += [
            DDFConfig(batch=2, channels=6, height=9, width=8, head=head, stride=stride,
                      dilation=dilation, kernel_combine=combine, dtype=dtype, seed=seed)
            for seed, (head, stride, dilation, combine, dtype) in enumerate(
                [(1, 1, 3, "mul", "float32"), (2, 2, 1, "add", "float64"),
                 (3, 3, 2, "mul", "float64"), (6, 4, 1, "add", "float32")], start=6)
        ] + [DDFConfig(height=1, width=1, seed=10),
             DDFConfig(height=2, width=9, kernel_size=7, dilation=2, seed=11)]
    return configs


def bad_arguments() -> dict[str, dict[str, object]]:
    """Keyword arguments of ``ddf_backward`` (grad_output included), each with one problem that
    the argument checks of :mod:`refdyn.ddf_args` reject (the forward, called without
    grad_output, rejects all but the grad_output one).  Every array is C-contiguous, so that it
    can be copied to a device as it is."""
    case = make_case(DDFConfig(batch=2, channels=4, head=2))
    a = {**case.arrays, **case.params, "grad_output": case.grad_output}
    nan_spatial = a["spatial_filter"].copy()
    nan_spatial[1, 3, 2, 2] = np.nan
    return {
        "even kernel size": {**a, "kernel_size": 2},
        "nan spatial filter": {**a, "spatial_filter": nan_spatial},
        "inf channel filter": {**a, "channel_filter": np.full_like(a["channel_filter"], np.inf)},
        "heads do not divide channels": {**a, "spatial_filter": np.zeros((2, 27, 5, 5))},
        "channel filter dtype": {**a, "channel_filter": a["channel_filter"].astype(np.float32)},
        "spatial filter size": {**a, "spatial_filter": a["spatial_filter"][:, :, :4].copy()},
        "stride beyond the image": {**a, "stride": 6},
        "kernel_combine": {**a, "kernel_combine": "max"},
        "bool dilation": {**a, "dilation": True},
        "grad_output shape": {**a, "grad_output": a["grad_output"][:, :3].copy()},
    }


def error_mismatches(forward, backward, arguments, on_device=lambda array: array) -> list[str]:
    """:func:`refdyn.testing.cases.error_mismatches` of a backend's ddf and ddf_backward."""
    return cases.error_mismatches(ddf, ddf_backward, forward, backward, arguments, on_device)

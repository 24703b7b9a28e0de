"""Configurations of ``deform_conv2d`` and the arrays they describe (NumPy only).

A :class:`DeformConvConfig` names sizes, hyper-parameters and how offsets are drawn;
:func:`make_case` turns it into a :class:`~refdyn.testing.cases.Case` deterministically (its
``seed``).  The Hypothesis strategies of :mod:`refdyn.testing.strategies` draw configurations,
and ``refdyn check`` runs the fixed ones of :func:`example_configs`.

Offset kinds (``offset_kind``):
- ``"kink_free"``: fractional parts in [0.05, 0.95], so every sampling point stays 0.05 from
  the kinks of bilinear sampling (integers, hence also the -1 and H edges): safe for finite
  differences with a step below 0.05.
- ``"integer"``: integer offsets, every sample exactly on a kink.
- ``"zero"``: zero offsets (the regular convolution grid; with padding, samples exactly at -1).
- ``"far"``: kink-free offsets up to 3 (H + W) away, so most samples leave the image.
- ``"normal"``: N(0, offset_scale), the distribution of trained DCN layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..finite_differences import kink_free_values
from .cases import Case, Config

OFFSET_KINDS = ("kink_free", "integer", "zero", "far", "normal")
KINK_FREE_OFFSET_KINDS = ("kink_free", "far")
KINK_FREE_MARGIN = 0.05


@dataclass(frozen=True)
class DeformConvConfig(Config):
    """One deform_conv2d configuration; all sizes are counts, pairs are (h, w)."""

    batch: int = 1
    in_channels: int = 2
    out_channels: int = 2
    height: int = 5
    width: int = 5
    kernel: tuple[int, int] = (3, 3)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    offset_groups: int = 1
    with_mask: bool = True
    with_bias: bool = True
    offset_kind: str = "kink_free"
    offset_scale: float = 2.0
    dtype: str = "float64"
    coord_grad: str = "torchvision"
    boundary: str = "zeros"
    seed: int = 0

    @property
    def out_size(self) -> tuple[int, int]:
        def size(extent, kernel, stride, padding, dilation):
            return (extent + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
        return (size(self.height, self.kernel[0], self.stride[0], self.padding[0], self.dilation[0]),
                size(self.width, self.kernel[1], self.stride[1], self.padding[1], self.dilation[1]))


def make_offsets(kind: str, scale: float, height: int, width: int, rng: np.random.Generator,
                 shape) -> np.ndarray:
    """Offsets of one kind (see the module docstring) for an H x W input, float64."""
    if kind == "kink_free":
        return kink_free_values(rng, shape, -scale, scale, KINK_FREE_MARGIN)
    if kind == "integer":
        return rng.integers(-int(np.ceil(scale)), int(np.ceil(scale)) + 1, size=shape).astype(float)
    if kind == "zero":
        return np.zeros(shape)
    if kind == "far":
        reach = 3 * (height + width)
        return kink_free_values(rng, shape, -reach, reach, KINK_FREE_MARGIN)
    if kind == "normal":
        return rng.normal(0.0, scale, size=shape)
    raise ValueError(f"offset kind must be one of {OFFSET_KINDS}, got {kind!r}")


def make_case(config: DeformConvConfig) -> Case:
    """The arrays of a configuration: input, weight, bias ~ N(0, 1), mask ~ U(0, 1), offsets by kind."""
    rng = np.random.default_rng(config.seed)
    dtype = np.dtype(config.dtype)
    kh, kw = config.kernel
    out_h, out_w = config.out_size
    taps = kh * kw
    batch = config.batch
    arrays = {
        "input": rng.standard_normal((batch, config.in_channels, config.height, config.width)),
        "offset": make_offsets(config.offset_kind, config.offset_scale, config.height,
                               config.width, rng,
                               (batch, 2 * config.offset_groups * taps, out_h, out_w)),
        "weight": rng.standard_normal(
            (config.out_channels, config.in_channels // config.groups, kh, kw)),
        "bias": rng.standard_normal(config.out_channels) if config.with_bias else None,
        "mask": (rng.uniform(0.0, 1.0, (batch, config.offset_groups * taps, out_h, out_w))
                 if config.with_mask else None),
    }
    arrays = {name: None if value is None else value.astype(dtype) for name, value in arrays.items()}
    grad_output = rng.standard_normal((batch, config.out_channels, out_h, out_w)).astype(dtype)
    return Case(arrays=arrays,
                params={"stride": config.stride, "padding": config.padding,
                        "dilation": config.dilation, "boundary": config.boundary},
                grad_output=grad_output,
                backward_params={"coord_grad": config.coord_grad},
                description=config.describe(),
                kink_free=config.offset_kind in KINK_FREE_OFFSET_KINDS)


def example_configs(thorough: bool = False) -> list[DeformConvConfig]:
    """Fixed configurations for ``refdyn check``: every feature at least once, tiny sizes.

    The first one is kink-free in float64 (the finite-difference case).
    """
    configs = [
        DeformConvConfig(),
        DeformConvConfig(batch=2, in_channels=4, out_channels=4, height=6, width=5, groups=2,
                         offset_groups=2, stride=(2, 1), dilation=(1, 2), seed=1),
        DeformConvConfig(offset_kind="zero", with_mask=False, coord_grad="mmcv", seed=2),
        DeformConvConfig(offset_kind="far", dtype="float32", seed=3),
        DeformConvConfig(offset_kind="normal", boundary="border", seed=6),
        DeformConvConfig(offset_kind="integer", kernel=(2, 3), padding=(0, 2), seed=4),
        DeformConvConfig(batch=0, seed=5),
    ]
    if thorough:
        configs += [
            DeformConvConfig(batch=2, in_channels=6, out_channels=6, height=7, width=8,
                             groups=3, offset_groups=2, offset_kind="normal", dtype="float32",
                             seed=seed)
            for seed in range(6, 10)
        ] + [
            DeformConvConfig(in_channels=4, out_channels=2, kernel=(1, 1), padding=(0, 0),
                             offset_groups=4, seed=10),
            DeformConvConfig(height=1, width=1, kernel=(1, 1), padding=(0, 0), seed=11),
        ]
    return configs

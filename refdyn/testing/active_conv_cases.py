"""Configurations of ``active_conv2d`` and the arrays they describe (NumPy only).

Positions are drawn like deformable-convolution offsets (the kinds of
:mod:`refdyn.testing.deform_conv_cases`): ``kink_free`` and ``far`` keep every sampling point
0.05 from the kinks, ``integer`` and ``zero`` put every sample on one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cases import Case, Config
from .deform_conv_cases import KINK_FREE_OFFSET_KINDS, make_offsets


@dataclass(frozen=True)
class ActiveConvConfig(Config):
    """One active_conv2d configuration; pairs are (h, w); position_groups P divides C_out."""

    batch: int = 1
    in_channels: int = 2
    out_channels: int = 2
    height: int = 5
    width: int = 5
    kernel: tuple[int, int] = (3, 3)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (1, 1)
    groups: int = 1
    position_groups: int = 1
    with_bias: bool = True
    position_kind: str = "kink_free"
    position_scale: float = 2.0
    boundary: str = "zeros"
    coord_grad: str = "torchvision"
    dtype: str = "float64"
    seed: int = 0

    @property
    def out_size(self) -> tuple[int, int]:
        return tuple((extent + 2 * pad - kernel) // stride + 1 for extent, pad, kernel, stride
                     in zip((self.height, self.width), self.padding, self.kernel, self.stride))


def make_case(config: ActiveConvConfig) -> Case:
    """input, weight, bias ~ N(0, 1); positions (K, 2) when P = 1, else (P, K, 2)."""
    rng = np.random.default_rng(config.seed)
    dtype = np.dtype(config.dtype)
    kh, kw = config.kernel
    positions_shape = ((kh * kw, 2) if config.position_groups == 1
                       else (config.position_groups, kh * kw, 2))
    arrays = {
        "input": rng.standard_normal((config.batch, config.in_channels, config.height, config.width)),
        "positions": make_offsets(config.position_kind, config.position_scale, config.height,
                                  config.width, rng, positions_shape),
        "weight": rng.standard_normal((config.out_channels, config.in_channels // config.groups,
                                       kh, kw)),
        "bias": rng.standard_normal(config.out_channels) if config.with_bias else None,
    }
    arrays = {name: None if value is None else value.astype(dtype) for name, value in arrays.items()}
    grad_output = rng.standard_normal((config.batch, config.out_channels) + config.out_size)
    return Case(arrays=arrays,
                params={"stride": config.stride, "padding": config.padding,
                        "boundary": config.boundary},
                grad_output=grad_output.astype(dtype),
                backward_params={"coord_grad": config.coord_grad},
                description=config.describe(),
                kink_free=config.position_kind in KINK_FREE_OFFSET_KINDS)


def example_configs(thorough: bool = False) -> list[ActiveConvConfig]:
    """Fixed configurations for ``refdyn check``; the first is kink-free float64."""
    configs = [
        ActiveConvConfig(),
        ActiveConvConfig(batch=2, in_channels=4, out_channels=4, groups=2, position_groups=4,
                         boundary="border", seed=1),
        ActiveConvConfig(position_kind="zero", coord_grad="mmcv", stride=(2, 1), seed=2),
        ActiveConvConfig(position_kind="far", boundary="border", dtype="float32", seed=3),
        ActiveConvConfig(batch=0, seed=4),
    ]
    if thorough:
        configs += [ActiveConvConfig(batch=2, in_channels=6, out_channels=6, height=7, width=6,
                                     groups=3, position_groups=2, position_kind="normal",
                                     boundary=boundary, dtype="float32", seed=seed)
                    for seed, boundary in enumerate(("zeros", "border", "zeros"), start=5)]
    return configs

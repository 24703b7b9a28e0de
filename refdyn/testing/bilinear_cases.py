"""Configurations of ``bilinear_sample`` and the arrays they describe (NumPy only).

Point kinds: ``"kink_free"`` (every coordinate 0.05 from the integers; finite differences are
valid), ``"integer"`` (every point on a kink), ``"far"`` (kink-free, up to 3 (H + W) away),
``"normal"`` (N(H/2, H), mostly inside).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..finite_differences import kink_free_values
from .cases import Case, Config

POINT_KINDS = ("kink_free", "integer", "far", "normal")
KINK_FREE_POINT_KINDS = ("kink_free", "far")


@dataclass(frozen=True)
class BilinearConfig(Config):
    """One bilinear_sample configuration: images (channels, H, W) sampled at ``points`` points."""

    channels: int = 2
    height: int = 4
    width: int = 5
    points: int = 6
    point_kind: str = "kink_free"
    boundary: str = "zeros"
    coord_grad: str = "torchvision"
    dtype: str = "float64"
    seed: int = 0


def make_points(config: BilinearConfig, rng: np.random.Generator, extent: int) -> np.ndarray:
    kind = config.point_kind
    if kind == "kink_free":
        return kink_free_values(rng, config.points, -2, extent + 1)
    if kind == "integer":
        return rng.integers(-2, extent + 2, size=config.points).astype(float)
    if kind == "far":
        reach = 3 * (config.height + config.width)
        return kink_free_values(rng, config.points, -reach, reach)
    if kind == "normal":
        return rng.normal(extent / 2, extent, size=config.points)
    raise ValueError(f"point_kind must be one of {POINT_KINDS}, got {kind!r}")


def make_case(config: BilinearConfig) -> Case:
    rng = np.random.default_rng(config.seed)
    dtype = np.dtype(config.dtype)
    arrays = {"image": rng.standard_normal((config.channels, config.height, config.width)),
              "y": make_points(config, rng, config.height),
              "x": make_points(config, rng, config.width)}
    return Case(arrays={name: value.astype(dtype) for name, value in arrays.items()},
                params={"boundary": config.boundary},
                grad_output=rng.standard_normal((config.channels, config.points)).astype(dtype),
                backward_params={"coord_grad": config.coord_grad},
                description=config.describe(),
                kink_free=config.point_kind in KINK_FREE_POINT_KINDS)


def example_configs(thorough: bool = False) -> list[BilinearConfig]:
    """Fixed configurations for ``refdyn check``; the first is kink-free float64."""
    configs = [BilinearConfig(), BilinearConfig(boundary="border", seed=1),
               BilinearConfig(point_kind="integer", coord_grad="mmcv", seed=2),
               BilinearConfig(point_kind="far", dtype="float32", seed=3),
               BilinearConfig(channels=0, seed=4)]
    if thorough:
        configs += [BilinearConfig(channels=3, height=h, width=w, points=20, point_kind=kind,
                                   boundary=boundary, seed=seed)
                    for seed, (h, w, kind, boundary) in enumerate(
                        [(1, 1, "normal", "zeros"), (1, 6, "normal", "border"),
                         (7, 3, "integer", "border"), (5, 5, "normal", "zeros")], start=5)]
    return configs

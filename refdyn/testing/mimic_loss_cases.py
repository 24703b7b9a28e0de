"""Configurations of ``mimic_loss`` and the arrays they describe (NumPy only).

Features and targets ~ N(0, 1); ``zero_row`` zeroes the first RoI's features, where the cosine
is defined through ``eps`` and the loss jumps (so such a case is not kink-free).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cases import Case, Config


@dataclass(frozen=True)
class MimicLossConfig(Config):
    """``rois`` RoIs with features of ``feature_shape`` each."""

    rois: int = 3
    feature_shape: tuple[int, ...] = (2, 2, 2)
    zero_row: bool = False
    dtype: str = "float64"
    seed: int = 0


def make_case(config: MimicLossConfig) -> Case:
    rng = np.random.default_rng(config.seed)
    dtype = np.dtype(config.dtype)
    shape = (config.rois,) + tuple(config.feature_shape)
    features, target = rng.standard_normal(shape), rng.standard_normal(shape)
    if config.zero_row and config.rois:
        features[0] = 0.0
    return Case(arrays={"features": features.astype(dtype), "target": target.astype(dtype)},
                params={}, grad_output=np.asarray(rng.standard_normal(), dtype=dtype),
                description=config.describe(), kink_free=not config.zero_row)


def example_configs(thorough: bool = False) -> list[MimicLossConfig]:
    """Fixed configurations for ``refdyn check``; the first is kink-free float64."""
    configs = [MimicLossConfig(), MimicLossConfig(rois=5, feature_shape=(7,), seed=1),
               MimicLossConfig(zero_row=True, seed=2), MimicLossConfig(dtype="float32", seed=3),
               MimicLossConfig(rois=0, seed=4)]
    if thorough:
        configs += [MimicLossConfig(rois=16, feature_shape=(4, 3, 3), dtype=dtype, seed=seed)
                    for seed, dtype in enumerate(("float64", "float32"), start=5)]
    return configs

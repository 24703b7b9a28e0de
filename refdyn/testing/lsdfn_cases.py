"""Configurations of ``lsdfn``, ``lsdfn_sample`` and ``dfn`` and the arrays they describe.

Each config dataclass names sizes and options; its ``make_*_case`` turns it into a
:class:`~refdyn.testing.cases.Case` deterministically (its ``seed``).  LS-DFN reads at integer
offsets (a gamma + j), so it has no bilinear kinks; the only kinks are the ties of max fusion,
which cases drawn from continuous distributions meet with probability zero; a ``fuse="max"``
case is still not marked kink-free, since it keeps no guaranteed margin from a tie.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import cases
from .cases import Case, Config


@dataclass(frozen=True)
class LSDFNConfig(Config):
    """One lsdfn configuration: features (batch, channels, height, width), ``out_channels`` C',
    s = ``samples``, sample stride ``gamma``, kernel size k and the options of ``lsdfn``."""

    batch: int = 1
    channels: int = 2
    out_channels: int = 2
    height: int = 4
    width: int = 5
    samples: int = 2
    gamma: int = 1
    kernel_size: int = 3
    residual: bool = True
    attention: Optional[str] = "factorized"
    fuse: str = "sum"
    indexing: str = "centred"
    kernel_form: str = "described"
    dtype: str = "float64"
    seed: int = 0


@dataclass(frozen=True)
class LSDFNSampleConfig(Config):
    """One lsdfn_sample (Eq. 2) configuration."""

    batch: int = 1
    channels: int = 2
    out_channels: int = 2
    height: int = 4
    width: int = 5
    samples: int = 2
    gamma: int = 1
    kernel_size: int = 3
    indexing: str = "centred"
    dtype: str = "float64"
    seed: int = 0


@dataclass(frozen=True)
class DFNConfig(Config):
    """One dfn configuration: filters shared by the channels or one per channel."""

    batch: int = 1
    channels: int = 2
    height: int = 4
    width: int = 5
    kernel_size: int = 3
    per_channel: bool = False
    softmax: bool = False
    dtype: str = "float64"
    seed: int = 0


def _as(dtype, arrays):
    return {name: None if value is None else value.astype(dtype) for name, value in arrays.items()}


def make_lsdfn_case(config: LSDFNConfig) -> Case:
    """Features, U, V ~ N(0, 1) and attention ~ N(0, 0.5^2) for the inputs ``attention`` uses."""
    rng = np.random.default_rng(config.seed)
    n, c, c_out = config.batch, config.channels, config.out_channels
    grid = (config.height, config.width)
    s2, k2 = config.samples ** 2, config.kernel_size ** 2
    arrays = {"features": rng.standard_normal((n, c, *grid)),
              "u": rng.standard_normal((n, c_out, c, *grid)),
              "v": rng.standard_normal((n, c_out, k2, *grid)),
              "sample_attention": None, "position_attention": None, "full_attention": None}
    if config.attention == "factorized":
        arrays["sample_attention"] = 0.5 * rng.standard_normal((n, c_out * s2, *grid))
        arrays["position_attention"] = 0.5 * rng.standard_normal((n, c_out * k2, *grid))
    elif config.attention == "full":
        arrays["full_attention"] = 0.5 * rng.standard_normal((n, c_out * s2 * k2, *grid))
    grad_output = rng.standard_normal((n, c_out, *grid))
    return Case(arrays=_as(config.dtype, arrays),
                params={"samples": config.samples, "gamma": config.gamma,
                        "kernel_size": config.kernel_size, "residual": config.residual,
                        "attention": config.attention, "fuse": config.fuse,
                        "indexing": config.indexing, "kernel_form": config.kernel_form},
                grad_output=grad_output.astype(config.dtype), description=config.describe(),
                kink_free=config.fuse == "sum")


def make_lsdfn_sample_case(config: LSDFNSampleConfig) -> Case:
    """Features and full kernels ~ N(0, 1)."""
    rng = np.random.default_rng(config.seed)
    n, k = config.batch, config.kernel_size
    grid = (config.height, config.width)
    arrays = {"features": rng.standard_normal((n, config.channels, *grid)),
              "kernels": rng.standard_normal((n, config.out_channels, config.channels, k, k,
                                              *grid))}
    grad_output = rng.standard_normal((n, config.samples ** 2, config.out_channels, *grid))
    return Case(arrays=_as(config.dtype, arrays),
                params={"samples": config.samples, "gamma": config.gamma, "kernel_size": k,
                        "indexing": config.indexing},
                grad_output=grad_output.astype(config.dtype), description=config.describe(),
                kink_free=True)


def make_dfn_case(config: DFNConfig) -> Case:
    """Features and filters ~ N(0, 1)."""
    rng = np.random.default_rng(config.seed)
    n, taps = config.batch, config.kernel_size ** 2
    grid = (config.height, config.width)
    arrays = {"features": rng.standard_normal((n, config.channels, *grid)),
              "filters": rng.standard_normal(
                  (n, (config.channels if config.per_channel else 1) * taps, *grid))}
    grad_output = rng.standard_normal((n, config.channels, *grid))
    return Case(arrays=_as(config.dtype, arrays),
                params={"kernel_size": config.kernel_size, "softmax": config.softmax},
                grad_output=grad_output.astype(config.dtype), description=config.describe(),
                kink_free=True)


def lsdfn_example_configs(thorough: bool = False) -> list[LSDFNConfig]:
    """Fixed lsdfn configurations for ``refdyn check``: every option at least once, tiny sizes;
    the first is float64 and kink-free."""
    configs = [
        LSDFNConfig(),
        LSDFNConfig(batch=2, channels=3, out_channels=1, samples=3, gamma=2, indexing="paper",
                    kernel_form="printed", seed=1),
        LSDFNConfig(attention="full", residual=False, kernel_size=2, height=5, width=3, seed=2),
        LSDFNConfig(attention=None, fuse="max", samples=3, gamma=1, seed=3),
        LSDFNConfig(channels=1, out_channels=3, kernel_size=1, samples=1, dtype="float32",
                    seed=4),
        LSDFNConfig(batch=0, seed=5),
    ]
    if thorough:
        configs += [
            LSDFNConfig(batch=2, channels=3, out_channels=2, height=6, width=7, samples=samples,
                        gamma=gamma, attention=attention, fuse=fuse, indexing=indexing,
                        kernel_form=form, dtype=dtype, seed=seed)
            for seed, (samples, gamma, attention, fuse, indexing, form, dtype) in enumerate(
                [(3, 2, "factorized", "max", "centred", "printed", "float64"),
                 (2, 3, "full", "sum", "paper", "described", "float32"),
                 (4, 1, None, "sum", "centred", "printed", "float64")], start=6)
        ] + [LSDFNConfig(height=1, width=1, samples=3, gamma=2, seed=9)]
    return configs


def lsdfn_sample_example_configs(thorough: bool = False) -> list[LSDFNSampleConfig]:
    """Fixed lsdfn_sample configurations for ``refdyn check``."""
    configs = [
        LSDFNSampleConfig(),
        LSDFNSampleConfig(batch=2, channels=1, out_channels=3, samples=3, gamma=2,
                          indexing="paper", seed=1),
        LSDFNSampleConfig(kernel_size=2, dtype="float32", seed=2),
        LSDFNSampleConfig(batch=0, seed=3),
    ]
    if thorough:
        configs += [LSDFNSampleConfig(batch=2, channels=3, height=7, width=6, samples=4, gamma=1,
                                      kernel_size=3, indexing="paper", seed=4),
                    LSDFNSampleConfig(height=1, width=2, samples=3, gamma=3, seed=5)]
    return configs


def dfn_example_configs(thorough: bool = False) -> list[DFNConfig]:
    """Fixed dfn configurations for ``refdyn check``."""
    configs = [
        DFNConfig(),
        DFNConfig(batch=2, channels=3, per_channel=True, softmax=True, seed=1),
        DFNConfig(kernel_size=2, softmax=True, dtype="float32", seed=2),
        DFNConfig(batch=0, seed=3),
    ]
    if thorough:
        configs += [DFNConfig(channels=4, height=9, width=8, kernel_size=5, per_channel=True,
                              seed=4),
                    DFNConfig(height=1, width=1, kernel_size=3, softmax=True, seed=5)]
    return configs


# --- For the mirrors of other backends: every example case, bad arguments and their errors -----

def references():
    """The NumPy reference (forward, backward) of dfn, lsdfn_sample and lsdfn, by name."""
    from ..lsdfn_dfn_numpy import dfn, dfn_backward
    from ..lsdfn_numpy import lsdfn, lsdfn_backward, lsdfn_sample, \
        lsdfn_sample_backward
    return {"dfn": (dfn, dfn_backward), "lsdfn_sample": (lsdfn_sample, lsdfn_sample_backward),
            "lsdfn": (lsdfn, lsdfn_backward)}


_MAKERS = {"dfn": (make_dfn_case, dfn_example_configs),
           "lsdfn_sample": (make_lsdfn_sample_case, lsdfn_sample_example_configs),
           "lsdfn": (make_lsdfn_case, lsdfn_example_configs)}


def example_cases(thorough: bool = True) -> list[tuple[str, Case]]:
    """(operator name, case) of every example configuration of dfn, lsdfn_sample and lsdfn."""
    return [(name, make(config)) for name, (make, configs) in _MAKERS.items()
            for config in configs(thorough)]


def bad_arguments(name: str) -> dict[str, dict[str, object]]:
    """Keyword arguments of operator ``name``'s backward (grad_output included), each with one
    problem the checks of :mod:`refdyn.lsdfn_args` reject; every array C-contiguous."""
    make, configs = _MAKERS[name]
    case = make(configs()[1])
    a = {**case.arrays, **case.params, "grad_output": case.grad_output}
    nan = {"dfn": "filters", "lsdfn_sample": "kernels", "lsdfn": "u"}[name]
    poisoned = a[nan].copy()
    poisoned.flat[3] = np.nan
    common = {f"nan {nan}": {**a, nan: poisoned},
              "float32 features": {**a, "features": a["features"].astype(np.float32)},
              "grad_output shape": {**a, "grad_output": a["grad_output"][..., :1].copy()},
              "kernel_size 0": {**a, "kernel_size": 0}}
    if name == "dfn":
        return {**common, "bool-like softmax": {**a, "softmax": 1},
                "filter channels": {**a, "filters": np.zeros((2, 5, 4, 5))}}
    if name == "lsdfn_sample":
        return {**common, "gamma 0": {**a, "gamma": 0}, "indexing": {**a, "indexing": "left"},
                "kernels shape": {**a, "kernels": a["kernels"][:, :, :, :2].copy()}}
    return {**common, "missing position attention": {**a, "position_attention": None},
            "fuse": {**a, "fuse": "mean"}, "kernel_form": {**a, "kernel_form": "both"},
            "inf sample attention": {**a, "sample_attention": np.full_like(
                a["sample_attention"], np.inf)},
            "v shape": {**a, "v": a["v"][:, :, :4].copy()}}


def error_mismatches(name, forward, backward, arguments, on_device=lambda array: array):
    """:func:`refdyn.testing.cases.error_mismatches` of a backend's forward and backward of the
    operator ``name`` (see :func:`references`)."""
    return cases.error_mismatches(*references()[name], forward, backward, arguments, on_device)

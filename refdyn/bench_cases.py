"""The cases ``refdyn bench`` times (:mod:`refdyn.bench`): their configurations, float32 arrays and
float64 reference results.

The standard deform_conv2d layer, its scaling series, one configuration per other operator
(each tiny with ``quick``), and :class:`Bench`, one case built from a configuration, with the
deform_conv2d offsets moved off the bilinear kinks (:func:`off_the_kinks`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .registry import OPERATORS, load
from .testing.ddf_cases import DDFConfig
from .testing.deform_conv_cases import DeformConvConfig
from .testing.lsdfn_cases import LSDFNConfig
from .testing.roi_cases import RoIPoolConfig

#: Pixel distance the deform_conv2d offsets keep from the bilinear kinks (:func:`off_the_kinks`).
KINK_MARGIN = 1e-3


# ---- configurations -------------------------------------------------------------------------

def standard_config(quick: bool) -> DeformConvConfig:
    """The standard deform_conv2d layer (a tiny one with ``quick``)."""
    size, channels, batch = (8, 4, 2) if quick else (32, 64, 8)
    return DeformConvConfig(batch=batch, in_channels=channels, out_channels=channels,
                            height=size, width=size, kernel=(3, 3), padding=(1, 1),
                            offset_kind="normal", offset_scale=2.0, dtype="float32")


def scaling_configs(quick: bool) -> list[tuple[str, int, DeformConvConfig]]:
    """(series, value, layer): the standard layer at each size, then at each channel count."""
    base = standard_config(quick)
    sizes, channels = ((6, 8), (2, 4)) if quick else ((16, 32, 64, 128), (16, 64, 256))
    return ([("H=W", size, replace(base, height=size, width=size)) for size in sizes]
            + [("C", count, replace(base, in_channels=count, out_channels=count))
               for count in channels])


def operator_configs(quick: bool) -> dict[str, object]:
    """One representative configuration per operator, float32."""
    if quick:
        return {"roi_align": RoIPoolConfig(operator="roi_align", batch=1, channels=4, height=8,
                                           width=8, rois=4, roi_kind="inside", pooled=(2, 2),
                                           dtype="float32"),
                "lsdfn": LSDFNConfig(batch=1, channels=2, out_channels=2, height=6, width=6,
                                     samples=3, dtype="float32"),
                "ddf": DDFConfig(batch=1, channels=4, height=6, width=6, dtype="float32")}
    return {"roi_align": RoIPoolConfig(operator="roi_align", batch=2, channels=256, height=64,
                                       width=64, rois=128, roi_kind="inside", pooled=(7, 7),
                                       spatial_scale=0.25, sampling_ratio=2, aligned=True,
                                       dtype="float32"),
            "lsdfn": LSDFNConfig(batch=2, channels=32, out_channels=32, height=32, width=32,
                                 samples=3, dtype="float32"),
            "ddf": DDFConfig(batch=8, channels=64, height=32, width=32, kernel_size=3,
                             dtype="float32")}


def describe(config) -> dict:
    return {"operator": type(config).__name__, **asdict(config)}


# ---- one case: its arrays and reference results ---------------------------------------------

@dataclass
class Bench:
    """One case: the operator, its float32 case, and the float64 reference results."""

    operator: str
    config: object
    case: object = field(init=False)
    expected: dict = field(init=False)

    def __post_init__(self):
        op = OPERATORS[self.operator]
        self.case = load(op.make_case)(self.config)
        if self.operator == "deform_conv2d":
            self.case = self.case.with_arrays(offset=off_the_kinks(self.case.arrays["offset"]))
        forward, backward = op.implementation("vectorized").load()
        wide = self.case.with_arrays(**{name: None if value is None else value.astype(np.float64)
                                        for name, value in self.case.arrays.items()})
        grad_output = self.case.grad_output.astype(np.float64)
        self.expected = {"forward": forward(**wide.forward_kwargs()),
                         "backward": backward(grad_output, **wide.backward_kwargs())}
        self.expected["forward+backward"] = self.expected["backward"]


def off_the_kinks(offset: np.ndarray, margin: float = KINK_MARGIN) -> np.ndarray:
    """Offsets moved at least ``margin`` pixel away from the integers.

    The sampling points are p0 + p_k (integers) + offsets.  Within float32 rounding of an
    integer, a float32 implementation and the float64 reference can pick different bilinear
    cells, and the offset gradient jumps between cells; away from the integers they agree.
    """
    nearest = np.round(offset)
    fraction = offset - nearest
    pushed = nearest + np.where(fraction < 0, -margin, margin)
    return np.where(np.abs(fraction) < margin, pushed, offset).astype(offset.dtype)

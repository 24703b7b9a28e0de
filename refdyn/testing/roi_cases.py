"""Configurations of the RoI pooling family and the arrays they describe (NumPy only).

One :class:`RoIPoolConfig` serves every RoI operator (``operator`` names which); fields an
operator does not use are ignored.  :func:`make_case` turns it into a
:class:`~refdyn.testing.cases.Case` deterministically (its ``seed``).

RoI kinds (``roi_kind``), in image coordinates (feature size / spatial_scale):
``"inside"`` (at most half a pixel beyond the far edge), ``"partly_outside"``, ``"outside"`` (wholly beyond the image), ``"zero_size"``
(x1 = x2, y1 = y2), ``"integer"`` (integer corners inside: with zero offsets, DCNv1 samples lie
exactly on the kinks), ``"mixed"`` (one of each of those, in turn), ``"integer_edges"``
(integer corners from beyond the top-left to beyond the bottom-right edge: RoIAlign samples
land exactly on the x = -1 and x = W lines where the sampling rule jumps), ``"tiny"`` (sides
below one feature-map pixel), ``"inverted"`` (x2 < x1 and y2 < y1, a negative size) and
``"duplicated"`` (one inside RoI repeated).  ``rois = 0`` gives an empty RoI list.

Offset kinds (``offset_kind``): ``"kink_free"`` moves every bin so that all its samples keep
:data:`KINK_FREE_MARGIN` from the kinks (integers; also half-integers, the skip lines, for the
official PS rules) - safe for finite differences; ``"zero"``; ``"normal"`` (N(0, 0.5) normalized
offsets, anywhere, kinks included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..roi_align_numpy import align_grid
from ..roi_args import PSRoIParams, official_roi
from ..roi_pool_numpy import eq5_grid, official_grid, part_cells
from .cases import Case, Config

ROI_OPERATORS = ("roi_align", "ps_roi_align", "deform_roi_align", "deform_roi_pool",
                 "deform_ps_roi_pool")
#: The RoIAlign operators with neither offsets nor mask (torchvision's).
ALIGN_WITHOUT_OFFSETS = ("roi_align", "ps_roi_align")
#: The kinds ``"mixed"`` cycles through.
MIXED_KINDS = ("inside", "partly_outside", "outside", "zero_size", "integer")
ROI_KINDS = MIXED_KINDS + ("mixed", "integer_edges", "tiny", "inverted", "duplicated")
OFFSET_KINDS = ("kink_free", "zero", "normal")
KINK_FREE_OFFSET_KINDS = ("kink_free",)
KINK_FREE_MARGIN = 0.02


@dataclass(frozen=True)
class RoIPoolConfig(Config):
    """One RoI pooling call: input (batch, channels, height, width), ``rois`` RoIs, P_h x P_w bins.

    channels is per output channel for the position-sensitive operators: the input of
    deform_ps_roi_pool has output_dim * group_size**2 channels with output_dim = channels, that
    of ps_roi_align channels * P_h * P_w.
    """

    operator: str = "deform_roi_align"
    batch: int = 1
    channels: int = 2
    height: int = 6
    width: int = 7
    rois: int = 3
    roi_kind: str = "mixed"
    pooled: tuple[int, int] = (2, 2)
    spatial_scale: float = 0.5
    sampling_ratio: int = 2
    aligned: bool = True
    with_offset: bool = True
    with_mask: bool = True
    offset_kind: str = "kink_free"
    gamma: float = 0.1
    group_size: int = 2
    classes: int = 1
    part_size: int = 0
    sample_per_part: int = 2
    coord_grad: str = "torchvision"
    dtype: str = "float64"
    seed: int = 0


def make_rois(kind: str, count: int, batch: int, height: float, width: float,
              rng: np.random.Generator, pixel: float = 1.0) -> np.ndarray:
    """(count, 5) RoIs of one kind (see the module docstring) for an image of height x width
    whose feature-map pixel is ``pixel`` image units (1 / spatial_scale)."""
    if kind == "duplicated":
        return np.repeat(make_rois("inside", min(count, 1), batch, height, width, rng), count, 0)
    rows = []
    for k in range(count):
        this = MIXED_KINDS[k % len(MIXED_KINDS)] if kind == "mixed" else kind
        if this in ("inside", "tiny", "inverted"):
            x1, y1 = rng.uniform(0, width / 2), rng.uniform(0, height / 2)
            x2, y2 = x1 + rng.uniform(0.5, 0.5 + width / 2), y1 + rng.uniform(0.5, 0.5 + height / 2)
            if this == "tiny":
                x2, y2 = x1 + rng.uniform(0, pixel), y1 + rng.uniform(0, pixel)
            elif this == "inverted":
                x1, x2, y1, y2 = x2, x1, y2, y1
        elif this == "partly_outside":
            x1, y1 = rng.uniform(-width / 2, width / 2), rng.uniform(-height / 2, height / 2)
            x2, y2 = x1 + rng.uniform(width / 2, width), y1 + rng.uniform(height / 2, height)
        elif this == "outside":
            x1, y1 = rng.uniform(width + 3, 2 * width + 3), rng.uniform(-height, height)
            x2, y2 = x1 + rng.uniform(1, 3), y1 + rng.uniform(1, 3)
        elif this == "zero_size":
            x1, y1 = rng.uniform(0, width), rng.uniform(0, height)
            x2, y2 = x1, y1
        elif this == "integer":
            x1, y1 = int(rng.integers(0, width // 2 + 1)), int(rng.integers(0, height // 2 + 1))
            x2, y2 = x1 + int(rng.integers(1, width // 2 + 2)), y1 + int(rng.integers(1, height // 2 + 2))
        elif this == "integer_edges":
            x1 = int(rng.integers(-int(width) // 2 - 2, int(width) + 1))
            y1 = int(rng.integers(-int(height) // 2 - 2, int(height) + 1))
            x2, y2 = x1 + int(rng.integers(0, int(width) + 3)), y1 + int(rng.integers(0, int(height) + 3))
        else:
            raise ValueError(f"roi_kind must be one of {ROI_KINDS}, got {kind!r}")
        rows.append([rng.integers(0, batch), x1, y1, x2, y2])
    return np.array(rows, dtype=np.float64).reshape(count, 5)


def kink_free_shift(coords: np.ndarray, period: float, margin: float,
                    rng: np.random.Generator) -> float:
    """A shift s with every coords + s at least ``margin`` from the multiples of ``period``: it
    moves a multiple of the period into a gap between the coordinates' phases (at random)."""
    if coords.size == 0:
        return float(rng.uniform(-2, 2))
    phases = np.sort(np.mod(coords.ravel(), period))
    gaps = np.diff(np.append(phases, phases[0] + period))
    wide = np.flatnonzero(gaps > 2 * margin + 1e-9)
    if not wide.size:
        raise ValueError("no kink-free shift exists: too many samples per bin for the margin")
    k = rng.choice(wide)
    # A multiple of the period at t (inside gap k, margin from both ends) after shifting by -t.
    t = phases[k] + rng.uniform(margin, gaps[k] - margin)
    return float(-t + rng.integers(-1, 2) * period)


def _kink_free_offsets(grids, pooled, period, rng, cells=None, classes=1, cell_counts=None):
    """Normalized offsets (R, 2 * classes, C_h, C_w) moving each bin (or each offset cell, which
    moves every bin mapped to it) kink-free; channel order (y, x) per class.  cell_counts:
    (C_h, C_w) when there are more offset cells than bins reach (those move no sample)."""
    cells_h = np.arange(pooled[0]) if cells is None else cells
    cells_w = np.arange(pooled[1]) if cells is None else cells
    shape = (len(grids), 2 * classes) + (cell_counts or (int(cells_h.max()) + 1,
                                                         int(cells_w.max()) + 1))
    offsets = np.zeros(shape)
    for r, grid in enumerate(grids):
        for c in range(classes):
            for axis, (coords, valid, cell_of, scale) in enumerate(
                    ((grid.ys, grid.valid_y, cells_h, grid.scale_y),
                     (grid.xs, grid.valid_x, cells_w, grid.scale_x))):
                for cell in range(shape[2 + axis]):
                    for other in range(shape[3 - axis]):
                        shift = kink_free_shift(coords[cell_of == cell][valid[cell_of == cell]],
                                                period, KINK_FREE_MARGIN, rng)
                        index = (r, 2 * c + axis) + ((cell, other) if axis == 0 else (other, cell))
                        offsets[index] = shift / scale if abs(scale) > 1e-9 else 0.0
    return offsets


def make_case(config: RoIPoolConfig) -> Case:
    """Input ~ N(0, 1), RoIs of ``roi_kind``, offsets of ``offset_kind``, mask ~ U(0, 1)."""
    rng = np.random.default_rng(config.seed)
    dtype = np.dtype(config.dtype)
    op = config.operator
    if op not in ROI_OPERATORS:
        raise ValueError(f"operator must be one of {ROI_OPERATORS}, got {op!r}")
    ps = op == "deform_ps_roi_pool"
    pooled = (config.pooled[0], config.pooled[0]) if ps else tuple(config.pooled)
    in_channels = config.channels * config.group_size ** 2 if ps else config.channels
    if op == "ps_roi_align":
        in_channels = config.channels * pooled[0] * pooled[1]
    scale = config.spatial_scale
    rois = make_rois(config.roi_kind, config.rois, max(config.batch, 1), config.height / scale,
                     config.width / scale, rng, 1 / scale)
    arrays = {"input": rng.standard_normal((config.batch, in_channels, config.height, config.width)),
              "rois": rois}
    if op == "deform_ps_roi_pool":
        params = {"spatial_scale": scale, "output_dim": config.channels,
                  "group_size": config.group_size, "pooled_size": pooled[0],
                  "part_size": config.part_size, "sample_per_part": config.sample_per_part,
                  "trans_std": config.gamma}
        checked = PSRoIParams(config.channels, config.group_size, pooled[0],
                              config.part_size or pooled[0], config.sample_per_part, config.gamma,
                              False, config.classes)
        grids = [official_grid(official_roi(roi, scale), checked) for roi in rois]
        cells = part_cells(checked)
        offset_shape = (config.rois, 2 * config.classes, checked.part_size, checked.part_size)
        period = 0.5
    else:
        cells = None
        offset_shape = (config.rois, 2) + pooled
        period = 1.0
        if op == "deform_roi_pool":
            params = {"output_size": pooled, "spatial_scale": scale, "gamma": config.gamma}
            grids = [eq5_grid(roi, pooled, scale, config.gamma) for roi in rois]
        else:
            params = {"output_size": pooled, "spatial_scale": scale,
                      "sampling_ratio": config.sampling_ratio}
            aligned = config.aligned if op == "roi_align" else True
            if op == "deform_roi_align":
                params["gamma"] = config.gamma
            elif op == "roi_align":
                params["aligned"] = config.aligned
            grids = [align_grid(roi, pooled, scale, config.sampling_ratio, aligned, config.gamma)
                     for roi in rois]
    if op not in ALIGN_WITHOUT_OFFSETS:
        offset = None
        if config.with_offset:
            if config.offset_kind == "kink_free":
                offset = _kink_free_offsets(grids, pooled, period, rng, cells,
                                            config.classes if ps else 1, offset_shape[2:])
            elif config.offset_kind == "zero":
                offset = np.zeros(offset_shape)
            elif config.offset_kind == "normal":
                offset = rng.normal(0.0, 0.5, offset_shape)
            else:
                raise ValueError(f"offset_kind must be one of {OFFSET_KINDS}, got {config.offset_kind!r}")
            if op != "deform_roi_pool" and offset is not None:
                # the mmcv and official layouts put x first: swap each (y, x) pair
                offset = offset.reshape(offset.shape[0], offset.shape[1] // 2, 2, *offset.shape[2:])[:, :, ::-1]
                offset = offset.reshape(offset_shape)
        arrays["offset"] = offset
    if op == "deform_roi_align":
        arrays["mask"] = rng.uniform(0, 1, (config.rois, 1) + pooled) if config.with_mask else None
    out_channels = config.channels
    grad_output = rng.standard_normal((config.rois, out_channels) + pooled)
    return Case(arrays={name: None if value is None else value.astype(dtype)
                        for name, value in arrays.items()},
                params=params, grad_output=grad_output.astype(dtype),
                backward_params={"coord_grad": config.coord_grad} if op == "deform_roi_align"
                else {},
                description=config.describe(),
                # mmcv's offset-gradient rule is not the derivative where a sample is clamped
                kink_free=(config.offset_kind in KINK_FREE_OFFSET_KINDS
                           and not (op == "deform_roi_align" and config.coord_grad == "mmcv"))
                or op in ALIGN_WITHOUT_OFFSETS or not config.with_offset)


#: How far :func:`rounding_neighbours` moves every sample, in units of the dtype's rounding of
#: the largest RoI coordinate: more than the few roundings a kernel's grid arithmetic makes,
#: far less than any sample spacing.
ROUNDING_UNITS = 32


def rounding_neighbours(case: Case) -> list[tuple[Case, Case]]:
    """``case`` with its RoIs translated in each of the eight directions (-1, 0 or +1 along
    each axis; a sample may sit on a jump along one axis only) by d and by 2 d (a pair per
    direction), d = ROUNDING_UNITS units of the dtype's rounding of the largest feature-map
    coordinate.

    RoIAlign samples jump from the edge pixel to 0 where they cross x = -1 or x = W (and the
    Eq. 5 bins are translated with their RoI); a kernel that computes the grid in its own
    dtype can land on the other side of such a line.  A translation moves every sample by d
    without changing a RoI's size (d is a power of two, so corners stored in the dtype move
    exactly), so the adaptive grid and the bins stay the same.  The
    official rules round RoI corners, which a translation would move across a rounding
    boundary, so deform_ps_roi_pool has no neighbours (its grid is exact for integer and
    half-integer corners)."""
    rois = case.arrays["rois"]
    if case.params.get("output_dim") is not None or rois.size == 0:
        return []
    scale = float(case.params["spatial_scale"])
    largest = max(1.0, float(np.max(np.abs(rois[:, 1:]))) * scale)
    step = ROUNDING_UNITS * float(np.finfo(rois.dtype).eps) * largest / scale
    step = 2.0 ** math.ceil(math.log2(step))    # a power of two keeps grid-aligned sizes exact
    def moved(dy, dx):
        shifted = rois.astype(np.float64) + [0.0, dx, dy, dx, dy]
        return case.with_arrays(rois=shifted.astype(rois.dtype))
    return [(moved(dy, dx), moved(2 * dy, 2 * dx)) for dy in (-step, 0.0, step)
            for dx in (-step, 0.0, step) if dy or dx]


def _examples(operator: str, thorough: bool, **extra) -> list[RoIPoolConfig]:
    """Fixed configurations of one operator; the first is kink-free float64."""
    configs = [
        RoIPoolConfig(operator=operator, **extra),
        RoIPoolConfig(operator=operator, batch=2, rois=6, roi_kind="mixed", pooled=(3, 2),
                      sampling_ratio=0, seed=1, **extra),
        RoIPoolConfig(operator=operator, roi_kind="integer", offset_kind="zero",
                      spatial_scale=1.0, with_mask=False, aligned=False, seed=2, **extra),
        RoIPoolConfig(operator=operator, offset_kind="normal", dtype="float32", seed=3, **extra),
        RoIPoolConfig(operator=operator, rois=0, seed=4, **extra),
        RoIPoolConfig(operator=operator, roi_kind="outside", with_offset=False, seed=5, **extra),
    ]
    if thorough:
        configs += [RoIPoolConfig(operator=operator, batch=2, channels=4, height=9, width=8,
                                  rois=8, roi_kind=kind, pooled=(3, 3), sampling_ratio=ratio,
                                  offset_kind=offsets, dtype=dtype, seed=seed, **extra)
                    for seed, (kind, ratio, offsets, dtype) in enumerate(
                        [("partly_outside", 0, "normal", "float64"),
                         ("zero_size", 1, "kink_free", "float64"),
                         ("integer", 3, "zero", "float32"),
                         ("inside", 0, "kink_free", "float32")], start=6)]
    return configs


def roi_align_examples(thorough: bool = False) -> list[RoIPoolConfig]:
    return _examples("roi_align", thorough)


def ps_roi_align_examples(thorough: bool = False) -> list[RoIPoolConfig]:
    return _examples("ps_roi_align", thorough)


def deform_roi_align_examples(thorough: bool = False) -> list[RoIPoolConfig]:
    return _examples("deform_roi_align", thorough)


def deform_roi_pool_examples(thorough: bool = False) -> list[RoIPoolConfig]:
    return _examples("deform_roi_pool", thorough)


def deform_ps_roi_pool_examples(thorough: bool = False) -> list[RoIPoolConfig]:
    return _examples("deform_ps_roi_pool", thorough, classes=2, part_size=1)

"""Shapes, coordinates, argument checks and gradient records of LS-DFN and DFN.

Shared by the NumPy implementations in :mod:`refdyn.lsdfn_numpy` and
:mod:`refdyn.lsdfn_dfn_numpy` (and by any later GPU mirror), so that all of them accept
the same arguments, read the same pixels and reject bad input with the same messages.
Layout (docs/conventions.md section 5; LS-DFN is Wu et al., ECCV 2018):

    features            X      (N, C, H, W)
    kernels             W      (N, C', C, k, k, H, W)   Eq. 2's full position-specific kernels
    u                   U      (N, C', C, H, W)         Eq. 6's C x 1 x 1 part
    v                   V      (N, C', k*k, H, W)       Eq. 6's 1 x k x k part, tap t = j*k + i
    sample_attention    A_sam  (N, C'*s*s, H, W)        channel v*s*s + b*s + a   (Eq. 4)
    position_attention  A_pos  (N, C'*k*k, H, W)        channel v*k*k + j*k + i   (Eq. 4)
    full_attention      A      (N, C'*s*s*k*k, H, W)    channel (v*s*s + b*s + a)*k*k + j*k + i
    lsdfn_sample output        (N, s*s, C', H, W)       sample b*s + a             (Eq. 2)
    lsdfn output               (N, C', H, W)                                       (Eq. 5)

(a, b) index the samples (a along x, b along y, as in the paper's x^ = x + a gamma,
y^ = y + b gamma); (j, i) the taps (j along y, i along x).  Where the pixels lie:

    sample (a, b) of output (y, x) is centred on (y^, x^) = (y + o_s(b), x + o_s(a))
    tap (j, i) of that sample reads X at (y^ + o_k(j), x^ + o_k(i))

with ``indexing="paper"``: o_s(a) = a gamma, o_k(j) = j (the printed Eq. 2: samples and taps
run from 0, so the samples sit below and to the right of (y, x)); ``indexing="centred"`` (the
default): o_s(a) = (a - floor((s-1)/2)) gamma, o_k(j) = j - floor((k-1)/2), both centred on
(y, x) (exactly for odd s and k).  Reads outside the map are zero; A_pos read at a centre
(y^, x^) outside the map is zero too, so its residual weight 1 + A_pos is 1 there.

Limits (checked by every backend before any work): samples <= MAX_SAMPLES and gamma <=
MAX_GAMMA, so that no kernel loops practically forever and no pixel offset wraps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .args import check_at_most, check_finite, check_float_array, check_positive_int, \
    check_shape, numpy_all_finite

#: The most samples per axis, s: each output takes s * s samples (4096 at most) and the
#: max-fusion backward compares every pair of an output's samples (s**4 = 2**24 at most); the
#: paper's large sampling fields take a few samples per axis at a wide stride gamma.
MAX_SAMPLES = 64
#: The largest sample stride: a C int, as every stride and dilation; the farthest sample then
#: lies (s - 1) gamma < 2**37 pixels away, far from wrapping a 64-bit index.
MAX_GAMMA = 2 ** 31 - 1

KERNEL_FORMS = ("described", "printed")
ATTENTIONS = ("factorized", "full", None)
FUSES = ("sum", "max")
INDEXINGS = ("centred", "paper")


def _check_choice(value, name: str, choices) -> None:
    if not any(value is choice or value == choice for choice in choices):
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


@dataclass(frozen=True)
class LSDFNGeometry:
    """Every size and option of one LS-DFN call."""

    batch: int
    channels: int          # C
    out_channels: int      # C'
    height: int
    width: int
    kernel_size: int       # k
    samples: int           # s (s * s samples)
    gamma: int             # sample stride
    indexing: str
    dtype: np.dtype

    @property
    def taps(self) -> int:
        return self.kernel_size * self.kernel_size

    @property
    def sample_count(self) -> int:
        return self.samples * self.samples

    @property
    def centre_tap(self) -> int:
        """Eq. 6's centre j = i = floor((k - 1) / 2), as the tap index j*k + i."""
        centre = (self.kernel_size - 1) // 2
        return centre * self.kernel_size + centre

    def sample_offset(self, a: int) -> int:
        """o_s(a): where sample a lies relative to the output position (Eq. 2's a gamma)."""
        origin = (self.samples - 1) // 2 if self.indexing == "centred" else 0
        return (a - origin) * self.gamma

    def tap_offset(self, j: int) -> int:
        """o_k(j): where tap j lies relative to its sample's centre (Eq. 2's + j)."""
        origin = (self.kernel_size - 1) // 2 if self.indexing == "centred" else 0
        return j - origin

    @property
    def reach(self) -> int:
        """The largest |offset| of a read from its output position: the zero padding needed."""
        ends = [self.sample_offset(a) + self.tap_offset(j) for a in (0, self.samples - 1)
                for j in (0, self.kernel_size - 1)]
        return max(abs(end) for end in ends)

    def reads(self):
        """Every (sample b*s + a, tap j*k + i, (o_s(b), o_s(a)), (dy, dx)) of one output:
        the sample's centre offset and the read's offset from the output position."""
        for b in range(self.samples):
            for a in range(self.samples):
                centre = (self.sample_offset(b), self.sample_offset(a))
                for j in range(self.kernel_size):
                    for i in range(self.kernel_size):
                        yield (b * self.samples + a, j * self.kernel_size + i, centre,
                               (centre[0] + self.tap_offset(j), centre[1] + self.tap_offset(i)))

    @property
    def sample_output_shape(self) -> tuple[int, ...]:
        return (self.batch, self.sample_count, self.out_channels, self.height, self.width)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.batch, self.out_channels, self.height, self.width)


def _pad_widths(geo: LSDFNGeometry) -> tuple[int, int]:
    """Zero padding of the rows and of the columns: the reach of the farthest read, but at most
    the map's extent on that axis (a read that far away is a zero, as any farther one is, so a
    huge gamma costs no memory)."""
    return min(geo.reach, geo.height), min(geo.reach, geo.width)


def pad_by_reach(geo: LSDFNGeometry, array):
    """Zero-pad the last two axes of ``array`` for every read (:func:`_pad_widths`)."""
    pad_h, pad_w = _pad_widths(geo)
    return np.pad(array, [(0, 0)] * (array.ndim - 2) + [(pad_h, pad_h), (pad_w, pad_w)])


def read_window(geo: LSDFNGeometry, dy: int, dx: int):
    """The index of a :func:`pad_by_reach` array holding, at every output (y, x), the pixel
    (y + dy, x + dx), or a zero of the padding where that pixel lies outside the map (an offset
    beyond the padding is clamped to it: the window then lies in the padding entirely)."""
    pad_h, pad_w = _pad_widths(geo)
    top = pad_h + max(-pad_h, min(pad_h, dy))
    left = pad_w + max(-pad_w, min(pad_w, dx))
    return Ellipsis, slice(top, top + geo.height), slice(left, left + geo.width)


@dataclass
class LSDFNSampleGrads:
    """Gradients through ``lsdfn_sample`` (Eq. 2), each with its input's shape and dtype."""

    grad_features: object
    grad_kernels: object


@dataclass
class LSDFNGrads:
    """Gradients through ``lsdfn`` (Eq. 4-7); an attention input that was not given has None."""

    grad_features: object
    grad_u: object
    grad_v: object
    grad_sample_attention: Optional[object]
    grad_position_attention: Optional[object]
    grad_full_attention: Optional[object]


@dataclass
class DFNGrads:
    """Gradients through ``dfn``."""

    grad_features: object
    grad_filters: object


def _check_features(features) -> tuple[np.dtype, tuple[int, int, int, int]]:
    dtype = check_float_array(features, "features", 4)
    batch, channels, height, width = (int(size) for size in features.shape)
    if channels < 1 or height < 1 or width < 1:
        raise ValueError("features must have shape (N, C, H, W) with C, H, W >= 1, "
                         f"got {tuple(features.shape)}")
    return dtype, (batch, channels, height, width)


def _check_sampling(samples, gamma, kernel_size, indexing):
    """samples in [1, MAX_SAMPLES], gamma in [1, MAX_GAMMA], kernel_size >= 1, a known indexing.

    The limits keep every kernel finite and its 64-bit pixel offsets far from wrapping: without
    attention arrays no input's shape bounds s, and each output loops over s * s samples."""
    samples = check_at_most(check_positive_int(samples, "samples"), "samples", MAX_SAMPLES,
                            "samples per axis, MAX_SAMPLES")
    gamma = check_at_most(check_positive_int(gamma, "gamma"), "gamma", MAX_GAMMA,
                          "the sample stride, MAX_GAMMA")
    kernel_size = check_positive_int(kernel_size, "kernel_size")
    _check_choice(indexing, "indexing", INDEXINGS)
    return samples, gamma, kernel_size


def check_lsdfn_sample_args(features, kernels, samples, gamma, kernel_size, indexing="centred",
                            all_finite: Callable = numpy_all_finite) -> LSDFNGeometry:
    """Validate the arguments of ``lsdfn_sample`` and return the call's geometry."""
    samples, gamma, kernel_size = _check_sampling(samples, gamma, kernel_size, indexing)
    dtype, (batch, channels, height, width) = _check_features(features)
    check_float_array(kernels, "kernels", 7, dtype)
    out_channels = int(kernels.shape[1])
    if out_channels < 1:
        raise ValueError("kernels must have at least one output channel (C' >= 1)")
    check_shape(kernels, "kernels", (batch, out_channels, channels, kernel_size, kernel_size,
                                     height, width), "(N, C', C, k, k, H, W)")
    check_finite(kernels, "kernels", all_finite)
    return LSDFNGeometry(batch, channels, out_channels, height, width, kernel_size, samples,
                         gamma, indexing, dtype)


def check_kernel_parts(u, v, kernel_size, residual, kernel_form, dtype=None,
                       all_finite: Callable = numpy_all_finite):
    """Validate Eq. 6's U and V (and the options that shape the kernels); returns
    (N, C', C, H, W) read from u."""
    kernel_size = check_positive_int(kernel_size, "kernel_size")
    if not isinstance(residual, (bool, np.bool_)):
        raise TypeError(f"residual must be a bool, got {residual!r}")
    _check_choice(kernel_form, "kernel_form", KERNEL_FORMS)
    dtype = check_float_array(u, "u", 5, dtype)
    batch, out_channels, channels, height, width = (int(size) for size in u.shape)
    if min(out_channels, channels, height, width) < 1:
        raise ValueError(f"u must have shape (N, C', C, H, W) with C', C, H, W >= 1, "
                         f"got {tuple(u.shape)}")
    check_float_array(v, "v", 5, dtype)
    check_shape(v, "v", (batch, out_channels, kernel_size * kernel_size, height, width),
                "(N, C', k*k, H, W)")
    check_finite(u, "u", all_finite)
    check_finite(v, "v", all_finite)
    return batch, out_channels, channels, height, width


def check_lsdfn_args(features, u, v, sample_attention, position_attention, full_attention,
                     samples, gamma, kernel_size, residual, attention, fuse, indexing,
                     kernel_form, all_finite: Callable = numpy_all_finite) -> LSDFNGeometry:
    """Validate the arguments of ``lsdfn`` and return the call's geometry: C' from u's shape;
    the attention arrays given must be exactly those ``attention`` uses."""
    samples, gamma, kernel_size = _check_sampling(samples, gamma, kernel_size, indexing)
    _check_choice(attention, "attention", ATTENTIONS)
    _check_choice(fuse, "fuse", FUSES)
    dtype, (batch, channels, height, width) = _check_features(features)
    out_channels = int(u.shape[1]) if len(getattr(u, "shape", ())) == 5 else 0
    check_kernel_parts(u, v, kernel_size, residual, kernel_form, dtype, all_finite)
    check_shape(u, "u", (batch, out_channels, channels, height, width), "(N, C', C, H, W)")
    wanted = {"factorized": ("sample_attention", "position_attention"),
              "full": ("full_attention",), None: ()}[attention]
    given = {"sample_attention": sample_attention, "position_attention": position_attention,
             "full_attention": full_attention}
    per = {"sample_attention": (samples * samples, "C' * s * s"),
           "position_attention": (kernel_size * kernel_size, "C' * k * k"),
           "full_attention": (samples * samples * kernel_size * kernel_size, "C' * s * s * k * k")}
    for name, array in given.items():
        if (array is not None) != (name in wanted):
            raise ValueError(f"attention={attention!r} {'needs' if name in wanted else 'takes no'} "
                             f"{name}")
        if array is not None:
            check_float_array(array, name, 4, dtype)
            check_shape(array, name, (batch, out_channels * per[name][0], height, width),
                        f"(N, {per[name][1]}, H, W) with C' = {out_channels}")
            check_finite(array, name, all_finite)
    return LSDFNGeometry(batch, channels, out_channels, height, width, kernel_size, samples,
                         gamma, indexing, dtype)


def check_dfn_args(features, filters, kernel_size, softmax,
                   all_finite: Callable = numpy_all_finite) -> tuple[LSDFNGeometry, bool]:
    """Validate the arguments of ``dfn``; returns the geometry (one sample, centred) and whether
    each channel has its own filters (filters (N, C*k*k, H, W)) or all share them (N, k*k, H, W)."""
    kernel_size = check_positive_int(kernel_size, "kernel_size")
    if not isinstance(softmax, (bool, np.bool_)):
        raise TypeError(f"softmax must be a bool, got {softmax!r}")
    dtype, (batch, channels, height, width) = _check_features(features)
    check_float_array(filters, "filters", 4, dtype)
    taps = kernel_size * kernel_size
    per_channel = int(filters.shape[1]) != taps
    check_shape(filters, "filters", (batch, channels * taps if per_channel else taps, height,
                                     width),
                "(N, k*k, H, W) or (N, C*k*k, H, W)" if per_channel else "(N, k*k, H, W)")
    check_finite(filters, "filters", all_finite)
    return LSDFNGeometry(batch, channels, channels, height, width, kernel_size, 1, 1,
                         "centred", dtype), per_channel



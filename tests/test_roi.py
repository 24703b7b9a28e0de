"""Properties of the RoI pooling family beyond the generic registry checks: equalities between
the operators, the global average, the boundary, skip and size rules at their exact edges,
empty RoI lists, the mimic loss, and argument validation."""

import numpy as np
import pytest
from hypothesis import given

from refdyn.bilinear_numpy import make_stencil, sample_point, sample_point_grad
from refdyn.mimic_loss_numpy import mimic_loss, mimic_loss_backward
from refdyn.roi_align_numpy import deform_roi_align, deform_roi_align_backward, \
    modulated_deform_roi_pool, ps_roi_align, ps_roi_align_backward, ps_roi_align_literal, \
    roi_align, roi_align_backward
from refdyn.roi_args import round_half_away
from refdyn.roi_pool_numpy import deform_ps_roi_pool, deform_ps_roi_pool_backward, \
    deform_ps_roi_pool_literal, deform_roi_pool, deform_roi_pool_backward, \
    deform_roi_pool_literal, ps_roi_pool, ps_roi_pool_backward, roi_pool, roi_pool_backward
from refdyn.testing.roi_cases import make_case
from refdyn.testing.strategies import deform_ps_roi_pool_configs, deform_roi_align_configs, \
    deform_roi_pool_configs, ps_roi_align_configs

RNG = np.random.default_rng(7)
IMAGE = RNG.standard_normal((2, 3, 5, 6))


def rois(*rows):
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


# --- equalities between operators ---------------------------------------------------------------

@given(deform_roi_pool_configs(dtypes=("float64",)))
def test_deform_roi_pool_with_zero_offsets_is_roi_pool(config):
    case = make_case(config)
    a = case.arrays
    zero = np.zeros((len(a["rois"]), 2) + case.params["output_size"])
    plain = roi_pool(a["input"], a["rois"], **{k: case.params[k] for k in ("output_size", "spatial_scale")})
    np.testing.assert_allclose(deform_roi_pool(a["input"], a["rois"], zero, **case.params), plain,
                               rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(deform_roi_pool_literal(a["input"], a["rois"], zero, **case.params),
                               plain, rtol=1e-13, atol=1e-13)
    go = case.grad_output
    np.testing.assert_allclose(
        deform_roi_pool_backward(go, a["input"], a["rois"], zero, **case.params).grad_input,
        roi_pool_backward(go, a["input"], a["rois"], case.params["output_size"],
                          case.params["spatial_scale"]).grad_input, rtol=1e-13, atol=1e-13)


@given(deform_ps_roi_pool_configs(dtypes=("float64",)))
def test_deform_ps_roi_pool_with_zero_offsets_is_ps_roi_pool(config):
    case = make_case(config)
    a, p = case.arrays, dict(case.params)
    offset = a["offset"] if a["offset"] is not None else np.zeros((len(a["rois"]), 2, 1, 1))
    plain_params = {k: p[k] for k in ("spatial_scale", "output_dim", "group_size", "pooled_size",
                                      "sample_per_part")}
    expected = ps_roi_pool(a["input"], a["rois"], **plain_params)
    np.testing.assert_allclose(deform_ps_roi_pool_literal(
        a["input"], a["rois"], np.zeros_like(offset), **{**p, "part_size": offset.shape[-1]}),
        expected, rtol=1e-13, atol=1e-13)
    # no_trans ignores the offsets and returns a zero offset gradient
    np.testing.assert_allclose(deform_ps_roi_pool(
        a["input"], a["rois"], offset, **{**p, "part_size": offset.shape[-1], "no_trans": True}),
        expected, rtol=1e-13, atol=1e-13)
    grads = deform_ps_roi_pool_backward(case.grad_output, a["input"], a["rois"], offset,
                                        **{**p, "part_size": offset.shape[-1], "no_trans": True})
    assert not np.any(grads.grad_offset)
    np.testing.assert_allclose(grads.grad_input, ps_roi_pool_backward(
        case.grad_output, a["input"], a["rois"], **plain_params).grad_input, rtol=1e-13, atol=1e-13)


@given(deform_roi_align_configs(dtypes=("float64",)))
def test_mmcv_deform_pool_with_zero_offsets_is_aligned_roi_align(config):
    case = make_case(config)
    a, p = case.arrays, case.params
    zero = np.zeros((len(a["rois"]), 2) + p["output_size"])
    expected = roi_align(a["input"], a["rois"], p["output_size"], p["spatial_scale"],
                         p["sampling_ratio"], aligned=True)
    np.testing.assert_allclose(deform_roi_align(a["input"], a["rois"], zero, None, **p), expected,
                               rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(
        deform_roi_align_backward(case.grad_output, a["input"], a["rois"], zero, None, **p).grad_input,
        roi_align_backward(case.grad_output, a["input"], a["rois"], p["output_size"],
                           p["spatial_scale"], p["sampling_ratio"], aligned=True).grad_input,
        rtol=1e-13, atol=1e-13)


@given(ps_roi_align_configs(dtypes=("float64",)))
def test_ps_roi_align_is_aligned_roi_align_read_on_each_bins_own_channel(config):
    """ps[r, c, i, j] = roi_align(aligned=True)[r, (c P_h + i) P_w + j, i, j]: both average the
    same samples of one channel; the backward is roi_align's with grad_output zero elsewhere."""
    case = make_case(config)
    a, p = case.arrays, case.params
    (p_h, p_w), out_channels = p["output_size"], case.grad_output.shape[1]
    full = roi_align(a["input"], a["rois"], aligned=True, **p)
    full = full.reshape((len(a["rois"]), out_channels, p_h, p_w, p_h, p_w))
    i, j = np.meshgrid(np.arange(p_h), np.arange(p_w), indexing="ij")
    np.testing.assert_allclose(ps_roi_align(a["input"], a["rois"], **p), full[:, :, i, j, i, j],
                               rtol=1e-13, atol=1e-13)
    spread = np.zeros(full.shape)
    spread[:, :, i, j, i, j] = case.grad_output
    spread = spread.reshape((len(a["rois"]), out_channels * p_h * p_w, p_h, p_w))
    np.testing.assert_allclose(
        ps_roi_align_backward(case.grad_output, a["input"], a["rois"], **p).grad_input,
        roi_align_backward(spread, a["input"], a["rois"], aligned=True, **p).grad_input,
        rtol=1e-13, atol=1e-13)


def test_ps_roi_align_with_one_bin_is_aligned_roi_align():
    boxes = rois([0, 0.3, -0.7, 4.2, 3.9], [1, -2, 1, 9, 2.5], [0, 2.3, 1.7, 2.3, 1.7])
    for ratio in (0, 2):
        np.testing.assert_array_equal(ps_roi_align(IMAGE, boxes, 1, 0.5, ratio),
                                      roi_align(IMAGE, boxes, 1, 0.5, ratio, aligned=True))


@pytest.mark.parametrize("implementation", [ps_roi_align, ps_roi_align_literal])
@pytest.mark.parametrize("ratio", [0, 2])
def test_ps_roi_align_hand_computed(implementation, ratio):
    """Channel k = 10 k + x + 100 y is affine, so a bin's average is its value at the mean sample
    point.  RoI x 0.5..4.5, y 0.5..2.5 becomes (-0.5 shift) x 0..4, y 0..2: 2 x 2 bins of 1 x 2
    pixels, mean sample (i + 1/2, 2 j + 1) (the adaptive grid is 1 x 2, the fixed one 2 x 2)."""
    y, x = np.mgrid[0:3, 0:5].astype(np.float64)
    image = np.stack([10 * k + x + 100 * y for k in range(8)])[None]     # C_out = 2, P = 2 x 2
    out = implementation(image, rois([0, 0.5, 0.5, 4.5, 2.5]), 2, 1.0, ratio)
    c, i, j = np.meshgrid(range(2), range(2), range(2), indexing="ij")
    np.testing.assert_allclose(out[0], 10 * ((c * 2 + i) * 2 + j) + (2 * j + 1) + 100 * (i + 0.5),
                               rtol=1e-14)


def test_ps_roi_align_zero_size_and_empty_rois():
    image = IMAGE[:, :2]                                  # C_out = 1 with 1 x 2 bins
    zero_size = rois([0, 2.3, 1.7, 2.3, 1.7])
    assert not np.any(ps_roi_align(image, zero_size, (1, 2)))  # adaptive: no samples, 0 (not NaN)
    np.testing.assert_allclose(ps_roi_align(image, zero_size, (1, 2), sampling_ratio=1)[0, 0, 0],
                               [sample_point(IMAGE[0, k], 1.2, 1.8, "roi_align") for k in range(2)])
    assert ps_roi_align(image, rois(), (1, 2)).shape == (0, 1, 1, 2)
    assert not np.any(ps_roi_align_backward(np.zeros((0, 1, 1, 2)), image, rois(), (1, 2)).grad_input)


@given(deform_roi_align_configs(dtypes=("float64",)))
def test_mask_of_ones_turns_modulated_into_deformable(config):
    case = make_case(config)
    a, p = case.arrays, case.params
    ones = np.ones((len(a["rois"]), 1) + p["output_size"])
    np.testing.assert_allclose(modulated_deform_roi_pool(a["input"], a["rois"], a["offset"], ones, **p),
                               deform_roi_align(a["input"], a["rois"], a["offset"], None, **p),
                               rtol=1e-13, atol=1e-13)
    with_ones = deform_roi_align_backward(case.grad_output, a["input"], a["rois"], a["offset"], ones, **p)
    without = deform_roi_align_backward(case.grad_output, a["input"], a["rois"], a["offset"], None, **p)
    np.testing.assert_allclose(with_ones.grad_input, without.grad_input, rtol=1e-13, atol=1e-13)
    if a["offset"] is not None:
        np.testing.assert_allclose(with_ones.grad_offset, without.grad_offset, rtol=1e-12, atol=1e-12)


def test_whole_map_roi_with_one_bin_is_the_global_average():
    _, _, height, width = IMAGE.shape
    whole = rois([1, 0, 0, width, height])
    mean = IMAGE[1].mean(axis=(1, 2))
    np.testing.assert_allclose(roi_pool(IMAGE, whole, 1)[0, :, 0, 0], mean, rtol=1e-13)
    # aligned, adaptive: one sample per pixel centre (-0.5 + a + 1/2 = a)
    np.testing.assert_allclose(roi_align(IMAGE, whole, 1, sampling_ratio=0, aligned=True)[0, :, 0, 0],
                               mean, rtol=1e-13)
    np.testing.assert_allclose(deform_roi_align(IMAGE, whole, np.zeros((1, 2, 1, 1)), None, 1)[0, :, 0, 0],
                               mean, rtol=1e-13)


# --- exact edges -----------------------------------------------------------------------------


def test_official_skip_lines_count_samples_on_them_and_skip_beyond():
    _, _, height, width = IMAGE.shape
    image = IMAGE[:1, :1]
    corner = rois([0, 0, 0, 0, 0])               # one sample at (-0.5, -0.5): on both skip lines
    params = dict(output_dim=1, group_size=1, pooled_size=1, sample_per_part=1, trans_std=0.5)
    assert deform_ps_roi_pool(image, corner, None, **params)[0, 0, 0, 0] == image[0, 0, 0, 0]
    beyond = np.array([[[[-1e-3]], [[0.0]]]])     # x moves to -0.5 - 5e-4: skipped, empty bin
    assert deform_ps_roi_pool(image, corner, beyond, **params)[0, 0, 0, 0] == 0.0
    # the far line: the sample at (H - 1.5, W - 1.5) moved by trans 2 * 0.5 * roi_w = 1 to W - 0.5
    far = rois([0, width - 1, height - 1, width - 1, height - 1])
    on_line = np.array([[[[2.0]], [[0.0]]]])
    expected = 0.5 * (image[0, 0, height - 2, width - 1] + image[0, 0, height - 1, width - 1])
    np.testing.assert_allclose(deform_ps_roi_pool(image, far, on_line, **params)[0, 0, 0, 0], expected)
    assert deform_ps_roi_pool(image, far, on_line + [[[[1e-3]], [[0]]]], **params)[0, 0, 0, 0] == 0.0
    # on the line the sample is clamped: its x derivative (right derivative of the clamp) is 0
    grads = deform_ps_roi_pool_backward(np.ones((1, 1, 1, 1)), image, far, on_line, **params)
    assert grads.grad_offset[0, 0, 0, 0] == 0.0 and grads.grad_offset[0, 1, 0, 0] != 0.0


@pytest.mark.parametrize("value,rounded", [(2.5, 3.0), (-0.5, -1.0), (1.5, 2.0), (-2.5, -3.0),
                                           (0.49999999999999994, 0.0), (3.4, 3.0), (-0.2, -0.0)])
def test_official_rounding_is_c_round_halves_away_from_zero(value, rounded):
    assert round_half_away(value) == rounded
    assert np.signbit(round_half_away(value)) == np.signbit(rounded)


@pytest.mark.parametrize("implementation", [deform_ps_roi_pool, deform_ps_roi_pool_literal])
def test_official_rois_at_half_pixels_are_the_c_rounded_rois(implementation):
    """Corners at k + 0.5 pool exactly like the integer RoI C's round gives (2.5 -> 3,
    -0.5 -> -1), not Python's half-to-even one (2.5 -> 2, -0.5 -> 0)."""
    image = np.random.default_rng(3).standard_normal((2, 4, 5, 6))
    params = dict(output_dim=1, group_size=2, pooled_size=2, sample_per_part=2)
    half = rois([0, -0.5, 0.5, 2.5, 1.5], [1, 1.5, -0.5, 3.5, 2.5])
    away = rois([0, -1, 1, 3, 2], [1, 2, -1, 4, 3])
    even = rois([0, 0, 0, 2, 2], [1, 2, 0, 4, 2])
    np.testing.assert_array_equal(implementation(image, half, None, **params),
                                  implementation(image, away, None, **params))
    assert not np.allclose(implementation(image, half, None, **params),
                           implementation(image, even, None, **params))


def test_roi_align_rule_reads_the_edge_at_minus_one_and_zero_beyond():
    image = IMAGE[:1, :1]
    at_edge = rois([0, 1.5, -1.5, 2.5, -0.5])    # not aligned, one sample per bin at (-1, 2)
    assert roi_align(image, at_edge, 1, sampling_ratio=1)[0, 0, 0, 0] == image[0, 0, 0, 2]
    beyond = rois([0, 1.5, -1.6, 2.5, -0.6])     # the sample at y = -1.1 reads 0
    assert roi_align(image, beyond, 1, sampling_ratio=1)[0, 0, 0, 0] == 0.0
    height, width = image.shape[-2:]
    points = np.array([-1.0, -0.5, 0.0, height - 1.0, height - 0.5, height, height + 0.01, -1.01])
    stencil = make_stencil(points, np.full_like(points, 2.25), height, width, "roi_align")
    vectorized = np.sum(image[0, 0].ravel()[stencil.index] * stencil.weight, axis=0)
    literal = [sample_point(image[0, 0], y, 2.25, "roi_align") for y in points]
    np.testing.assert_allclose(vectorized, literal, rtol=1e-15)
    np.testing.assert_allclose(np.sum(image[0, 0].ravel()[stencil.index] * stencil.dweight_dy, axis=0),
                               [sample_point_grad(image[0, 0], y, 2.25, "roi_align")[0] for y in points])
    assert literal[0] == sample_point(image[0, 0], 0.0, 2.25) and literal[-1] == literal[-2] == 0.0


def test_rois_outside_and_zero_size_rois_pool_to_clear_values():
    _, _, height, width = IMAGE.shape
    outside = rois([0, width + 3, 0, width + 5, 2], [1, -9, -9, -3, -3])
    offsets = np.zeros((2, 2, 2, 2))
    assert not np.any(roi_pool(IMAGE, outside, 2))
    assert not np.any(roi_align(IMAGE, outside, 2, sampling_ratio=2, aligned=True))
    assert not np.any(deform_roi_align(IMAGE, outside, offsets, None, 2))
    zero_size = rois([0, 2.3, 1.7, 2.3, 1.7])
    assert not np.any(roi_pool(IMAGE, zero_size, 2))             # Eq. 5: bins without points
    assert not np.any(roi_align(IMAGE, zero_size, 2, aligned=True))  # adaptive grid of 0 samples
    # fixed sampling: every sample at the RoI's point; not aligned, the size is clamped to 1
    np.testing.assert_allclose(roi_align(IMAGE, zero_size, 1, sampling_ratio=2, aligned=True)[0, :, 0, 0],
                               [sample_point(IMAGE[0, c], 1.2, 1.8, "roi_align") for c in range(3)])
    # official rules: rounded corners with the end pixel included, so a zero-size RoI spans 1 pixel
    official = deform_ps_roi_pool(IMAGE[:, :1], zero_size, None, pooled_size=2)
    assert np.all(np.isfinite(official)) and np.any(official)


def test_empty_roi_lists_give_empty_results_of_the_right_shape():
    none = rois()
    go = np.zeros((0, 3, 2, 2))
    assert roi_align(IMAGE, none, 2).shape == (0, 3, 2, 2)
    assert roi_pool(IMAGE, none, (2, 3)).shape == (0, 3, 2, 3)
    assert deform_ps_roi_pool(IMAGE[:, :1], none, None, pooled_size=2).shape == (0, 1, 2, 2)
    grads = deform_roi_align_backward(go, IMAGE, none, np.zeros((0, 2, 2, 2)), np.zeros((0, 1, 2, 2)), 2)
    assert grads.grad_input.shape == IMAGE.shape and not np.any(grads.grad_input)
    assert grads.grad_offset.shape == (0, 2, 2, 2) and grads.grad_mask.shape == (0, 1, 2, 2)
    assert deform_roi_pool_backward(go, IMAGE, none, None, 2).grad_input.shape == IMAGE.shape
    assert mimic_loss(np.zeros((0, 4)), np.zeros((0, 4))) == 0.0


# --- mimic loss ----------------------------------------------------------------------------------

def test_mimic_loss_values():
    f = RNG.standard_normal((3, 2, 2))
    np.testing.assert_allclose(mimic_loss(f, 2 * f), 0.0, atol=1e-14)
    np.testing.assert_allclose(mimic_loss(f, -f), 6.0, rtol=1e-14)
    with_zero = f.copy()
    with_zero[1] = 0
    assert mimic_loss(with_zero, f) == pytest.approx(1.0, abs=1e-14)   # zero vector: cosine 0
    grads = mimic_loss_backward(np.asarray(1.0), with_zero, f)
    assert np.all(np.isfinite(grads.grad_features)) and not np.any(grads.grad_target[1])
    # scale invariance: the gradient is orthogonal to the features themselves
    g = mimic_loss_backward(np.asarray(1.0), f, RNG.standard_normal(f.shape)).grad_features
    np.testing.assert_allclose(np.sum(g * f, axis=(1, 2)), 0.0, atol=1e-13)


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("call,error,match", [
    (lambda: roi_align(IMAGE, np.zeros((2, 4)), 2), ValueError, r"rois must have shape \(R, 5\)"),
    (lambda: roi_align(IMAGE, rois([2, 0, 0, 1, 1]), 2), ValueError, r"batch_index"),
    (lambda: roi_align(IMAGE, rois([0.5, 0, 0, 1, 1]), 2), ValueError, r"batch_index"),
    (lambda: roi_align(IMAGE, rois([0, np.nan, 0, 1, 1]), 2), ValueError, r"rois must be finite"),
    (lambda: roi_align(IMAGE, rois([0, 0, 0, 1, 1]).astype(np.float32), 2), TypeError, r"rois has dtype"),
    (lambda: roi_align(IMAGE.astype(np.int64), rois([0, 0, 0, 1, 1]), 2), TypeError, r"input must have dtype"),
    (lambda: roi_align(IMAGE[0], rois([0, 0, 0, 1, 1]), 2), ValueError, r"input must have 4 dimensions"),
    (lambda: roi_align(IMAGE, rois([0, 0, 0, 1, 1]), 0), ValueError, r"output_size must be >= 1"),
    (lambda: roi_align(IMAGE, rois([0, 0, 0, 1, 1]), 2, spatial_scale=0.0), ValueError, r"spatial_scale"),
    (lambda: roi_align(IMAGE, rois([0, 0, 0, 1, 1]), 2, sampling_ratio=1.5), TypeError, r"sampling_ratio"),
    (lambda: deform_roi_align(IMAGE, rois([0, 0, 0, 1, 1]), np.zeros((1, 2, 3, 3)), None, 2),
     ValueError, r"offset must have shape \(R, 2, P_h, P_w\) = \(1, 2, 2, 2\)"),
    (lambda: deform_roi_align(IMAGE, rois([0, 0, 0, 1, 1]), np.full((1, 2, 2, 2), np.inf), None, 2),
     ValueError, r"offset must be finite"),
    (lambda: deform_roi_align(IMAGE, rois([0, 0, 0, 1, 1]), None, np.zeros((1, 2, 2, 2)), 2),
     ValueError, r"mask must have shape \(R, 1, P_h, P_w\)"),
    (lambda: modulated_deform_roi_pool(IMAGE, rois([0, 0, 0, 1, 1]), None, None, 2), ValueError, r"mask must be given"),
    (lambda: deform_roi_pool(IMAGE, rois([0, 0, 0, 1, 1]), np.zeros((1, 2, 2, 2), np.float32), 2),
     TypeError, r"offset has dtype"),
    (lambda: deform_roi_pool(IMAGE, rois([0, 0, 0, 1, 1]), None, 2, gamma=np.nan), ValueError, r"gamma"),
    (lambda: deform_ps_roi_pool(IMAGE, rois([0, 0, 0, 1, 1]), None, output_dim=2, group_size=1),
     ValueError, r"output_dim \* group_size\*\*2 = 2 channels, got 3"),
    (lambda: deform_ps_roi_pool(IMAGE, rois([0, 0, 0, 1, 1]), np.zeros((1, 4, 7, 7)), output_dim=3),
     ValueError, r"classes dividing output_dim"),
    (lambda: deform_ps_roi_pool(IMAGE, rois([0, 0, 0, 1, 1]), None, output_dim=3, sample_per_part=0),
     ValueError, r"sample_per_part must be >= 1"),
    (lambda: ps_roi_align(IMAGE, rois([0, 0, 0, 1, 1]), 2), ValueError,
     r"input must have shape \(N, C_out \* P_h \* P_w, H, W\): a multiple of P_h \* P_w = 4 "
     r"channels, got \(2, 3, 5, 6\)"),
    (lambda: ps_roi_align_backward(np.zeros((1, 3, 1, 3)), IMAGE, rois([0, 0, 0, 1, 1]), (1, 3)),
     ValueError, r"grad_output must have shape \(R, C_out, P_h, P_w\) = \(1, 1, 1, 3\)"),
    (lambda: roi_align_backward(np.zeros((1, 3, 3, 3)), IMAGE, rois([0, 0, 0, 1, 1]), 2), ValueError,
     r"grad_output must have shape \(R, C_out, P_h, P_w\)"),
    (lambda: mimic_loss(np.zeros((2, 3)), np.zeros((2, 4))), ValueError, r"target must have shape"),
    (lambda: mimic_loss(np.zeros((2, 3)), np.zeros((2, 3)), eps=0.0), ValueError, r"eps"),
])
def test_bad_input_is_rejected_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- mmcv's DeformRoIPool offset-gradient rule (coord_grad="mmcv") ---------------------------

SLOPES = np.array([[1.0, 2.0, 4.0], [8.0, 16.0, 32.0]])       # v00 = 1, v01 = 2, v10 = 8, v11 = 16


@pytest.mark.parametrize("y,x,expected", [
    # inside: the ordinary bilinear slopes (both rules)
    (0.25, 0.5, (0.5 * 7 + 0.5 * 14, 0.75 * 1 + 0.25 * 8)),
    # -1 <= y < 0: mmcv clamps rows to (0, 1) but weights by y = -0.5: d/dy is the row slope,
    # d/dx extrapolates (1.5 of row 0's slope, -0.5 of row 1's)
    (-0.5, 0.5, (0.5 * 7 + 0.5 * 14, 1.5 * 1 - 0.5 * 8)),
    # y >= H - 1: both neighbours are row 1, both derivatives 0
    (1.5, 0.5, (0.0, 0.0)),
    # beyond -1: outside the roi_align rule, 0
    (-1.5, 0.5, (0.0, 0.0))])
def test_mmcv_roi_align_offset_gradient_rule(y, x, expected):
    """mmcv differentiates the bilinear weights at the unclamped sample (its
    bilinear_interpolate_gradient takes y by value and the caller weights with it)."""
    np.testing.assert_allclose(sample_point_grad(SLOPES, y, x, "roi_align", "mmcv"), expected)
    stencil = make_stencil(np.array([y]), np.array([x]), 2, 3, "roi_align", "mmcv")
    corners = SLOPES.ravel()[stencil.index[:, 0]]
    np.testing.assert_allclose([np.dot(corners, stencil.dweight_dy[:, 0]),
                                np.dot(corners, stencil.dweight_dx[:, 0])], expected)
    if y < 0:    # the derivative (coord_grad="torchvision") is 0 along the clamped axis
        assert sample_point_grad(SLOPES, y, x, "roi_align")[0] == 0.0


def test_deform_roi_align_mmcv_rule_differs_only_where_samples_are_clamped():
    image = RNG.standard_normal((1, 2, 4, 5))
    go = RNG.standard_normal((2, 2, 2, 2))
    offset = RNG.normal(0, 0.3, (2, 2, 2, 2))
    inside, across = rois([0, 1.2, 1.1, 3.3, 2.4]), rois([0, -1.6, -1.4, 2.2, 2.8])
    for box, differs in ((inside, False), (across, True)):
        grads = {rule: deform_roi_align_backward(go[:1], image, box, offset[:1], None, 2,
                                                 sampling_ratio=2, coord_grad=rule)
                 for rule in ("torchvision", "mmcv")}
        np.testing.assert_array_equal(grads["mmcv"].grad_input, grads["torchvision"].grad_input)
        assert differs != np.allclose(grads["mmcv"].grad_offset, grads["torchvision"].grad_offset)
    with pytest.raises(ValueError, match="coord_grad must be one of"):
        deform_roi_align_backward(go[:1], image, inside, offset[:1], None, 2, coord_grad="other")

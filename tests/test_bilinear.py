"""Bilinear sampling G (DCNv1 Eq. 3-4): scalar vs array versions, gradients, kinks, boundaries."""

import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from refdyn.bilinear_numpy import G, bilinear_sample, bilinear_sample_backward, \
    bilinear_sample_grad_coords, bilinear_sample_literal, \
    bilinear_sample_grad_image, dg_db, g, sample_point, sample_point_grad
from refdyn.finite_differences import kink_free_values

IMAGE = np.arange(1.0, 21.0).reshape(4, 5) ** 1.3          # distinct neighbour differences


def points(draw_margin=None):
    """A coordinate anywhere from far outside to inside the 4 x 5 image (optionally kink-free)."""
    base = st.one_of(st.floats(-3, 7, allow_nan=False), st.integers(-3, 7).map(float),
                     st.floats(-1e6, 1e6, allow_nan=False))
    if draw_margin is None:
        return base
    return st.tuples(st.integers(-3, 7), st.floats(draw_margin, 1 - draw_margin)).map(sum)


@pytest.mark.parametrize("a,b,expected", [(0, 0, 1), (0, 0.25, 0.75), (2, 1.5, 0.5), (0, 1, 0),
                                          (0, -3, 0)])
def test_g_is_the_triangle_kernel(a, b, expected):
    assert g(a, b) == expected


def test_g_right_derivative_at_its_three_kinks():
    assert dg_db(0, -1) == 1.0     # rising edge starts at b = a - 1
    assert dg_db(0, 0) == -1.0     # peak: the right side falls
    assert dg_db(0, 1) == 0.0      # flat to the right of a + 1
    assert dg_db(0, 0.5) == -1.0 and dg_db(0, -0.5) == 1.0 and dg_db(0, 2) == 0.0


@given(st.floats(0, 3, allow_nan=False), st.floats(0, 4, allow_nan=False))
def test_weights_of_the_four_neighbours_sum_to_one_inside(y, x):
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    total = sum(G((qy, qx), (y, x)) for qy in (y0, y0 + 1) for qx in (x0, x0 + 1))
    assert total == pytest.approx(1.0)


@pytest.mark.parametrize("boundary", ["zeros", "border"])
def test_integer_points_read_the_pixel(boundary):
    for qy in range(4):
        for qx in range(5):
            assert sample_point(IMAGE, qy, qx, boundary) == IMAGE[qy, qx]


@pytest.mark.parametrize("boundary", ["zeros", "border"])
@given(y=points(), x=points())
@example(y=-1.0, x=2.0)
@example(y=3.0, x=4.0)
@example(y=-0.5, x=4.5)
def test_array_version_equals_the_scalar_equations(boundary, y, x):
    value = bilinear_sample(IMAGE, np.array([y]), np.array([x]), boundary)[0]
    assert value == pytest.approx(sample_point(IMAGE, y, x, boundary), abs=1e-12)
    for rule in ("torchvision", "mmcv"):
        gy, gx = bilinear_sample_grad_coords(IMAGE, np.array([y]), np.array([x]), boundary, rule)
        expected = sample_point_grad(IMAGE, y, x, boundary, rule)
        assert (gy[0], gx[0]) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("boundary", ["zeros", "border"])
@given(y=points(draw_margin=0.01), x=points(draw_margin=0.01))
def test_coordinate_gradient_matches_finite_differences_away_from_kinks(boundary, y, x):
    eps = 1e-6
    fd_y = (sample_point(IMAGE, y + eps, x, boundary) - sample_point(IMAGE, y - eps, x, boundary)) / (2 * eps)
    fd_x = (sample_point(IMAGE, y, x + eps, boundary) - sample_point(IMAGE, y, x - eps, boundary)) / (2 * eps)
    assert sample_point_grad(IMAGE, y, x, boundary) == pytest.approx((fd_y, fd_x), abs=1e-6)


@pytest.mark.parametrize("boundary", ["zeros", "border"])
def test_image_gradient_is_the_adjoint_of_sampling(boundary):
    rng = np.random.default_rng(0)
    y = kink_free_values(rng, (3, 7), -2, 5)
    x = kink_free_values(rng, (3, 7), -2, 6)
    images = rng.standard_normal((2, 4, 5))
    grad_values = rng.standard_normal((2, 3, 7))
    lhs = np.sum(bilinear_sample(images, y, x, boundary) * grad_values)
    rhs = np.sum(images * bilinear_sample_grad_image(grad_values, y, x, images.shape, boundary))
    assert lhs == pytest.approx(rhs, rel=1e-12)


def test_right_derivative_at_integer_points_is_the_forward_difference():
    gy, gx = sample_point_grad(IMAGE, 1.0, 2.0)
    assert gy == pytest.approx(IMAGE[2, 2] - IMAGE[1, 2])
    assert gx == pytest.approx(IMAGE[1, 3] - IMAGE[1, 2])


def test_the_two_coord_grad_rules_differ_only_at_minus_one():
    vision = sample_point_grad(IMAGE, -1.0, 2.0, coord_grad="torchvision")
    mmcv = sample_point_grad(IMAGE, -1.0, 2.0, coord_grad="mmcv")
    assert vision == (pytest.approx(IMAGE[0, 2]), 0.0)
    assert mmcv == (0.0, 0.0)
    assert sample_point_grad(IMAGE, 2.0, -1.0, coord_grad="torchvision") == \
        (0.0, pytest.approx(IMAGE[2, 0]))
    for y, x in [(-0.5, 2.0), (3.0, 4.0), (4.0, 2.0), (-1.5, 2.0)]:
        assert sample_point_grad(IMAGE, y, x, coord_grad="torchvision") == \
            sample_point_grad(IMAGE, y, x, coord_grad="mmcv")


def test_border_clamps_and_has_no_coordinate_gradient_outside():
    assert sample_point(IMAGE, -7.5, 100.0, "border") == IMAGE[0, 4]
    assert sample_point_grad(IMAGE, -7.5, 100.0, "border") == (0.0, 0.0)
    assert sample_point(IMAGE, -0.5, 1.0, "zeros") == pytest.approx(0.5 * IMAGE[0, 1])
    assert sample_point(IMAGE, -0.5, 1.0, "border") == IMAGE[0, 1]


@given(y=st.floats(0, 3), x=st.floats(0, 4))
def test_border_and_zeros_agree_inside_the_image(y, x):
    assert sample_point(IMAGE, y, x, "border") == pytest.approx(sample_point(IMAGE, y, x, "zeros"))


def test_far_points_read_zero_without_overflow():
    values = bilinear_sample(IMAGE, np.array([1e300, -1e300, 2.0]), np.array([2.0, 2.0, -1e300]))
    np.testing.assert_array_equal(values, 0.0)


def test_unknown_rules_are_rejected():
    with pytest.raises(ValueError, match="boundary must be one of"):
        sample_point(IMAGE, 0.5, 0.5, "reflect")
    with pytest.raises(ValueError, match="coord_grad must be one of"):
        bilinear_sample_grad_coords(IMAGE, np.zeros(1), np.zeros(1), coord_grad="caffe")


def test_float32_stays_float32():
    y = np.array([0.5, 1.25], dtype=np.float32)
    assert bilinear_sample(IMAGE.astype(np.float32), y, y).dtype == np.float32


@pytest.mark.parametrize("make,error,message", [
    (lambda: (IMAGE[0], np.zeros(2), np.zeros(2)), ValueError, "image must be an array of shape"),
    (lambda: (IMAGE.astype(int), np.zeros(2), np.zeros(2)), TypeError, "image must have dtype"),
    (lambda: (IMAGE, np.zeros(2), np.zeros(3)), ValueError, r"x must have shape y.shape = \(2,\)"),
    (lambda: (IMAGE, np.zeros(2, np.float32), np.zeros(2)), TypeError, "y has dtype float32"),
    (lambda: (IMAGE, np.array([0.5, np.nan]), np.zeros(2)), ValueError, "y must be finite"),
    (lambda: (IMAGE, np.zeros(2), np.array([np.inf, 0])), ValueError, "x must be finite"),
    (lambda: (np.zeros((2, 0, 3)), np.zeros(2), np.zeros(2)), ValueError, "H >= 1 and W >= 1"),
])
def test_bad_sampling_arguments_raise_a_clear_error(make, error, message):
    image, y, x = make()
    for call in (lambda: bilinear_sample(image, y, x),
                 lambda: bilinear_sample_backward(np.zeros(image.shape[:-2] + y.shape), image, y, x),
                 lambda: bilinear_sample_literal(image, y, x)):
        with pytest.raises(error, match=message):
            call()


def test_backward_checks_grad_output_shape():
    with pytest.raises(ValueError, match="grad_output must have shape"):
        bilinear_sample_backward(np.zeros(3), IMAGE, np.zeros(2), np.zeros(2))

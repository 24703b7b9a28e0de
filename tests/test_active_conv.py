"""Active Convolution beyond the generic registry checks: its relation to deformable and dilated
convolution, the two boundary rules, the two gradient routes, the training helpers, bad input."""

import numpy as np
import pytest
from hypothesis import example, given

from refdyn import deform_conv2d, deform_conv2d_backward
from refdyn.active_conv_numpy import active_conv2d, active_conv2d_backward, \
    active_conv2d_backward_literal, active_conv2d_literal, centre_tap, \
    normalized_position_gradient, position_update, ring_positions
from refdyn.testing.active_conv_cases import ActiveConvConfig, make_case
from refdyn.testing.independent import plain_conv2d
from refdyn.testing.strategies import active_conv2d_configs

IMPLEMENTATIONS = {
    "literal": (active_conv2d_literal, active_conv2d_backward_literal),
    "vectorized": (active_conv2d, active_conv2d_backward),
}


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@given(config=active_conv2d_configs(dtypes=("float64",)))
def test_equals_deform_conv_with_positions_broadcast(name, config):
    """One position group: offset[n, 2k + d, i, j] = theta[k, d] everywhere; the position gradient
    is the sum over (n, i, j) of deform_conv2d's offset gradient."""
    forward, backward = IMPLEMENTATIONS[name]
    case = make_case(ActiveConvConfig(**{**vars(config), "position_groups": 1}))
    a = case.arrays
    out_h, out_w = (case.grad_output.shape[2], case.grad_output.shape[3])
    offset = np.broadcast_to(a["positions"].reshape(1, -1, 1, 1),
                             (a["input"].shape[0], a["positions"].size, out_h, out_w)).copy()
    deform_args = dict(input=a["input"], offset=offset, weight=a["weight"], bias=a["bias"],
                       stride=config.stride, padding=config.padding, boundary=config.boundary)
    tolerance = dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(forward(**case.forward_kwargs()), deform_conv2d(**deform_args),
                               **tolerance)
    grads = backward(case.grad_output, **case.backward_kwargs())
    expected = deform_conv2d_backward(case.grad_output, **deform_args, coord_grad=config.coord_grad)
    np.testing.assert_allclose(grads.grad_positions,
                               expected.grad_offset.sum(axis=(0, 2, 3)).reshape(-1, 2), **tolerance)
    np.testing.assert_allclose(grads.grad_input, expected.grad_input, **tolerance)
    np.testing.assert_allclose(grads.grad_weight, expected.grad_weight, **tolerance)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_regular_grid_scaled_by_d_is_a_dilated_convolution(name, dilation):
    """Taps moved to d (a - 1, b - 1) around the centre of a 3 x 3 kernel with padding p sample
    exactly where a convolution with dilation d and padding p + (d - 1) samples."""
    forward, _ = IMPLEMENTATIONS[name]
    case = make_case(ActiveConvConfig(batch=2, in_channels=2, out_channels=3, height=7, width=6,
                                      position_kind="zero"))
    a = case.arrays
    grid = np.array([(row - 1, col - 1) for row in range(3) for col in range(3)], dtype=float)
    positions = (dilation - 1) * grid
    expected = plain_conv2d(a["input"], a["weight"], a["bias"], padding=(dilation, dilation),
                            dilation=(dilation, dilation))
    np.testing.assert_allclose(forward(a["input"], positions, a["weight"], a["bias"], padding=1),
                               expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_border_and_zeros_agree_inside_and_differ_outside_as_documented(name):
    forward, _ = IMPLEMENTATIONS[name]
    case = make_case(ActiveConvConfig(batch=1, in_channels=2, out_channels=2, height=6, width=6,
                                      padding=(0, 0), position_kind="zero"))
    a = case.arrays
    # 3 x 3 valid windows with every tap pulled a quarter pixel towards the centre: all inside.
    inside = 0.25 * np.array([(1 - row, 1 - col) for row in range(3) for col in range(3)], float)
    np.testing.assert_allclose(forward(a["input"], inside, a["weight"], a["bias"], boundary="zeros"),
                               forward(a["input"], inside, a["weight"], a["bias"], boundary="border"),
                               rtol=1e-12, atol=1e-12)
    _, backward = IMPLEMENTATIONS[name]
    grad_output = np.ones((1, 2, 4, 4))
    grads_zeros = backward(grad_output, a["input"], inside, a["weight"], a["bias"], boundary="zeros")
    grads_border = backward(grad_output, a["input"], inside, a["weight"], a["bias"],
                            boundary="border")     # strictly inside (0, H-1): same gradients too
    for field in ("grad_input", "grad_positions", "grad_weight"):
        np.testing.assert_allclose(getattr(grads_zeros, field), getattr(grads_border, field),
                                   rtol=1e-12, atol=1e-12)
    zero = np.zeros((9, 2))
    border = forward(a["input"], zero, a["weight"], a["bias"], padding=2, boundary="border")
    edge_padded = np.pad(a["input"], ((0, 0), (0, 0), (2, 2), (2, 2)), mode="edge")
    np.testing.assert_allclose(border, plain_conv2d(edge_padded, a["weight"], a["bias"]),
                               rtol=1e-12, atol=1e-12)
    zeros = forward(a["input"], zero, a["weight"], a["bias"], padding=2, boundary="zeros")
    np.testing.assert_allclose(zeros, plain_conv2d(a["input"], a["weight"], a["bias"],
                                                   padding=(2, 2)), rtol=1e-12, atol=1e-12)
    assert not np.allclose(border, zeros)


@given(config=active_conv2d_configs(dtypes=("float64",)))
@example(config=ActiveConvConfig(position_kind="zero", coord_grad="torchvision"))
@example(config=ActiveConvConfig(position_kind="integer", boundary="border", position_groups=2))
def test_both_gradient_routes_agree(config):
    """dL/dcol * dcol/dtheta (the DCN code) and dL/dy * dy/dtheta (the Active Convolution paper)
    are one chain rule in two orders: the same numbers, kinks included."""
    case = make_case(config)
    by_columns = active_conv2d_backward_literal(case.grad_output, **case.backward_kwargs(),
                                                route="columns")
    by_output = active_conv2d_backward_literal(case.grad_output, **case.backward_kwargs(),
                                               route="output")
    np.testing.assert_allclose(by_columns.grad_positions, by_output.grad_positions,
                               rtol=1e-10, atol=1e-10)


def test_per_output_channel_positions_differ_per_channel():
    """P = C_out: each output channel samples its own positions (proposed in the Active
    Convolution technical note (Wang Hao, 2017))."""
    case = make_case(ActiveConvConfig(in_channels=2, out_channels=3, position_groups=3, seed=5))
    a = case.arrays
    out = active_conv2d(a["input"], a["positions"], a["weight"], a["bias"], padding=1)
    for o in range(3):
        single = active_conv2d(a["input"], a["positions"][o], a["weight"][o:o + 1],
                               a["bias"][o:o + 1], padding=1)
        np.testing.assert_allclose(out[:, o:o + 1], single, rtol=1e-12, atol=1e-12)


# --- training helpers --------------------------------------------------------------------------

def test_ring_start_puts_the_centre_still_and_the_others_on_the_unit_circle():
    positions = ring_positions(3, 3)
    grid = np.array([(row - 1, col - 1) for row in range(3) for col in range(3)], dtype=float)
    absolute = grid + positions
    centre = centre_tap(3, 3)
    assert centre == 4 and np.all(positions[centre] == 0)
    others = np.delete(absolute, centre, axis=0)
    np.testing.assert_allclose(np.hypot(others[:, 0], others[:, 1]), 1.0)
    angles = np.sort(np.arctan2(others[:, 0], others[:, 1]) % (2 * np.pi))
    np.testing.assert_allclose(np.diff(angles), 2 * np.pi / 8)
    for tap in (1, 3, 5, 7):                                           # axis taps keep their place
        assert np.all(positions[tap] == 0)


def test_normalized_gradient_has_unit_norm_per_synapse_and_keeps_zeros():
    grad = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    np.testing.assert_allclose(normalized_position_gradient(grad), [[0.6, 0.8], [0, 0], [0, -1]])


def test_position_update_factor_fixed_centre_and_warmup():
    positions = np.zeros((9, 2))
    grad = np.ones((9, 2))
    moved = position_update(positions, grad, 0.1, offset_lr_factor=0.05, fixed_taps=(4,))
    np.testing.assert_allclose(moved[0], -0.1 * 0.05 * np.ones(2) / np.sqrt(2))
    assert np.all(moved[4] == 0)
    raw = position_update(positions, 2 * grad, 0.1, normalize=False)
    np.testing.assert_allclose(raw, -0.2)
    held = position_update(positions, grad, 0.1, step=3, warmup_steps=5)
    assert np.all(held == positions) and held is not positions


# --- bad input ---------------------------------------------------------------------------------


def test_unknown_gradient_route_is_rejected():
    case = make_case(ActiveConvConfig())
    with pytest.raises(ValueError, match="route must be one of"):
        active_conv2d_backward_literal(case.grad_output, **case.backward_kwargs(), route="input")



"""refdyn.analysis: sampling locations, effective dilation, effective receptive fields,
effective sampling locations and error-bounded saliency regions (docs/conventions.md section 7)."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import refdyn
from refdyn.analysis import BIN_OPERATORS, OperatorLayer, composite_sampling_locations, \
    effective_bin_locations, effective_dilation, effective_receptive_field, \
    effective_sampling_locations, node_input_gradient, \
    saliency_region, sampling_layer, sampling_locations, square_window_priority


def deform_layer(offset, weight, **arguments):
    return OperatorLayer("deform_conv2d", dict(offset=offset, weight=weight, **arguments))


def random_stack(rng, size=7, mask=False):
    """Two 3 x 3 deformable layers, 2 -> 3 -> 2 channels, padding 1, kink-free offsets."""
    layers = []
    for c_in, c_out in ((2, 3), (3, 2)):
        offset = refdyn.finite_differences.kink_free_values(rng, (1, 18, size, size), -1.5, 1.5)
        extra = {"mask": rng.uniform(0.2, 1, (1, 9, size, size))} if mask else {}
        layers.append(deform_layer(offset, rng.standard_normal((c_out, c_in, 3, 3)), padding=1,
                                   **extra))
    return layers, rng.standard_normal((1, 2, size, size))


def stack_output(layers, image):
    for layer in layers:
        image = layer.forward(image)
    return image


# --- sampling locations and effective dilation ---------------------------------------------

@given(dilation=st.integers(1, 3), stride=st.integers(1, 2), padding=st.integers(0, 2),
       kernel=st.sampled_from([(3, 3), (2, 3), (3, 1)]))
def test_zero_offsets_give_the_regular_grid_and_dilation_exactly(dilation, stride, padding, kernel):
    kh, kw = kernel
    layer = deform_layer(np.zeros((1, 2 * kh * kw, 4, 5)), np.ones((1, 1, kh, kw)),
                         stride=stride, padding=padding, dilation=dilation)
    height = (4 - 1) * stride + dilation * (kh - 1) + 1 - 2 * padding
    width = (5 - 1) * stride + dilation * (kw - 1) + 1 - 2 * padding
    if height < 1 or width < 1:
        return
    locations = sampling_locations(sampling_layer(layer, (1, 1, height, width)))
    a, b = np.divmod(np.arange(kh * kw), kw)
    i, j = np.indices((4, 5))
    assert np.array_equal(locations[:, 0], i * stride - padding + a[:, None, None] * dilation)
    assert np.array_equal(locations[:, 1], j * stride - padding + b[:, None, None] * dilation)
    assert np.array_equal(effective_dilation(locations, kernel), np.full((4, 5), float(dilation)))


def test_a_constant_offset_moves_every_location_and_keeps_the_dilation():
    shift = np.array([0.25, -1.5])
    zero = sampling_locations(sampling_layer(deform_layer(np.zeros((1, 18, 5, 5)),
                                                          np.ones((1, 1, 3, 3)), padding=1),
                                             (1, 1, 5, 5)))
    offset = np.tile(shift, 9).reshape(1, 18, 1, 1) * np.ones((1, 18, 5, 5))
    moved = sampling_locations(sampling_layer(deform_layer(offset, np.ones((1, 1, 3, 3)),
                                                           padding=1), (1, 1, 5, 5)))
    assert np.allclose(moved - zero, shift[None, :, None, None])
    assert np.allclose(effective_dilation(moved, 3), 1.0)


def test_effective_dilation_is_the_mean_over_the_twelve_adjacent_pairs():
    # Scaling the 3 x 3 grid's columns by 2 and rows by 1: 6 horizontal pairs at 2, 6 vertical at 1.
    a, b = np.divmod(np.arange(9), 3)
    locations = np.stack([a * 1.0, b * 2.0], axis=1)
    assert effective_dilation(locations, 3) == pytest.approx(1.5)


def test_offset_groups_and_images_are_selected():
    offset = np.zeros((2, 36, 3, 3))
    offset[1, 18:] = 0.5                                         # image 1, offset group 1
    layer = deform_layer(offset, np.ones((1, 2, 3, 3)), padding=1)
    base = sampling_locations(sampling_layer(layer, (2, 2, 3, 3)))
    moved = sampling_locations(sampling_layer(layer, (2, 2, 3, 3), image=1, group=1))
    assert np.allclose(moved - base, 0.5)


def test_active_conv_positions_are_shared_by_every_output():
    positions = np.random.default_rng(0).uniform(-1, 1, (9, 2))
    layer = OperatorLayer("active_conv2d", dict(positions=positions,
                                                weight=np.ones((1, 1, 3, 3)), padding=1))
    locations = sampling_locations(sampling_layer(layer, (1, 1, 4, 4)))
    regular = sampling_locations(sampling_layer(deform_layer(np.zeros((1, 18, 4, 4)),
                                                             np.ones((1, 1, 3, 3)), padding=1),
                                                (1, 1, 4, 4)))
    assert np.allclose(locations - regular, positions[:, :, None, None])


def test_two_regular_layers_compose_to_the_5x5_window():
    layer = sampling_layer(deform_layer(np.zeros((1, 18, 9, 9)), np.ones((1, 1, 3, 3)),
                                        padding=1), (1, 1, 9, 9))
    levels = composite_sampling_locations([layer, layer], (4, 4))
    assert [len(level) for level in levels] == [9, 81]
    distinct = np.unique(levels[-1], axis=0)
    assert len(distinct) == (2 * 3 - 1) ** 2
    assert distinct.min() == 2 and distinct.max() == 6


def test_composite_locations_follow_the_lower_layer_offsets():
    # Top layer: zero offsets, so its taps land on integer outputs of the bottom layer, where
    # the bottom layer's own offsets apply exactly.
    rng = np.random.default_rng(1)
    bottom_offset = rng.uniform(-2, 2, (1, 18, 6, 6))
    bottom = sampling_layer(deform_layer(bottom_offset, np.ones((1, 1, 3, 3)), padding=1),
                            (1, 1, 6, 6))
    top = sampling_layer(deform_layer(np.zeros((1, 18, 6, 6)), np.ones((1, 1, 3, 3)),
                                      padding=1), (1, 1, 6, 6))
    levels = composite_sampling_locations([bottom, top], (2, 3))
    bottom_locations = sampling_locations(bottom)
    for index, (y, x) in enumerate(levels[0].astype(int)):
        assert np.allclose(levels[1][9 * index:9 * index + 9], bottom_locations[:, :, y, x])


def test_composite_locations_interpolate_offsets_between_outputs():
    offset = np.zeros((1, 2, 1, 2))
    offset[0, 1, 0, 1] = 1.0                      # dx = 1 at output (0, 1), 0 at output (0, 0)
    bottom = sampling_layer(deform_layer(offset, np.ones((1, 1, 1, 1))), (1, 1, 1, 2))
    top_offset = np.zeros((1, 2, 1, 2))
    top_offset[0, 1, 0, 0] = 0.25                 # output (0, 0) samples the bottom at x = 0.25
    top = sampling_layer(deform_layer(top_offset, np.ones((1, 1, 1, 1))), (1, 1, 1, 2))
    levels = composite_sampling_locations([bottom, top], (0, 0))
    assert np.allclose(levels[-1], [[0.0, 0.25 + 0.25]])


# --- effective receptive field --------------------------------------------------------------

def test_receptive_field_of_one_convolution_is_its_kernel_around_the_node():
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((1, 1, 3, 3))
    layer = deform_layer(np.zeros((1, 18, 7, 7)), weight, padding=1)
    grad = node_input_gradient([layer], rng.standard_normal((1, 1, 7, 7)), (0, 0, 3, 2))
    expected = np.zeros((7, 7))
    expected[2:5, 1:4] = weight[0, 0]             # a correlation: the kernel, not flipped
    assert np.allclose(grad[0, 0], expected)


@pytest.mark.parametrize("mask", [False, True])
def test_node_gradient_matches_perturbing_each_pixel(mask):
    rng = np.random.default_rng(3)
    layers, image = random_stack(rng, size=5, mask=mask)
    node = (0, 1, 2, 3)
    grad = node_input_gradient(layers, image, node)
    # The stack is linear in the image: the gradient is the response to each unit pixel.
    brute = np.zeros_like(image)
    for index in np.ndindex(*image.shape):
        unit = np.zeros_like(image)
        unit[index] = 1.0
        brute[index] = stack_output(layers, unit)[node]
    assert np.allclose(grad, brute, atol=1e-12)
    assert np.allclose(effective_receptive_field(layers, image, node), np.abs(brute[0]).sum(0))


def test_active_convolution_stacks_use_its_own_backward():
    rng = np.random.default_rng(4)
    layer = OperatorLayer("active_conv2d", dict(positions=rng.uniform(-1, 1, (9, 2)),
                                                weight=rng.standard_normal((1, 1, 3, 3)),
                                                padding=1))
    image = rng.standard_normal((1, 1, 5, 5))
    grad = node_input_gradient([layer, layer], image, (0, 0, 2, 2))
    brute = np.array([stack_output([layer, layer], np.eye(25)[k].reshape(1, 1, 5, 5))[0, 0, 2, 2]
                      for k in range(25)]).reshape(5, 5)
    assert np.allclose(grad[0, 0], brute, atol=1e-12)


# --- effective sampling locations ------------------------------------------------------------

def test_effective_sampling_locations_against_brute_force():
    rng = np.random.default_rng(5)
    layers, image = random_stack(rng, size=5, mask=True)
    node = (0, 0, 2, 1)
    effective = effective_sampling_locations(layers, image, node)
    offset, mask = layers[0].arguments["offset"], layers[0].arguments["mask"]
    # Points: the bottom layer's locations in the order (tap, row, column).
    locations = sampling_locations(sampling_layer(layers[0], image.shape))
    assert np.array_equal(effective.points, locations.transpose(0, 2, 3, 1).reshape(-1, 2))
    # Contributions: the top layer is linear, so removing one sample (mask 0) changes the node
    # by exactly its contribution, and the contributions add up to the node (no bias).
    value = stack_output(layers, image)[node]
    assert effective.contributions.sum() == pytest.approx(value)
    for k, i, j in [(0, 1, 1), (4, 2, 2), (8, 3, 0)]:
        removed = mask.copy()
        removed[0, k, i, j] = 0.0
        changed = stack_output([OperatorLayer("deform_conv2d", {**layers[0].arguments,
                                                                "mask": removed}), layers[1]],
                               image)[node]
        flat = np.ravel_multi_index((k, i, j), (9, 5, 5))
        assert value - changed == pytest.approx(effective.contributions[flat])
    # Location gradients: central differences of the node in one offset (kink-free offsets).
    eps = 1e-6
    for channel, i, j in [(0, 1, 1), (9, 2, 2), (17, 3, 0)]:
        plus, minus = offset.copy(), offset.copy()
        plus[0, channel, i, j] += eps
        minus[0, channel, i, j] -= eps
        numeric = (stack_output([deform_layer(plus, **_rest(layers[0])), layers[1]], image)[node]
                   - stack_output([deform_layer(minus, **_rest(layers[0])), layers[1]],
                                  image)[node]) / (2 * eps)
        flat = np.ravel_multi_index((channel // 2, i, j), (9, 5, 5))
        assert effective.location_gradients[flat, channel % 2] == pytest.approx(numeric, abs=1e-6)


def _rest(layer):
    return {name: value for name, value in layer.arguments.items() if name != "offset"}


def test_effective_sampling_locations_without_a_mask_use_unit_modulation():
    rng = np.random.default_rng(6)
    layers, image = random_stack(rng, size=4)
    effective = effective_sampling_locations(layers, image, (0, 1, 1, 2), layer_index=1)
    assert effective.contributions.sum() == pytest.approx(stack_output(layers, image)[0, 1, 1, 2])
    assert effective.points.shape == (9 * 16, 2)


# --- effective bin locations (deformable RoI pooling) ----------------------------------------

ROIS = np.array([[1, 1.3, 2.2, 9.7, 8.1], [0, 0.5, 0.5, 6.0, 5.0]])      # [n, x1, y1, x2, y2]
BIN_SCALE = 0.1 * np.array([8.1 - 2.2, 9.7 - 1.3])      # gamma (h, w) of RoI 0: pixels per unit


def roi_layer(operator, offset):
    return OperatorLayer(operator, dict(rois=ROIS, offset=offset, output_size=3, gamma=0.1))


@pytest.mark.parametrize("operator", sorted(BIN_OPERATORS))
def test_bin_location_gradients_match_finite_differences(operator):
    rng = np.random.default_rng(7)
    features = rng.standard_normal((2, 3, 12, 14))
    offset = rng.normal(0.0, 0.3, (2, 2, 3, 3))
    grad_pooled = rng.standard_normal((3, 3, 3))
    effective = effective_bin_locations(roi_layer(operator, offset), features, 0, grad_pooled)

    def node(moved):
        return float((roi_layer(operator, moved).forward(features)[0] * grad_pooled).sum())

    y_channel, x_channel = BIN_OPERATORS[operator][1]
    step = 1e-6                                                    # pixels
    for b in range(9):
        for axis, channel in enumerate((y_channel, x_channel)):
            plus, minus = offset.copy(), offset.copy()
            plus[0, channel, b // 3, b % 3] += step / BIN_SCALE[axis]
            minus[0, channel, b // 3, b % 3] -= step / BIN_SCALE[axis]
            expected = (node(plus) - node(minus)) / (2 * step)
            assert effective.location_gradients[b, axis] == pytest.approx(expected, abs=1e-7)
    assert effective.contributions.sum() == pytest.approx(node(offset))   # linear node


@pytest.mark.parametrize("operator", sorted(BIN_OPERATORS))
def test_bin_locations_move_with_their_offsets(operator):
    features = np.ones((2, 1, 12, 14))
    still = effective_bin_locations(roi_layer(operator, np.zeros((2, 2, 3, 3))), features, 0,
                                    np.ones((1, 3, 3)))
    offset = np.zeros((2, 2, 3, 3))
    y_channel, x_channel = BIN_OPERATORS[operator][1]
    offset[0, y_channel, 1, 2], offset[0, x_channel, 1, 2] = 0.5, -0.25
    moved = effective_bin_locations(roi_layer(operator, offset), features, 0, np.ones((1, 3, 3)))
    expected = still.points.copy()
    expected[5] += [0.5 * BIN_SCALE[0], -0.25 * BIN_SCALE[1]]
    np.testing.assert_allclose(moved.points, expected, rtol=0, atol=1e-12)


def test_roi_align_bins_are_centred_on_the_aligned_bin_grid():
    effective = effective_bin_locations(roi_layer("deform_roi_align", np.zeros((2, 2, 3, 3))),
                                        np.ones((2, 1, 12, 14)), 0, np.ones((1, 3, 3)))
    # mmcv's RoI frame: start x1 - 0.5, bin (i, j) centred at start + (i + 1/2) h / 3.
    rows = 2.2 - 0.5 + (np.arange(3) + 0.5) * (8.1 - 2.2) / 3
    columns = 1.3 - 0.5 + (np.arange(3) + 0.5) * (9.7 - 1.3) / 3
    expected = np.stack(np.meshgrid(rows, columns, indexing="ij"), axis=-1).reshape(-1, 2)
    np.testing.assert_allclose(effective.points, expected, rtol=0, atol=1e-12)


def test_effective_bin_locations_reject_bad_arguments_by_name():
    features = np.ones((2, 1, 12, 14))
    layer = roi_layer("deform_roi_pool", np.zeros((2, 2, 3, 3)))
    with pytest.raises(ValueError, match="layer.operator"):
        effective_bin_locations(OperatorLayer("roi_align", dict(rois=ROIS)), features, 0,
                                np.ones((1, 7, 7)))
    with pytest.raises(ValueError, match="offset"):
        effective_bin_locations(roi_layer("deform_roi_pool", None), features, 0,
                                np.ones((1, 3, 3)))
    with pytest.raises(ValueError, match="gamma"):
        effective_bin_locations(OperatorLayer("deform_roi_pool", dict(
            rois=ROIS, offset=np.zeros((2, 2, 3, 3)), output_size=3, gamma=0.0)), features, 0,
            np.ones((1, 3, 3)))
    with pytest.raises(ValueError, match="roi"):
        effective_bin_locations(layer, features, 2, np.ones((1, 3, 3)))
    with pytest.raises(ValueError, match="grad_pooled"):
        effective_bin_locations(layer, features, 0, np.ones((2, 3, 3)))


# --- error-bounded saliency region -----------------------------------------------------------

@given(top=st.integers(0, 5), left=st.integers(0, 5), size=st.integers(1, 4),
       direction=st.sampled_from(["grow", "shrink"]))
def test_saliency_region_of_a_window_response_is_that_window(top, left, size, direction):
    image = np.random.default_rng(top * 7 + left).uniform(1, 2, (1, 10, 10))
    window = (slice(top, top + size), slice(left, left + size))

    def response(x):              # depends on exactly the window; positive pixels, no cancellation
        return float(x[0][window].sum())

    centre = (top + (size - 1) // 2, left + (size - 1) // 2)
    rows = np.arange(10)[:, None]
    columns = np.arange(10)[None, :]
    inside = ((rows >= top) & (rows < top + size) & (columns >= left) & (columns < left + size))
    priority = np.where(inside, 1.0, square_window_priority((10, 10), centre) - 10)
    region = saliency_region(response, image, priority, error_bound=0.0, direction=direction)
    assert np.array_equal(region.mask, inside)
    assert region.relative_error == 0.0


def test_saliency_region_honours_the_error_bound_and_is_the_first_within_it():
    image = np.ones((1, 9, 9))
    weights = np.exp(-np.hypot(*np.indices((9, 9)) - 4.0))

    def response(x):
        return float((x[0] * weights).sum())

    priority = square_window_priority((9, 9), (4, 4))
    for bound in (0.5, 0.2, 0.05, 0.0):
        region = saliency_region(response, image, priority, error_bound=bound)
        assert region.relative_error <= bound
        radius = int(-priority[region.mask].min())
        if radius > 0:                        # the next smaller window is outside the bound
            smaller = response(np.where(priority >= -(radius - 1), image, 0.0))
            assert abs(smaller - region.full_response) > bound * region.full_response


def test_square_window_priority_gives_square_windows():
    priority = square_window_priority((7, 8), (2, 5))
    window = priority >= -1
    assert window.sum() == 9 and window[1:4, 4:7].all()


# --- bad input ------------------------------------------------------------------------------

def test_bad_arguments_are_rejected_by_name():
    layer = deform_layer(np.zeros((1, 18, 4, 4)), np.ones((1, 1, 3, 3)), padding=1)
    image = np.ones((1, 1, 4, 4))
    with pytest.raises(ValueError, match="operator"):
        OperatorLayer("no_such_operator")
    with pytest.raises(ValueError, match="layer.operator"):
        sampling_layer(OperatorLayer("ddf", {}), (1, 1, 4, 4))
    with pytest.raises(ValueError, match="offset"):
        sampling_layer(layer, (1, 1, 5, 5))                        # offset no longer fits
    with pytest.raises(ValueError, match="node"):
        node_input_gradient([layer], image, (0, 0, 4, 0))
    with pytest.raises(ValueError, match="node"):
        composite_sampling_locations([sampling_layer(layer, image.shape)], (1, 2, 3))
    with pytest.raises(ValueError, match="layer_index"):
        effective_sampling_locations([layer], image, (0, 0, 1, 1), layer_index=1)
    with pytest.raises(TypeError, match="layers"):
        effective_receptive_field([], image, (0, 0, 0, 0))
    with pytest.raises(ValueError, match="locations"):
        effective_dilation(np.zeros((8, 2)), 3)
    with pytest.raises(ValueError, match="kernel_size"):
        effective_dilation(np.zeros((1, 2)), 1)
    with pytest.raises(ValueError, match="error_bound"):
        saliency_region(lambda x: 1.0, image[0], np.zeros((4, 4)), error_bound=-0.1)
    with pytest.raises(ValueError, match="priority"):
        saliency_region(lambda x: 1.0, image[0], np.zeros((3, 4)))
    with pytest.raises(ValueError, match="direction"):
        saliency_region(lambda x: 1.0, image[0], np.zeros((4, 4)), direction="sideways")
    with pytest.raises(ValueError, match="centre"):
        square_window_priority((4, 4), (4, 0))

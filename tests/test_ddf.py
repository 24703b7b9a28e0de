"""Properties of DDF beyond the generic registry checks: the operator against independent
depth-wise computations, filter normalization, the branches, the block, DDF-Up, the cost
counter and the argument validation."""

import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from refdyn import ddf, filter_norm, filter_norm_backward
from refdyn.ddf_block import BranchParams, channel_branch, channel_branch_backward, ddf_block, \
    ddf_block_backward, ddf_up, ddf_up_backward, init_branch_params, pixel_shuffle, \
    pixel_unshuffle, spatial_branch, spatial_branch_backward
from refdyn.ddf_cost import conv2d_multiply_adds, conv2d_parameters, ddf_multiply_adds, \
    ddf_parameters, depthwise_conv2d_multiply_adds, dynamic_filter_multiply_adds
from refdyn.ddf_filter_norm_numpy import channel_filter_norm, channel_filter_norm_backward, \
    spatial_filter_norm, spatial_filter_norm_backward
from refdyn.finite_differences import gradcheck
from refdyn.registry import DDF
from refdyn.testing.ddf_cases import DDFConfig, make_case
from refdyn.testing.independent import plain_conv2d
from refdyn.testing.strategies import ddf_configs

BACKENDS = list(DDF.implementations)


# --- independent computations: refdyn.testing.independent's plain convolution -----------------

def depthwise_conv(features, channel_filter, dilation, stride):
    """Strided, dilated depth-wise cross-correlation with one k x k filter per sample and
    channel: ``plain_conv2d`` with one group per (sample, channel), padding r d, cropped from its
    ceil(H / s) rows to the H // s rows of DDF."""
    n, c, height, width = features.shape
    if n == 0:
        return np.zeros((0, c, height // stride, width // stride))
    k = channel_filter.shape[-1]
    reach = (k - 1) // 2 * dilation
    out = plain_conv2d(features.reshape(1, n * c, height, width),
                       channel_filter.reshape(n * c, 1, k, k), stride=(stride, stride),
                       padding=(reach, reach), dilation=(dilation, dilation))
    return out.reshape(n, c, *out.shape[2:])[:, :, :height // stride, :width // stride]


def tap_images(features, kernel_size, dilation, stride):
    """(k*k, N, C, H // s, W // s): the input pixel each tap reads for every output pixel, as the
    depth-wise convolution with a one-hot kernel."""
    n, c = features.shape[:2]
    images = []
    for t in range(kernel_size * kernel_size):
        one_hot = np.zeros((n, c, kernel_size, kernel_size))
        one_hot[:, :, t // kernel_size, t % kernel_size] = 1.0
        images.append(depthwise_conv(features, one_hot, dilation, stride))
    return np.stack(images)


def per_pixel_filter(features, spatial_filter, kernel_size, dilation, stride):
    """A spatial-only dynamic filter: pixel (ph, pw) of every channel of head h filtered by
    spatial_filter[n, h k^2 : (h + 1) k^2, ph, pw]."""
    n, c = features.shape[:2]
    taps = kernel_size * kernel_size
    head = spatial_filter.shape[1] // taps
    grouped = tap_images(features, kernel_size, dilation, stride).reshape(
        taps, n, head, c // head, *spatial_filter.shape[2:])
    filters = spatial_filter.reshape(n, head, taps, *spatial_filter.shape[2:])
    return np.einsum("tngchw,ngthw->ngchw", grouped, filters).reshape(
        n, c, *spatial_filter.shape[2:])


def box_sums(features, kernel_size):
    """Sums over the k x k box around every pixel (zeros outside), from an integral image."""
    r = (kernel_size - 1) // 2
    height, width = features.shape[2:]
    integral = np.zeros(features.shape[:2] + (height + 1, width + 1))
    integral[:, :, 1:, 1:] = features.cumsum(axis=2).cumsum(axis=3)
    top = np.clip(np.arange(height) - r, 0, height)
    bottom = np.clip(np.arange(height) + r + 1, 0, height)
    left = np.clip(np.arange(width) - r, 0, width)
    right = np.clip(np.arange(width) + r + 1, 0, width)
    return (integral[:, :, bottom[:, None], right] - integral[:, :, top[:, None], right]
            - integral[:, :, bottom[:, None], left] + integral[:, :, top[:, None], left])


def test_tap_images_read_the_documented_pixels():
    """The independent helper itself: tap (a, b) of output (1, 2) with stride 2, dilation 2 and a
    3 x 3 kernel reads (1 * 2 + (a - 1) * 2, 2 * 2 + (b - 1) * 2); row -1 is padding."""
    features = np.arange(1.0, 1 + 7 * 8).reshape(1, 1, 7, 8)
    images = tap_images(features, 3, 2, 2)
    assert images.shape == (9, 1, 1, 3, 4)                     # 7 // 2, 8 // 2
    for a in range(3):
        for b in range(3):
            assert images[3 * a + b, 0, 0, 1, 2] == features[0, 0, 2 * a, 2 + 2 * b]
    np.testing.assert_array_equal(tap_images(features, 3, 1, 1)[:3, 0, 0, 0], 0)


# --- the operator against independent computations -------------------------------------------

@given(ddf_configs(dtypes=("float64",), kernel_combines=("mul",)))
@example(DDFConfig(batch=2, channels=4, height=7, width=5, head=2, stride=2, dilation=2))
def test_channel_filter_of_ones_gives_a_spatial_only_dynamic_filter(config):
    case = make_case(config)
    a = case.arrays
    ones = np.ones_like(a["channel_filter"])
    expected = per_pixel_filter(a["features"], a["spatial_filter"], config.kernel_size,
                                config.dilation, config.stride)
    actual = ddf(a["features"], ones, a["spatial_filter"], **case.params)
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)


@given(ddf_configs(dtypes=("float64",), kernel_combines=("mul",)))
@example(DDFConfig(channels=3, height=8, width=7, kernel_size=5, stride=3, dilation=2, head=3))
def test_spatial_filter_of_ones_gives_a_strided_dilated_depthwise_convolution(config):
    case = make_case(config)
    a = case.arrays
    ones = np.ones_like(a["spatial_filter"])
    expected = depthwise_conv(a["features"], a["channel_filter"], config.dilation, config.stride)
    actual = ddf(a["features"], a["channel_filter"], ones, **case.params)
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)


@given(ddf_configs(dtypes=("float64",), kernel_combines=("add",)))
def test_add_with_a_zero_filter_leaves_the_other_one(config):
    """(D^sp + D^ch) with D^sp = 0 is the depth-wise convolution, with D^ch = 0 the per-pixel
    filter: the output is affine, not linear, in each filter."""
    case = make_case(config)
    a = case.arrays
    zero_spatial = np.zeros_like(a["spatial_filter"])
    zero_channel = np.zeros_like(a["channel_filter"])
    np.testing.assert_allclose(
        ddf(a["features"], a["channel_filter"], zero_spatial, **case.params),
        depthwise_conv(a["features"], a["channel_filter"], config.dilation, config.stride),
        rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        ddf(a["features"], zero_channel, a["spatial_filter"], **case.params),
        per_pixel_filter(a["features"], a["spatial_filter"], config.kernel_size,
                         config.dilation, config.stride),
        rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel_combine,expected_gain", [("mul", 0.5 * 3.0), ("add", 0.5 + 3.0)])
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_constant_filters_give_a_box_filter(kernel_combine, expected_gain, kernel_size):
    case = make_case(DDFConfig(batch=2, channels=3, height=6, width=7, kernel_size=kernel_size))
    features = case.arrays["features"]
    channel = np.full_like(case.arrays["channel_filter"], 0.5)
    spatial = np.full_like(case.arrays["spatial_filter"], 3.0)
    actual = ddf(features, channel, spatial, kernel_size, kernel_combine=kernel_combine)
    np.testing.assert_allclose(actual, expected_gain * box_sums(features, kernel_size),
                               rtol=1e-12, atol=1e-12)


@given(ddf_configs(dtypes=("float64",)))
def test_heads_filter_their_channel_groups_independently(config):
    """Head h of a multi-head call equals a one-head call on its C / head channels with its
    k^2 spatial-filter channels."""
    case = make_case(config)
    a = case.arrays
    out = ddf(**case.forward_kwargs())
    taps, per_head = config.kernel_size ** 2, config.channels // config.head
    for h in range(config.head):
        channels = slice(h * per_head, (h + 1) * per_head)
        alone = ddf(a["features"][:, channels], a["channel_filter"][:, channels],
                    a["spatial_filter"][:, h * taps:(h + 1) * taps], **case.params)
        np.testing.assert_allclose(out[:, channels], alone, rtol=1e-13, atol=1e-13)


@given(ddf_configs(dtypes=("float64",), kernel_combines=("mul",)), st.sampled_from([-2.0, 0.5]))
def test_mul_is_linear_in_each_filter(config, factor):
    """Homogeneous as well as additive (the generic adjoint test only checks affinity)."""
    case = make_case(config)
    a = case.arrays
    out = ddf(**case.forward_kwargs())
    for name in ("channel_filter", "spatial_filter"):
        scaled = ddf(**case.with_arrays(**{name: factor * a[name]}).forward_kwargs())
        np.testing.assert_allclose(scaled, factor * out, rtol=1e-12, atol=1e-12)


def test_output_size_drops_the_last_row_when_stride_does_not_divide():
    """H = 7, stride 2: a 'same'-padded strided convolution has ceil(7/2) = 4 rows, DDF 7 // 2 = 3,
    the first three of them."""
    case = make_case(DDFConfig(height=7, width=5, stride=2))
    a = case.arrays
    out = ddf(a["features"], a["channel_filter"], np.ones_like(a["spatial_filter"]), 3, stride=2)
    assert out.shape[2:] == (3, 2)
    full = depthwise_conv(a["features"], a["channel_filter"], 1, 1)[:, :, ::2, ::2]
    assert full.shape[2:] == (4, 3)
    np.testing.assert_allclose(out, full[:, :, :3, :2], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", BACKENDS)
def test_outputs_keep_the_input_dtype(name, dtype, load_backend):
    forward, backward = load_backend(DDF, name)
    case = make_case(DDFConfig(channels=4, head=2, stride=2, dtype=np.dtype(dtype).name))
    assert forward(**case.forward_kwargs()).dtype == dtype
    grads = backward(case.grad_output, **case.forward_kwargs())
    for field in ("grad_features", "grad_channel_filter", "grad_spatial_filter"):
        assert getattr(grads, field).dtype == dtype, field


# --- filter normalization ---------------------------------------------------------------------

@given(st.integers(2, 25), st.integers(1, 4), st.booleans(),
       st.sampled_from([0.3, 1.0, 2.5]), st.sampled_from([0.0, -1.5]), st.integers(0, 2**16))
def test_fn_gives_zero_mean_and_the_requested_spread(taps, filters, unbiased, alpha, beta, seed):
    raw = np.random.default_rng(seed).normal(3.0, 5.0, (filters, taps))
    out = filter_norm(raw, 1, alpha, beta, unbiased=unbiased, eps=0.0)
    np.testing.assert_allclose(out.mean(axis=1), beta, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=1, ddof=1 if unbiased else 0), alpha, rtol=1e-12)
    # the official eps is added to the standard deviation: the spread shrinks by std / (std + eps)
    official = filter_norm(raw, 1, alpha, beta, unbiased=unbiased)
    spread = raw.std(axis=1, ddof=1 if unbiased else 0, keepdims=True)
    np.testing.assert_allclose(official, (out - beta) * spread / (spread + 1e-10) + beta,
                               rtol=1e-12, atol=1e-12)


def test_fn_statistics_are_over_the_taps_only():
    """Each filter is normalized with its own mean and spread (axes given as a tuple)."""
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((2, 3, 3, 3))
    out = filter_norm(raw, (2, 3), unbiased=False, eps=0.0)
    for n in range(2):
        for c in range(3):
            one = raw[n, c]
            np.testing.assert_allclose(out[n, c], (one - one.mean()) / one.std(), rtol=1e-12)


@given(st.integers(0, 2**16), st.booleans(), st.sampled_from([1e-10, 0.5]))
def test_fn_gradient_matches_finite_differences_and_ignores_constant_shifts(seed, unbiased, eps):
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((2, 9, 3))
    alpha = rng.standard_normal((1, 9, 3))
    beta = rng.standard_normal(3)
    result = gradcheck(
        lambda filters, alpha, beta: filter_norm(filters, 1, alpha, beta, unbiased, eps),
        lambda g, filters, alpha, beta: filter_norm_backward(g, filters, 1, alpha, beta,
                                                             unbiased, eps),
        {"filters": raw, "alpha": alpha, "beta": beta}, seed=seed)
    assert result.ok
    grads = filter_norm_backward(rng.standard_normal(raw.shape), raw, 1, alpha, beta, unbiased,
                                 eps)
    # FN(D + t) = FN(D) for a constant t, so dL/dD is orthogonal to the all-ones direction.
    np.testing.assert_allclose(grads.grad_filters.sum(axis=1), 0, atol=1e-12)
    assert grads.grad_alpha.shape == alpha.shape and grads.grad_beta.shape == beta.shape


def test_fn_keeps_float32_with_numpy_scalar_parameters():
    raw = np.random.default_rng(3).standard_normal((2, 9)).astype(np.float32)
    out = filter_norm(raw, 1, np.sqrt(2.0) / 3, np.float64(0.5))
    assert out.dtype == np.float32
    grads = filter_norm_backward(np.ones_like(raw), raw, 1, np.sqrt(2.0) / 3)
    assert grads.grad_filters.dtype == np.float32 and grads.grad_alpha.shape == ()


def test_fn_of_a_constant_filter_is_beta_with_a_finite_gradient():
    constant = np.full((1, 9), 4.0)
    np.testing.assert_array_equal(filter_norm(constant, 1, 2.0, 0.25), 0.25)
    grad = filter_norm_backward(np.arange(9.0)[None], constant, 1).grad_filters
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, (np.arange(9.0) - 4.0)[None] / 1e-10)   # (g - mean g) / eps


@pytest.mark.parametrize("nonlinearity,gain", [("relu", np.sqrt(2.0)), ("linear", 1.0)])
def test_spatial_preset_normalizes_each_head_and_pixel_to_gain_over_k(nonlinearity, gain):
    raw = np.random.default_rng(1).normal(2.0, 3.0, (2, 2 * 9, 4, 5))      # 2 heads, k = 3
    out = spatial_filter_norm(raw, 3, nonlinearity).reshape(2, 2, 9, 4, 5)
    np.testing.assert_allclose(out.mean(axis=2), 0, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=2, ddof=1), gain / 3, rtol=1e-9)


def test_channel_preset_is_the_learned_scale_times_the_normalized_filter():
    rng = np.random.default_rng(2)
    raw, scale = rng.standard_normal((2, 4 * 9)), rng.standard_normal(4 * 9)
    out = channel_filter_norm(raw, scale, 3)
    assert out.shape == (2, 4, 3, 3)
    by_channel = raw.reshape(2, 4, 9)
    normalized = ((by_channel - by_channel.mean(axis=2, keepdims=True))
                  / by_channel.std(axis=2, ddof=1, keepdims=True))
    np.testing.assert_allclose(out.reshape(2, 4, 9), normalized * scale.reshape(4, 9), rtol=1e-9)


def test_presets_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    gradcheck(lambda raw: spatial_filter_norm(raw, 3),
              lambda g, raw: {"raw": spatial_filter_norm_backward(g, raw, 3)},
              {"raw": rng.standard_normal((2, 18, 2, 3))})

    def channel_backward(g, raw, scale):
        grad_raw, grad_scale = channel_filter_norm_backward(g, raw, scale, 3)
        return {"raw": grad_raw, "scale": grad_scale}

    gradcheck(lambda raw, scale: channel_filter_norm(raw, scale, 3), channel_backward,
              {"raw": rng.standard_normal((2, 27)), "scale": rng.standard_normal(27)})


# --- branches, block, DDF-Up ------------------------------------------------------------------

def branch_params(channels, kernel_size=3, head=1, guide_channels=None, seed=0,
                  nonlinearity="relu"):
    return init_branch_params(channels, kernel_size, head, guide_channels, se_ratio=0.5,
                              nonlinearity=nonlinearity, rng=np.random.default_rng(seed))


def test_branches_gradients_match_finite_differences():
    rng = np.random.default_rng(4)
    params = branch_params(4, head=2, guide_channels=3)
    guidance = rng.standard_normal((2, 3, 5, 7))
    features = rng.standard_normal((2, 4, 5, 7))

    def spatial_forward(guidance, spatial_weight, spatial_bias):
        p = BranchParams(**{**params.arrays(), "spatial_weight": spatial_weight,
                            "spatial_bias": spatial_bias})
        return spatial_branch(guidance, p, 3, stride=2)

    def spatial_backward(g, guidance, spatial_weight, spatial_bias):
        p = BranchParams(**{**params.arrays(), "spatial_weight": spatial_weight,
                            "spatial_bias": spatial_bias})
        grad_guidance, grad_weight, grad_bias = spatial_branch_backward(g, guidance, p, 3, 2)
        return {"guidance": grad_guidance, "spatial_weight": grad_weight,
                "spatial_bias": grad_bias}

    gradcheck(spatial_forward, spatial_backward,
              {"guidance": guidance, "spatial_weight": params.spatial_weight,
               "spatial_bias": params.spatial_bias})
    channel_names = ("squeeze_weight", "squeeze_bias", "excite_weight", "excite_bias",
                     "channel_scale")

    def channel_forward(features, **channel_params):
        return channel_branch(features, BranchParams(**{**params.arrays(), **channel_params}), 3)

    def channel_backward(g, features, **channel_params):
        grad_features, grads = channel_branch_backward(
            g, features, BranchParams(**{**params.arrays(), **channel_params}), 3)
        return {"features": grad_features, **grads}

    gradcheck(channel_forward, channel_backward,
              {"features": features, **{name: getattr(params, name) for name in channel_names}})


@pytest.mark.parametrize("kernel_combine", ["mul", "add"])
@pytest.mark.parametrize("head,stride,dilation,height", [(1, 1, 1, 5), (2, 2, 2, 7)])
def test_block_gradients_match_finite_differences(kernel_combine, head, stride, dilation,
                                                  height):
    features = np.random.default_rng(5).standard_normal((2, 4, height, 6))
    params = branch_params(4, head=head, seed=head)
    options = dict(kernel_size=3, dilation=dilation, stride=stride,
                   kernel_combine=kernel_combine)

    def backward(g, features, **arrays):
        grads = ddf_block_backward(g, features, BranchParams(**arrays), **options)
        return {"features": grads.grad_features, **grads.grad_params.arrays()}

    gradcheck(lambda features, **arrays: ddf_block(features, BranchParams(**arrays), **options),
              backward, {"features": features, **params.arrays()})


def test_block_is_the_operator_applied_to_the_branch_filters():
    features = np.random.default_rng(6).standard_normal((2, 4, 7, 6))
    params = branch_params(4, head=2)
    expected = ddf(features, channel_branch(features, params, 3),
                   spatial_branch(features, params, 3, stride=2), 3, stride=2)
    np.testing.assert_array_equal(ddf_block(features, params, 3, stride=2), expected)
    assert expected.shape == (2, 4, 3, 3)


def up_inputs(scale, guide_channels, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((2, 4, 3, 4))
    guidance = None if guide_channels is None else rng.standard_normal((2, guide_channels, 3, 4))
    branches = [branch_params(4, guide_channels=guide_channels, seed=seed + t,
                              nonlinearity="linear") for t in range(scale * scale)]
    return features, guidance, branches


def flat_branches(branches):
    return {f"{name}_{t}": value for t, params in enumerate(branches)
            for name, value in params.arrays().items()}


def unflat_branches(arrays, count):
    names = BranchParams.__dataclass_fields__
    return [BranchParams(**{name: arrays[f"{name}_{t}"] for name in names}) for t in range(count)]


@pytest.mark.parametrize("guide_channels", [3, None])
def test_ddf_up_gradients_match_finite_differences(guide_channels):
    scale = 2
    features, guidance, branches = up_inputs(scale, guide_channels)
    count = scale * scale

    def forward(features, guidance=None, **arrays):
        return ddf_up(features, guidance, scale, unflat_branches(arrays, count))

    def backward(g, features, guidance=None, **arrays):
        grads = ddf_up_backward(g, features, guidance, scale, unflat_branches(arrays, count))
        flat = {"features": grads.grad_features, **flat_branches(grads.grad_branches)}
        if guidance is None:
            assert grads.grad_guidance is None
        else:
            flat["guidance"] = grads.grad_guidance
        return flat

    inputs = {"features": features, **flat_branches(branches)}
    if guidance is not None:
        inputs["guidance"] = guidance
    gradcheck(forward, backward, inputs, max_entries=40)


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_ddf_up_term_t_fills_the_subpixels_of_its_offset(scale):
    """Term t = a * scale + b is a stride-1 DDF block whose output lands at (scale y + a,
    scale x + b); without guidance the spatial branches read the features."""
    features, _, branches = up_inputs(scale, None, seed=7)
    out = ddf_up(features, None, scale, branches)
    assert out.shape == (2, 4, 3 * scale, 4 * scale)
    for a in range(scale):
        for b in range(scale):
            block = ddf_block(features, branches[a * scale + b], 3, nonlinearity="linear")
            np.testing.assert_allclose(out[:, :, a::scale, b::scale], block, rtol=1e-13,
                                       atol=1e-13)


def test_ddf_up_guidance_drives_only_the_spatial_filters():
    features, guidance, branches = up_inputs(2, 3, seed=8)
    base = ddf_up(features, guidance, 2, branches)
    changed = ddf_up(features, guidance + np.random.default_rng(9).standard_normal(
        guidance.shape), 2, branches)
    assert not np.allclose(base, changed)
    for params in branches:                  # no spatial branch: guidance cannot matter
        params.spatial_weight[:] = 0.0
    constant_spatial = ddf_up(features, guidance, 2, branches)
    np.testing.assert_array_equal(constant_spatial, ddf_up(features, 2 * guidance, 2, branches))


def test_pixel_shuffle_places_term_a_b_at_offset_a_b_and_unshuffle_inverts_it():
    stacked = np.random.default_rng(10).standard_normal((1, 2, 9, 2, 3))
    image = pixel_shuffle(stacked, 3)
    for y in range(2):
        for x in range(3):
            for a in range(3):
                for b in range(3):
                    assert image[0, 1, 3 * y + a, 3 * x + b] == stacked[0, 1, 3 * a + b, y, x]
    np.testing.assert_array_equal(pixel_unshuffle(image, 3), stacked)


# --- cost ---------------------------------------------------------------------------------------

def test_convolution_counts_match_known_layer_sizes():
    # ResNet-50's first 3 x 3 bottleneck convolution: 64 -> 64 channels at 56 x 56.
    assert conv2d_multiply_adds(1, 64, 64, 56, 56, 3) == 56 * 56 * 64 * 64 * 9 == 115_605_504
    assert depthwise_conv2d_multiply_adds(1, 64, 56, 56, 3) == 115_605_504 // 64
    assert conv2d_parameters(64, 64, 3) == 36_864


def test_ddf_counts_by_hand():
    """N = 1, C = 10, 8 x 8, k = 3, stride 2, one head, hidden int(0.2 * 10) = 2."""
    cost = ddf_multiply_adds(1, 10, 8, 8, 3, stride=2)
    assert cost.operator == 16 * 10 * 9 * 2
    assert cost.spatial_branch == 16 * 9 * 10 + 2 * 16 * 9
    assert cost.channel_branch == (10 * 2 + 2 * 90) + 10 + 3 * 90
    assert ddf_multiply_adds(1, 10, 8, 8, 3, 2, kernel_combine="add").operator == 16 * 10 * 9


@pytest.mark.parametrize("channels,size,stride", [(64, 56, 1), (128, 56, 2), (256, 28, 2),
                                                  (512, 14, 2), (512, 7, 1)])
def test_ddf_costs_like_a_depthwise_convolution_not_a_standard_one(channels, size, stride):
    """The paper's claim on ResNet-50's 3 x 3 layers: DDF (operator and both branches) stays
    within a small constant factor of a depth-wise convolution of the same size, while a
    standard convolution costs C times as much and a full dynamic filter far more."""
    out = size // stride
    depthwise = depthwise_conv2d_multiply_adds(1, channels, out, out, 3)
    standard = conv2d_multiply_adds(1, channels, channels, out, out, 3)
    ddf_cost = ddf_multiply_adds(1, channels, size, size, 3, stride).total
    assert standard == channels * depthwise
    assert depthwise < ddf_cost < 6 * depthwise
    assert ddf_cost < standard / 10
    assert dynamic_filter_multiply_adds(1, channels, channels, out, out, 3) > standard


def test_ddf_parameter_count_matches_the_branch_arrays_and_the_paper_claim():
    params = init_branch_params(256, 3, head=2, rng=np.random.default_rng(0))
    assert ddf_parameters(256, 3, head=2) == sum(a.size for a in params.arrays().values())
    # paper: with sigma = 0.2, k = 3, C = 256 the DDF block has fewer parameters than a
    # standard 3 x 3 convolution
    assert ddf_parameters(256, 3) < conv2d_parameters(256, 256, 3)


# --- argument validation ------------------------------------------------------------------------


BAD_FN_ARGUMENTS = {
    "axis out of range": (ValueError, "axis_of_taps must be an axis", dict(axis_of_taps=3)),
    "repeated axis": (ValueError, "axis_of_taps repeats an axis", dict(axis_of_taps=(1, -2))),
    "one tap unbiased": (ValueError, "at least 2 taps", dict(axis_of_taps=0)),
    "alpha shape": (ValueError, "alpha of shape \\(4,\\) does not broadcast",
                    dict(alpha=np.ones(4))),
    "beta dtype": (TypeError, "beta has dtype float32", dict(beta=np.zeros(3, np.float32))),
    "alpha not a number": (TypeError, "alpha must be a number or an array", dict(alpha="1")),
    "negative eps": (ValueError, "eps must be a number >= 0", dict(eps=-1e-10)),
    "nan alpha": (ValueError, "alpha must be finite", dict(alpha=float("nan"))),
    "nan filters": (ValueError, "filters must be finite",
                    dict(filters=np.full((1, 9, 3), np.nan))),
    "integer filters": (TypeError, "filters must have dtype float32 or float64",
                        dict(filters=np.ones((1, 9, 3), dtype=int))),
}


@pytest.mark.parametrize("problem", BAD_FN_ARGUMENTS)
def test_bad_filter_norm_arguments_raise_a_clear_error(problem):
    error, message, changes = BAD_FN_ARGUMENTS[problem]
    arguments = {"filters": np.random.default_rng(0).standard_normal((1, 9, 3)),
                 "axis_of_taps": 1, **changes}
    with pytest.raises(error, match=message):
        filter_norm(**arguments)
    with pytest.raises(error, match=message):
        filter_norm_backward(np.zeros((1, 9, 3)), **arguments)


def test_bad_block_arguments_raise_a_clear_error():
    features = np.zeros((1, 4, 5, 5))
    params = branch_params(4)
    with pytest.raises(ValueError, match="int\\(se_ratio \\* channels\\) >= 1"):
        init_branch_params(4, 3)                                   # int(0.2 * 4) = 0
    with pytest.raises(ValueError, match="spatial_weight must have shape .* k \\* k = 25"):
        ddf_block(features, params, kernel_size=5)
    with pytest.raises(ValueError, match="excite_weight must have shape"):
        ddf_block(features, BranchParams(**{**params.arrays(),
                                            "excite_weight": params.excite_weight[:, :1]}))
    with pytest.raises(ValueError, match="squeeze_weight must have shape"):
        ddf_block(features, BranchParams(**{**params.arrays(),
                                            "squeeze_weight": params.squeeze_weight[:, :3]}))
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        ddf_block(features, params, nonlinearity="tanh")
    with pytest.raises(ValueError, match="stride must be >= 1"):
        ddf_block(features, params, stride=0)
    with pytest.raises(ValueError, match="ddf_up needs scale\\^2 = 4 branch pairs"):
        ddf_up(features, None, 2, [params])
    with pytest.raises(ValueError, match="guidance must have shape \\(N, C_guide, H, W\\)"):
        ddf_up(features, np.zeros((1, 4, 4, 5)), 1, [params])
    with pytest.raises(ValueError, match="spatial_weight must have shape .*\\(9, 3\\)"):
        ddf_up(features, np.zeros((1, 3, 5, 5)), 1, [params])


@pytest.mark.parametrize("dtype,scales", [(np.float64, (1e-300, 1e-150, 1e150, 1e300)),
                                          (np.float32, (1e-30, 1e-15, 1e15, 1e30))])
def test_filter_norm_is_scale_invariant_up_to_overflow_of_its_result(dtype, scales):
    """FN(s D^) = FN(D^) and dL/dD^ scales by 1/s (eps = 0, the paper's formula), for s far
    beyond where the filters' squares or sums overflow or underflow; with the official eps a
    huge constant filter still gives 0."""
    rng = np.random.default_rng(1)
    filters = rng.standard_normal((2, 9, 3, 3)).astype(dtype)
    grad_output = rng.standard_normal(filters.shape).astype(dtype)
    expected = filter_norm(filters, 1, eps=0.0)
    expected_grad = filter_norm_backward(grad_output, filters, 1, eps=0.0).grad_filters
    rtol = 64 * np.finfo(dtype).eps
    for scale in scales:
        scaled = (filters * dtype(scale)).astype(dtype)
        np.testing.assert_allclose(filter_norm(scaled, 1, eps=0.0), expected, rtol=rtol,
                                   atol=rtol, err_msg=f"scale {scale}")
        grad = filter_norm_backward(grad_output, scaled, 1, eps=0.0).grad_filters
        np.testing.assert_allclose(grad * dtype(scale), expected_grad, rtol=rtol, atol=rtol,
                                   err_msg=f"gradient, scale {scale}")
    constant = np.full((1, 9, 1, 1), scales[-1], dtype=dtype)
    assert not filter_norm(constant, 1).any()

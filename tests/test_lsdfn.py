"""Properties of LS-DFN (Wu et al., ECCV 2018) and DFN beyond the generic registry checks: the paper's
special cases against independent computations, the kernel forms, the two indexings, the
attention factorization, max fusion, the DFN reduction, the block and the argument checks."""

import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from refdyn import dfn, dfn_backward, lsdfn, lsdfn_backward, lsdfn_kernels, lsdfn_sample, \
    lsdfn_sample_backward
from refdyn.finite_differences import adjoint_residual, gradcheck
from refdyn.lsdfn_numpy import lsdfn_kernels_backward
from refdyn.lsdfn_block import LSDFNBlockParams, branch_channels, init_block_params, \
    lsdfn_block, lsdfn_block_backward
from refdyn.registry import DFN, LSDFN
from refdyn.testing.independent import plain_conv2d
from refdyn.testing.lsdfn_cases import DFNConfig, LSDFNConfig, make_dfn_case, make_lsdfn_case
from refdyn.testing.strategies import lsdfn_configs

BACKENDS = list(LSDFN.implementations)


def options(case):
    return dict(case.params)


def read(image, y, x):
    """image[..., y, x], zero outside the map (the documented zero padding)."""
    height, width = image.shape[-2:]
    return image[..., y, x] if 0 <= y < height and 0 <= x < width else 0 * image[..., 0, 0]


def origins(config):
    """(sample origin, tap origin) of the documented indexings: 0 for "paper", the centre
    floor((n - 1) / 2) for "centred"."""
    if config.indexing == "paper":
        return 0, 0
    return (config.samples - 1) // 2, (config.kernel_size - 1) // 2


# --- the paper's special cases --------------------------------------------------------------

@given(lsdfn_configs(dtypes=("float64",), fuses=("sum",)))
@example(LSDFNConfig(samples=3, gamma=2, indexing="paper", kernel_form="printed", height=5))
def test_zero_kernels_with_residual_average_the_sampled_positions(config):
    """U = V = 0, residual on, zero attention: out^v[y, x] = sum over the samples of the channel
    mean of X at the centre tap's pixel (y + o_s(b) + o_k(c), x + o_s(a) + o_k(c)), for both
    kernel forms (the paper's "approximately averages features")."""
    case = make_lsdfn_case(config)
    zero = {name: None if value is None else np.zeros_like(value)
            for name, value in case.arrays.items() if name != "features"}
    features = case.arrays["features"]
    params = {**options(case), "residual": True}
    sample_origin, tap_origin = origins(config)
    centre = (config.kernel_size - 1) // 2 - tap_origin
    expected = np.zeros((config.batch, config.out_channels, config.height, config.width))
    for y, x in np.ndindex(config.height, config.width):
        for b, a in np.ndindex(config.samples, config.samples):
            pixel = read(features, y + (b - sample_origin) * config.gamma + centre,
                         x + (a - sample_origin) * config.gamma + centre)
            expected[:, :, y, x] += pixel.mean(axis=1)[:, None]
    for form in ("described", "printed"):
        out = lsdfn(features, **zero, **{**params, "kernel_form": form})
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@given(lsdfn_configs(dtypes=("float64",), attentions=("factorized",)))
def test_factorized_attention_is_eq3_with_the_outer_product(config):
    """Eq. 4 equals Eq. 3 with the outer product
    1 + A^{v,a,b}_t[y, x] = (1 + A_sam^v[a,b,y,x])(1 + A_pos^v[y^,x^,t])."""
    case = make_lsdfn_case(config)
    a = case.arrays
    s2, taps = config.samples ** 2, config.kernel_size ** 2
    sample_origin, _ = origins(config)
    grid = (config.batch, config.out_channels)
    sam = a["sample_attention"].reshape(*grid, s2, config.height, config.width)
    pos = a["position_attention"].reshape(*grid, taps, config.height, config.width)
    full = np.zeros((config.batch, config.out_channels, s2, taps, config.height, config.width))
    for y, x, b, sa in np.ndindex(config.height, config.width, config.samples, config.samples):
        centre_pos = read(pos, y + (b - sample_origin) * config.gamma,
                          x + (sa - sample_origin) * config.gamma)
        full[:, :, b * config.samples + sa, :, y, x] = (
            (1 + sam[:, :, b * config.samples + sa, None, y, x]) * (1 + centre_pos) - 1)
    factorized = lsdfn(**case.forward_kwargs())
    full = full.reshape(config.batch, config.out_channels * s2 * taps, config.height,
                        config.width)
    as_full = lsdfn(a["features"], a["u"], a["v"], full_attention=full,
                    **{**options(case), "attention": "full"})
    np.testing.assert_allclose(factorized, as_full, rtol=1e-11, atol=1e-11)


@given(lsdfn_configs(dtypes=("float64",), attentions=(None,)))
def test_eq6_kernels_fed_to_eq2_give_the_factorized_path(config):
    """lsdfn_sample with the full kernels of lsdfn_kernels, summed (Eq. 5) or max-pooled over
    the samples, equals lsdfn, which never builds them."""
    case = make_lsdfn_case(config)
    a = case.arrays
    kernels = lsdfn_kernels(a["u"], a["v"], config.kernel_size, config.residual,
                            config.kernel_form)
    samples = lsdfn_sample(a["features"], kernels, config.samples, config.gamma,
                           config.kernel_size, config.indexing)
    fused = samples.sum(axis=1) if config.fuse == "sum" else samples.max(axis=1)
    np.testing.assert_allclose(lsdfn(**case.forward_kwargs()), fused, rtol=1e-11, atol=1e-11)


def test_parameter_counts_of_eq6_and_eq4():
    """Eq. 6: C'(C + k^2) numbers per position instead of C' C k^2; Eq. 4: (s^2 + k^2) C'
    attention weights instead of s^2 k^2 C' (Eq. 3)."""
    config = LSDFNConfig(channels=5, out_channels=3, samples=3, kernel_size=3, height=2, width=2)
    case = make_lsdfn_case(config)
    a = case.arrays
    per_position = lambda *arrays: sum(array[0, ..., 0, 0].size for array in arrays)  # noqa: E731
    assert per_position(a["u"], a["v"]) == 3 * (5 + 9)
    kernels = lsdfn_kernels(a["u"], a["v"], 3)
    assert kernels.shape == (1, 3, 5, 3, 3, 2, 2) and per_position(kernels) == 3 * 5 * 9
    assert per_position(a["sample_attention"], a["position_attention"]) == (9 + 9) * 3
    full = make_lsdfn_case(LSDFNConfig(channels=5, out_channels=3, samples=3, attention="full"))
    assert per_position(full.arrays["full_attention"]) == 9 * 9 * 3
    assert branch_channels(5, 3, 3, 3) == {"feature": 5, "kernel": 3 * (5 + 9), "sample": 27,
                                           "position": 27}


@pytest.mark.parametrize("indexing,extent", [("centred", range(-3, 4)), ("paper", range(0, 7))])
def test_effective_receptive_field_of_s3_gamma2_covers_the_predicted_extent(indexing, extent):
    """One output's gradient with respect to the input is nonzero exactly on the predicted
    (s - 1) gamma + k = 7 pixels per axis: offsets -3..3 centred, 0..6 as printed."""
    case = make_lsdfn_case(LSDFNConfig(channels=2, out_channels=1, height=15, width=15,
                                       samples=3, gamma=2, indexing=indexing))
    grad_output = np.zeros_like(case.grad_output)
    grad_output[0, 0, 7, 7] = 1.0
    grad = lsdfn_backward(grad_output, **case.forward_kwargs()).grad_features
    support = np.abs(grad).sum(axis=(0, 1)) > 1e-12
    predicted = np.zeros_like(support)
    predicted[np.ix_([7 + d for d in extent], [7 + d for d in extent])] = True
    np.testing.assert_array_equal(support, predicted)


# --- kernel forms and indexings -----------------------------------------------------------------

@given(lsdfn_configs(dtypes=("float64",)))
def test_kernel_forms_differ_only_off_the_centre_by_v_minus_u(config):
    """Described minus printed kernels: V^v_t - U^{v,u} at every tap but the centre, 0 there;
    both give the same output when U = V = 0."""
    case = make_lsdfn_case(config)
    a = case.arrays
    k = config.kernel_size
    described = lsdfn_kernels(a["u"], a["v"], k, config.residual, "described")
    printed = lsdfn_kernels(a["u"], a["v"], k, config.residual, "printed")
    v = a["v"].reshape(config.batch, config.out_channels, 1, k, k, config.height, config.width)
    expected = v - a["u"][:, :, :, None, None]
    centre = (k - 1) // 2
    expected[:, :, :, centre, centre] = 0
    np.testing.assert_allclose(described - printed, expected, rtol=1e-12, atol=1e-12)
    zero = case.with_arrays(u=np.zeros_like(a["u"]), v=np.zeros_like(a["v"]))
    outputs = [lsdfn(**{**zero.forward_kwargs(), "kernel_form": form})
               for form in ("described", "printed")]
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-12, atol=1e-12)


@given(lsdfn_configs(dtypes=("float64",), attentions=("factorized",)))
@example(LSDFNConfig(samples=3, gamma=2, kernel_size=3, height=3, width=2))
def test_paper_indexing_is_centred_indexing_moved_by_the_origins(config):
    """The printed equations read d = floor((s-1)/2) gamma + floor((k-1)/2) pixels further down
    and right than the centred ones: on a map d pixels larger, with the features at (0, 0), the
    per-position kernels and A_sam moved by d and A_pos by floor((k-1)/2), the centred output
    moved by d is the paper's output."""
    case = make_lsdfn_case(config)
    tap_origin = (config.kernel_size - 1) // 2
    moved = (config.samples - 1) // 2 * config.gamma + tap_origin
    offsets = {"features": 0, "u": moved, "v": moved, "sample_attention": moved,
               "position_attention": tap_origin}
    embedded = {}
    for name, offset in offsets.items():
        array = case.arrays[name]
        embedded[name] = np.zeros(array.shape[:-2] + (config.height + moved,
                                                      config.width + moved))
        embedded[name][..., offset:offset + config.height, offset:offset + config.width] = array
    paper = lsdfn(**{**case.forward_kwargs(), "indexing": "paper"})
    centred = lsdfn(**{**case.forward_kwargs(), **embedded, "indexing": "centred"})
    np.testing.assert_allclose(paper, centred[..., moved:, moved:], rtol=1e-12, atol=1e-12)


# --- fusion and linearity -------------------------------------------------------------------

@given(lsdfn_configs(dtypes=("float64",), attentions=(None,), fuses=("max",)))
def test_max_fusion_sends_the_gradient_to_the_picked_sample_only(config):
    case = make_lsdfn_case(config)
    a = case.arrays
    kernels = lsdfn_kernels(a["u"], a["v"], config.kernel_size, config.residual,
                            config.kernel_form)
    eq2 = (kernels, config.samples, config.gamma, config.kernel_size, config.indexing)
    samples = lsdfn_sample(a["features"], *eq2)
    one_hot = samples == samples.max(axis=1, keepdims=True)
    expected = lsdfn_sample_backward(case.grad_output[:, None] * one_hot, a["features"], *eq2)
    grads = lsdfn_backward(case.grad_output, **case.forward_kwargs())
    np.testing.assert_allclose(grads.grad_features, expected.grad_features, atol=1e-11)
    grad_u, grad_v = lsdfn_kernels_backward(expected.grad_kernels, a["u"], a["v"],
                                            config.kernel_size, config.residual,
                                            config.kernel_form)
    np.testing.assert_allclose(grads.grad_u, grad_u, atol=1e-11)
    np.testing.assert_allclose(grads.grad_v, grad_v, atol=1e-11)


@pytest.mark.parametrize("name", BACKENDS)
@given(config=lsdfn_configs(dtypes=("float64",), fuses=("sum",), max_extent=4))
def test_sum_fusion_is_affine_in_every_input(name, config):
    """The dot-product test for the inputs the registry cannot list (max fusion is not affine
    in them), on every backend this machine can run."""
    implementation = LSDFN.implementation(name)
    if implementation.problem():
        pytest.skip(f"{name} backend not available: {implementation.problem()}")
    forward, backward = implementation.load()
    case = make_lsdfn_case(config)
    arrays = {key: value for key, value in case.arrays.items() if value is not None}
    for key in arrays:
        residual = adjoint_residual(lambda **x: forward(**x, **case.params),
                                    lambda g, **x: backward(g, **x, **case.params), arrays, key,
                                    case.grad_output)
        assert residual < 1e-10, key


# --- DFN ------------------------------------------------------------------------------------

@given(st.integers(1, 4), st.booleans(), st.booleans(), st.integers(0, 2**16))
def test_lsdfn_with_one_sample_and_no_attention_is_dfn(kernel_size, residual, printed, seed):
    """s = 1, no attention, one input and one output channel: the Eq. 6 kernel is V (described;
    U everywhere but V's centre when printed) plus U and 1/C at the centre - a DFN filter."""
    case = make_lsdfn_case(LSDFNConfig(batch=2, channels=1, out_channels=1, samples=1,
                                       kernel_size=kernel_size, residual=residual,
                                       attention=None, seed=seed,
                                       kernel_form="printed" if printed else "described"))
    a = case.arrays
    filters = lsdfn_kernels(a["u"], a["v"], kernel_size, residual, case.params["kernel_form"])
    filters = filters.reshape(2, kernel_size * kernel_size, *a["features"].shape[2:])
    np.testing.assert_allclose(lsdfn(**case.forward_kwargs()),
                               dfn(a["features"], filters, kernel_size), rtol=1e-12, atol=1e-12)
    plain = case.with_arrays(u=np.zeros_like(a["u"]))
    np.testing.assert_allclose(
        lsdfn(**{**plain.forward_kwargs(), "residual": False, "kernel_form": "described"}),
        dfn(a["features"], a["v"][:, 0], kernel_size), rtol=1e-12, atol=1e-12)


@given(st.integers(1, 3), st.integers(1, 3), st.integers(0, 2**16))
def test_eq2_with_one_sample_and_diagonal_kernels_is_per_channel_dfn(channels, kernel_size, seed):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((2, channels, 4, 5))
    filters = rng.standard_normal((2, channels, kernel_size, kernel_size, 4, 5))
    kernels = np.zeros((2, channels, channels, kernel_size, kernel_size, 4, 5))
    kernels[:, range(channels), range(channels)] = filters
    np.testing.assert_allclose(
        lsdfn_sample(features, kernels, 1, 1, kernel_size)[:, 0],
        dfn(features, filters.reshape(2, -1, 4, 5), kernel_size), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_dfn_with_the_same_filter_everywhere_is_a_convolution(kernel_size):
    """Against refdyn.testing.independent's plain convolution, one group per channel."""
    rng = np.random.default_rng(kernel_size)
    features = rng.standard_normal((2, 3, 6, 7))
    weight = rng.standard_normal((3, 1, kernel_size, kernel_size))
    filters = np.broadcast_to(weight.reshape(1, -1, 1, 1), (2, 3 * kernel_size ** 2, 6, 7))
    pad = (kernel_size - 1) // 2
    expected = plain_conv2d(features, weight, padding=(pad, pad))
    np.testing.assert_allclose(dfn(features, np.ascontiguousarray(filters), kernel_size),
                               expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(DFN.implementations))
def test_dfn_softmax_filters_keep_a_constant_image_inside(name, load_backend):
    forward, _ = load_backend(DFN, name)
    case = make_dfn_case(DFNConfig(height=6, width=6, softmax=True))
    constant = np.full_like(case.arrays["features"], 2.5)
    out = forward(constant, case.arrays["filters"], 3, True)
    np.testing.assert_allclose(out[..., 1:-1, 1:-1], 2.5, rtol=1e-12)
    assert np.all(out[..., 0, :] < 2.5)                    # the border reads zero padding


@given(st.sampled_from([-2.0, 0.5]), st.integers(0, 2**16))
def test_dfn_without_softmax_is_linear_in_the_filters(factor, seed):
    case = make_dfn_case(DFNConfig(batch=2, per_channel=True, seed=seed))
    a = case.arrays
    np.testing.assert_allclose(dfn(a["features"], factor * a["filters"], 3),
                               factor * dfn(a["features"], a["filters"], 3), rtol=1e-12)
    assert adjoint_residual(lambda **x: dfn(**x, kernel_size=3),
                            lambda g, **x: dfn_backward(g, **x, kernel_size=3), a, "filters",
                            case.grad_output) < 1e-10


# --- dtypes, empty batch ---------------------------------------------------------------------

@pytest.mark.parametrize("op,make,config", [
    (LSDFN, make_lsdfn_case, LSDFNConfig(dtype="float32", samples=3, gamma=2, channels=1,
                                         out_channels=1, height=3, width=3)),
    (LSDFN, make_lsdfn_case, LSDFNConfig(dtype="float32", attention="full", fuse="max")),
    (DFN, make_dfn_case, DFNConfig(dtype="float32", softmax=True))],
    ids=["lsdfn-samples3", "lsdfn-full-attention-max", "dfn-softmax"])
@pytest.mark.parametrize("name", BACKENDS)
def test_outputs_keep_the_input_dtype(op, make, config, name, load_backend):
    forward, backward = load_backend(op, name)
    case = make(config)
    assert forward(**case.forward_kwargs()).dtype == np.float32
    grads = backward(case.grad_output, **case.forward_kwargs())
    for field, value in vars(grads).items():
        assert value is None or value.dtype == np.float32, field


# --- the block --------------------------------------------------------------------------------

@pytest.mark.parametrize("attention,fuse,form", [("factorized", "sum", "described"),
                                                 (None, "max", "printed")])
def test_block_gradients_match_finite_differences(attention, fuse, form):
    rng = np.random.default_rng(0)
    params = init_block_params(2, 3, 2, 2, 3, attention=attention is not None, rng=rng)
    block_input = rng.standard_normal((2, 2, 4, 5))
    opts = dict(out_channels=2, samples=2, gamma=2, kernel_size=3, attention=attention,
                fuse=fuse, kernel_form=form)

    def backward(grad_output, block_input, **arrays):
        grads = lsdfn_block_backward(grad_output, block_input, LSDFNBlockParams(**arrays), **opts)
        return {"block_input": grads.grad_input, **grads.grad_params.arrays()}

    result = gradcheck(lambda block_input, **arrays: lsdfn_block(
        block_input, LSDFNBlockParams(**arrays), **opts), backward,
        {"block_input": block_input, **params.arrays()}, max_entries=15, raise_on_failure=False)
    assert result.ok, result.failures


def test_bad_block_arguments_raise_a_clear_error():
    params = init_block_params(2, 3, 2, 2, 3, rng=np.random.default_rng(0))
    block_input = np.zeros((1, 2, 4, 4))
    opts = dict(out_channels=2, samples=2, gamma=1, kernel_size=3)
    with pytest.raises(ValueError, match="attention=None takes no sample_weight"):
        lsdfn_block(block_input, params, **opts, attention=None)
    with pytest.raises(ValueError, match=r"kernel_weight must have shape \(kernel channels"):
        lsdfn_block(block_input, params, **{**opts, "out_channels": 1})
    with pytest.raises(ValueError, match="attention must be 'factorized' or None"):
        lsdfn_block(block_input, params, **opts, attention="full")


# --- argument validation ----------------------------------------------------------------------



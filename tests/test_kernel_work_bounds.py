"""Work limits of the RoI pooling family and LS-DFN (refdyn.roi_args, refdyn.lsdfn_args;
docs/roi.md, "Limits").

Arguments whose loops would run practically forever (a huge RoI with adaptive sampling, a huge
sampling_ratio or sample_per_part, spatial_scale = 1e300, a huge LS-DFN ``samples``) or whose
64-bit index arithmetic could wrap get the same clear ValueError, naming the argument and the
limit, on every backend, from the checks every backend runs before any work: each rejection
takes milliseconds, where without the checks these calls hang (the GPU kernels saturate the
cast of the sample count; the Python loops and the Numba simulator run for hours).  The largest
accepted values still run and one more is rejected, so no bound is off by one.  (A bin of
2048 x 2048 samples takes minutes in the literal loops and the Numba simulator, so only the
vectorized reference, the host build of the CUDA C kernels and CuPy run that one.)
"""

import re

import numpy as np
import pytest

from refdyn.ddf_args import MAX_DILATION
from refdyn.lsdfn_args import MAX_GAMMA, MAX_SAMPLES
from refdyn.registry import BACKENDS, OPERATORS
from refdyn.roi_args import MAX_POOLED, MAX_SAMPLES_PER_AXIS, MAX_TOTAL_SAMPLES, _eq5_widest, \
    check_deform_ps_roi_pool_args, check_deform_roi_pool_args, check_roi_align_args
from refdyn.roi_pool_numpy import _eq5_axis
from refdyn.testing.cases import close_enough, mismatch_report
from refdyn.testing.roi_cases import ROI_OPERATORS

ADAPTIVE = ("roi_align", "ps_roi_align", "deform_roi_align")    # sampling_ratio <= 0: adaptive
SIZED_BY_ROI = ADAPTIVE + ("deform_roi_pool",)                   # samples grow with the RoI
#: Backends that take a bin of MAX_SAMPLES_PER_AXIS**2 samples in seconds.
FAST_BACKENDS = ("vectorized", "host", "cupy")
MAX = MAX_SAMPLES_PER_AXIS
MAX_MESSAGE = rf"more than the maximum {MAX} per axis \(MAX_SAMPLES_PER_AXIS\)"
#: RoIs and channels of a call of MAX x MAX samples per bin, one bin, and MAX_TOTAL_SAMPLES in all.
TOTAL_ROIS = 4096
TOTAL_CHANNELS = MAX_TOTAL_SAMPLES // (TOTAL_ROIS * MAX * MAX)
assert TOTAL_ROIS * TOTAL_CHANNELS * MAX * MAX == MAX_TOTAL_SAMPLES


def unwrap(array):
    """A CuPy array as NumPy; anything else as it is."""
    return array.get() if hasattr(array, "get") else array


def roi_call(name, rois, channels=1, dtype=np.float64, **params):
    """The keyword arguments of ``name``'s backward (grad_output included) on a 1 x channels x 2 x
    2 input: one bin, spatial_scale 1, adaptive sampling, zero offsets and a mask where the
    operator takes them; ``params`` override.  grad_output is a broadcast one per RoI, channel
    and single bin (the checks under test reject more bins before they read it)."""
    rois = np.array(rois, dtype=dtype).reshape(-1, 5)
    count = len(rois)
    common = {"input": np.arange(4.0 * channels, dtype=dtype).reshape(1, channels, 2, 2),
              "rois": rois, "spatial_scale": 1.0}
    if name == "deform_ps_roi_pool":
        arguments = {**common, "offset": np.zeros((count, 2, 1, 1), dtype), "output_dim": channels,
                     "pooled_size": 1, "sample_per_part": 4}
    else:
        arguments = {**common, "output_size": 1}
        if name in ADAPTIVE:
            arguments["sampling_ratio"] = 0
        if name in ("deform_roi_align", "deform_roi_pool"):
            arguments["offset"] = np.zeros((count, 2, 1, 1), dtype)
        if name == "deform_roi_align":
            arguments["mask"] = np.full((count, 1, 1, 1), 0.5, dtype)
    arguments.update(params)
    arguments["grad_output"] = np.broadcast_to(np.ones((), dtype), (count, channels, 1, 1))
    return arguments


def count_knob(name, value):
    """{sampling_ratio or sample_per_part: value} for operators with a sample count argument."""
    if name == "deform_ps_roi_pool":
        return {"sample_per_part": value}
    return {"sampling_ratio": value} if name in ADAPTIVE else {}


def split(arguments):
    """(forward keyword arguments, backward keyword arguments)."""
    return {k: v for k, v in arguments.items() if k != "grad_output"}, arguments


def rejection(function, arguments):
    """The ValueError message of ``function(**arguments)``; fails if it returns or raises another
    error."""
    with pytest.raises(ValueError) as error:
        function(**arguments)
    return str(error.value)


def hostile_roi_calls(name):
    """{problem: (backward keyword arguments, the message the error must match)}."""
    calls = {"RoI beyond float64 after spatial_scale 1e300": (
                 roi_call(name, [[0, 0, 0, 1e9, 1e9]], spatial_scale=1e300),
                 r"rois: RoI 0 \[0, 0, 0, 1e\+09, 1e\+09\] at spatial_scale 1e\+300 is not "
                 r"finite in feature-map pixels"),
             "total work over MAX_TOTAL_SAMPLES": (
                 roi_call(name, [[0, 0, 0, MAX, MAX]] * TOTAL_ROIS, channels=TOTAL_CHANNELS + 1,
                          **count_knob(name, MAX)),
                 rf"more than the maximum {MAX_TOTAL_SAMPLES} = 2\*\*44 \(MAX_TOTAL_SAMPLES\)")}
    if name in SIZED_BY_ROI:
        calls["RoI of 1e9 pixels"] = (
            roi_call(name, [[0, 0, 0, 1, 1e9]]),
            rf"rois: RoI 0 .* takes up to 1e\+09 x 1 samples per bin \(h x w\), {MAX_MESSAGE}")
        calls["spatial_scale 1e300"] = (
            roi_call(name, [[0, 0, 0, 2, 2]], spatial_scale=1e300),
            rf"takes up to 2e\+300 x 2e\+300 samples per bin \(h x w\), {MAX_MESSAGE}")
    if name in ADAPTIVE + ("deform_ps_roi_pool",):
        knob = next(iter(count_knob(name, 0)))
        calls[f"{knob} 1e9"] = (roi_call(name, [[0, 0, 0, 1, 1]], **count_knob(name, 10 ** 9)),
                                rf"{knob} must be <= {MAX} \(samples per bin axis, "
                                r"MAX_SAMPLES_PER_AXIS\), got 1000000000")
    knob, bins = (("pooled_size", 2 ** 31) if name == "deform_ps_roi_pool" else
                  ("output_size", (1, 2 ** 31)))
    calls[f"{knob} 2**31"] = (roi_call(name, [[0, 0, 0, 1, 1]], **{knob: bins}),
                              rf"{knob} must be <= 2147483647 \(bins per axis, MAX_POOLED\)")
    return calls


HOSTILE_ROI_CALLS = [(name, problem) for name in ROI_OPERATORS for problem in hostile_roi_calls(name)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,problem", HOSTILE_ROI_CALLS,
                         ids=[f"{name}: {problem}" for name, problem in HOSTILE_ROI_CALLS])
def test_hostile_roi_arguments_get_the_references_error_on_every_backend(name, problem, backend,
                                                                         load_backend):
    """Forward and backward raise the vectorized reference's ValueError, which names the
    argument and the limit, before any work (the call returns in milliseconds)."""
    forward, backward = load_backend(OPERATORS[name], backend)
    reference_forward, reference_backward = load_backend(OPERATORS[name], "vectorized")
    arguments, message = hostile_roi_calls(name)[problem]
    forward_arguments, backward_arguments = split(arguments)
    expected = rejection(reference_forward, forward_arguments)
    assert re.search(message, expected), expected
    assert rejection(reference_backward, backward_arguments) == expected
    assert rejection(forward, forward_arguments) == expected
    assert rejection(backward, backward_arguments) == expected


def assert_matches(name, backend, reference, load_backend, arguments):
    """Forward and backward of ``backend`` run and match those of backend ``reference``."""
    forward, backward = load_backend(OPERATORS[name], backend)
    reference_forward, reference_backward = load_backend(OPERATORS[name], reference)
    forward_arguments, backward_arguments = split(arguments)
    output, expected = unwrap(forward(**forward_arguments)), reference_forward(**forward_arguments)
    dtype = expected.dtype
    assert close_enough(output, expected, dtype), mismatch_report("output", output, expected, dtype)
    grads, wanted = backward(**backward_arguments), reference_backward(**backward_arguments)
    for field, want in vars(wanted).items():
        got = unwrap(getattr(grads, field))
        assert (got is None) == (want is None), field
        assert want is None or close_enough(got, want, dtype), mismatch_report(field, got, want, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", SIZED_BY_ROI)
def test_the_tallest_roi_the_limit_accepts_runs_and_one_pixel_taller_is_rejected(
        name, backend, load_backend):
    """A RoI 1 x 2048 feature-map pixels, one bin: 2048 x 1 samples (adaptive ceil(2048 / 1), or
    Eq. 5's 2048 integer points); 2049 pixels tall is one sample too many."""
    assert_matches(name, backend, "vectorized", load_backend, roi_call(name, [[0, 0, 0, 1, MAX]]))
    forward, _ = load_backend(OPERATORS[name], backend)
    too_tall, _ = split(roi_call(name, [[0, 0, 0, 1, MAX + 1]]))
    assert f"takes up to {MAX + 1} x 1 samples" in rejection(forward, too_tall)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("name", ADAPTIVE + ("deform_ps_roi_pool",))
def test_the_largest_sample_count_argument_runs_and_one_more_is_rejected(name, backend,
                                                                         load_backend):
    """sampling_ratio (sample_per_part) = 2048: a bin of 2048 x 2048 samples; 2049 is rejected."""
    assert_matches(name, backend, "vectorized", load_backend,
                   roi_call(name, [[0, 0, 0, 1, 1]], **count_knob(name, MAX)))
    forward, _ = load_backend(OPERATORS[name], backend)
    one_more, _ = split(roi_call(name, [[0, 0, 0, 1, 1]], **count_knob(name, MAX + 1)))
    assert f"must be <= {MAX}" in rejection(forward, one_more)


# --- the shared checks at their limits (every backend calls these) ------------------------------

def geometry_check(name, arguments):
    """Run the argument check every backend of ``name`` calls, without offsets or mask (they do
    not change the work); returns its geometry."""
    a, _ = split(arguments)
    if name == "deform_ps_roi_pool":
        return check_deform_ps_roi_pool_args(a["input"], a["rois"], None, a["spatial_scale"],
                                             a["output_dim"], 1, a["pooled_size"], 0,
                                             a["sample_per_part"], 0.1, False)[0]
    if name == "deform_roi_pool":
        return check_deform_roi_pool_args(a["input"], a["rois"], None, a["output_size"],
                                          a["spatial_scale"], 0.1)
    return check_roi_align_args(a["input"], a["rois"], None, None, a["output_size"],
                                a["spatial_scale"], a["sampling_ratio"], 0.1,
                                position_sensitive=name == "ps_roi_align")


@pytest.mark.parametrize("name", ROI_OPERATORS)
def test_exactly_max_total_samples_is_accepted_and_more_is_not(name):
    """4096 RoIs x 1024 output channels x 1 bin x 2048 x 2048 samples = 2**44 exactly; with one
    more channel the check rejects the call (which cannot run here: 2**44 samples)."""
    rois = [[0, 0, 0, MAX, MAX]] * TOTAL_ROIS
    geometry_check(name, roi_call(name, rois, channels=TOTAL_CHANNELS, **count_knob(name, MAX)))
    with pytest.raises(ValueError, match=rf"takes {MAX_TOTAL_SAMPLES + TOTAL_ROIS * MAX * MAX} "
                                         "bilinear samples"):
        geometry_check(name, roi_call(name, rois, channels=TOTAL_CHANNELS + 1,
                                      **count_knob(name, MAX)))


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("pooled", [1, 7])
def test_adaptive_sampling_limit_is_exact_at_the_largest_count(pooled, aligned):
    """ceil(h / P) = 2048 passes, one sample more does not, for any number of bins and either
    RoI rule of roi_align."""
    def check(height):
        a, _ = split(roi_call("roi_align", [[0, 3, 5, 4, 5 + height]], output_size=pooled))
        check_roi_align_args(a["input"], a["rois"], None, None, pooled, 1.0, 0, 0.0,
                             aligned=aligned)
    check(MAX * pooled)
    with pytest.raises(ValueError, match=rf"takes up to {MAX + 1} x 1 samples per bin"):
        check(MAX * pooled + 0.5)


def test_eq5_widest_bin_bounds_the_points_of_every_bin_within_one():
    """_eq5_widest (the Eq. 5 rule the check applies) against the reference's count of points
    of the widest bin, over sizes with integer and fractional size / P, negative ones included:
    never below it, equal when size / P is an integer, at most one above it otherwise (bin 0
    alone holds ceil(size / P) points)."""
    for bins in range(1, 8):
        for size in np.arange(-3.0, 40.0, 0.125):
            _, valid = _eq5_axis(0.0, float(size), bins)
            widest, bound = int(valid.sum(axis=1).max()), _eq5_widest(float(size), bins)
            assert widest <= bound <= widest + (size / bins != size // bins), (size, bins)


@pytest.mark.parametrize("per_bin,accepted", [(MAX, True), (MAX + 1, False), (MAX - 1.5, True),
                                              (MAX - 0.5, False)])
def test_eq5_limit_at_its_edges(per_bin, accepted):
    """h / P = 2048 (every bin 2048 points) passes, 2049 does not; a fractional h / P passes
    while floor(h / P) + 2 <= 2048."""
    arguments = roi_call("deform_roi_pool", [[0, 0, 0, 1, 7 * per_bin]], output_size=7)
    if accepted:
        geometry_check("deform_roi_pool", arguments)
    else:
        with pytest.raises(ValueError, match=MAX_MESSAGE):
            geometry_check("deform_roi_pool", arguments)


@pytest.mark.parametrize("name", ROI_OPERATORS)
def test_output_size_limit_is_max_pooled(name):
    """output_size (pooled_size) 2**31 - 1 passes the checks (no RoIs: nothing to pool; no
    channels for ps_roi_align, whose channels are a multiple of the bins), 2**31 does not."""
    def check(bins):
        knob = ({"pooled_size": bins} if name == "deform_ps_roi_pool" else
                {"output_size": (1, bins)})
        geometry_check(name, roi_call(name, np.zeros((0, 5)), channels=int(name != "ps_roi_align"),
                                      **knob))
    check(MAX_POOLED)
    with pytest.raises(ValueError, match=r"(output|pooled)_size must be <= 2147483647"):
        check(MAX_POOLED + 1)


@pytest.mark.parametrize("scale", [1 / 4, 1 / 8, 1 / 16, 1 / 32])
@pytest.mark.parametrize("pooled", [1, 7, 14])
@pytest.mark.parametrize("name", ROI_OPERATORS)
def test_detection_rois_with_adaptive_sampling_are_accepted(name, pooled, scale):
    """1000 RoIs of 1 to 8000 image pixels a side, corners from 100 pixels before the image on,
    on feature maps of stride 4 to 32 with adaptive sampling and 1 to 14 bins: all accepted."""
    rng = np.random.default_rng(pooled)
    corner = rng.uniform(-100, 8000, (1000, 2))
    rois = np.column_stack([np.zeros(1000), corner, corner + rng.uniform(1, 8000, (1000, 2))])
    geometry_check(name, roi_call(
        name, rois, channels=pooled * pooled if name == "ps_roi_align" else 1, spatial_scale=scale,
        **({"pooled_size": pooled, "sample_per_part": 2} if name == "deform_ps_roi_pool" else
           {"output_size": pooled})))


# --- LS-DFN -------------------------------------------------------------------------------------

def lsdfn_call(samples, gamma, dtype=np.float64):
    """The backward keyword arguments of lsdfn without attention (nothing else bounds s) on a
    1 x 1 x 1 x 1 map, kernel size 1, sum fusion."""
    rng = np.random.default_rng(0)
    return {"grad_output": rng.standard_normal((1, 1, 1, 1)).astype(dtype),
            "features": rng.standard_normal((1, 1, 1, 1)).astype(dtype),
            "u": rng.standard_normal((1, 1, 1, 1, 1)).astype(dtype),
            "v": rng.standard_normal((1, 1, 1, 1, 1)).astype(dtype),
            "samples": samples, "gamma": gamma, "kernel_size": 1, "attention": None,
            "fuse": "sum"}


def lsdfn_sample_call(samples, gamma, dtype=np.float64):
    """The backward keyword arguments of lsdfn_sample on a 1 x 1 x 1 x 1 map, kernel size 1."""
    rng = np.random.default_rng(0)
    return {"grad_output": rng.standard_normal((1, samples * samples, 1, 1, 1)).astype(dtype),
            "features": rng.standard_normal((1, 1, 1, 1)).astype(dtype),
            "kernels": rng.standard_normal((1, 1, 1, 1, 1, 1, 1)).astype(dtype),
            "samples": samples, "gamma": gamma, "kernel_size": 1}


LSDFN_CALLS = {"lsdfn": lsdfn_call, "lsdfn_sample": lsdfn_sample_call}
HOSTILE_LSDFN = {"samples 65": ((MAX_SAMPLES + 1, 1), rf"samples must be <= {MAX_SAMPLES} "
                                                      r"\(samples per axis, MAX_SAMPLES\), got 65"),
                 "samples 1e6": ((10 ** 6, 1), rf"samples must be <= {MAX_SAMPLES} "),
                 "gamma 2**31": ((3, MAX_GAMMA + 1), r"gamma must be <= 2147483647 \(the "
                                                     r"sample stride, MAX_GAMMA\), got 2147483648")}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("problem", HOSTILE_LSDFN)
@pytest.mark.parametrize("name", LSDFN_CALLS)
def test_hostile_lsdfn_arguments_get_the_references_error_on_every_backend(name, problem, backend,
                                                                          load_backend):
    """samples beyond MAX_SAMPLES (each output would loop over s * s samples, unbounded by any
    array without attention) and gamma beyond MAX_GAMMA (offsets (s - 1) gamma could wrap)."""
    forward, backward = load_backend(OPERATORS[name], backend)
    (samples, gamma), message = HOSTILE_LSDFN[problem]
    arguments = LSDFN_CALLS[name](1, 1)
    arguments.update(samples=samples, gamma=gamma)    # grad_output of s = 1: checked after
    forward_arguments, backward_arguments = split(arguments)
    for function, given in ((forward, forward_arguments), (backward, backward_arguments)):
        with pytest.raises(ValueError, match=message):
            function(**given)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", LSDFN_CALLS)
def test_lsdfn_at_the_largest_samples_runs_and_matches_the_reference(name, backend, load_backend):
    """s = 64: 4096 samples per output, forward and backward (lsdfn without attention)."""
    assert_matches(name, backend, "vectorized", load_backend, LSDFN_CALLS[name](MAX_SAMPLES, 1))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "literal"])
@pytest.mark.parametrize("name", LSDFN_CALLS)
def test_lsdfn_at_the_largest_gamma_runs_and_matches_the_literal_loops(name, backend,
                                                                      load_backend):
    """gamma = 2**31 - 1 with s = 2: the second sample row and column lie 2**31 - 1 pixels
    away and read zeros, on every backend (the vectorized reference pads by at most the map's
    extent, so its memory does not grow with gamma)."""
    assert_matches(name, backend, "literal", load_backend, LSDFN_CALLS[name](2, MAX_GAMMA))


# --- DDF ----------------------------------------------------------------------------------------

def ddf_call(dilation, dtype=np.float64):
    """The backward keyword arguments of ddf on a 1 x 2 x 5 x 5 map, 3 x 3 taps, one head."""
    rng = np.random.default_rng(0)
    return {"grad_output": rng.standard_normal((1, 2, 5, 5)).astype(dtype),
            "features": rng.standard_normal((1, 2, 5, 5)).astype(dtype),
            "channel_filter": rng.standard_normal((1, 2, 3, 3)).astype(dtype),
            "spatial_filter": rng.standard_normal((1, 9, 5, 5)).astype(dtype),
            "kernel_size": 3, "dilation": dilation}


@pytest.mark.parametrize("backend", BACKENDS)
def test_ddf_dilation_beyond_a_c_int_gets_the_references_error_on_every_backend(backend,
                                                                               load_backend):
    """A dilation of 2**63 - 1 wrapped the host build's 64-bit tap offsets (it read pixels
    where dilation 100 reads zeros); every backend now rejects dilations beyond MAX_DILATION."""
    forward, backward = load_backend(OPERATORS["ddf"], backend)
    for dilation in (MAX_DILATION + 1, 2 ** 63 - 1):
        forward_arguments, backward_arguments = split(ddf_call(dilation))
        for function, given in ((forward, forward_arguments), (backward, backward_arguments)):
            with pytest.raises(ValueError, match=rf"dilation must be <= {MAX_DILATION} "
                                                 rf"\(a C int, MAX_DILATION\), got {dilation}"):
                function(**given)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ddf_at_the_largest_dilation_reads_only_the_centre_tap(backend, load_backend):
    """MAX_DILATION runs, and reads what any dilation beyond the image reads (dilation 100)."""
    assert_matches("ddf", backend, "vectorized", load_backend, ddf_call(MAX_DILATION))
    forward, _ = load_backend(OPERATORS["ddf"], backend)
    largest, beyond = (unwrap(forward(**split(ddf_call(d))[0])) for d in (MAX_DILATION, 100))
    np.testing.assert_array_equal(largest, beyond)


@pytest.mark.parametrize("reach", [1, 2, 3, 4, 5, 6, 1000])
def test_reads_beyond_the_map_are_zeros_in_the_vectorized_padding(reach, load_backend):
    """The vectorized DDF and LS-DFN pad by at most the map's extent and clamp the farther reads
    into the padding: every dilation / gamma, inside, at and beyond a 5 x 4 map (extent 4 and
    5), matches the literal loops, forward and backward."""
    rng = np.random.default_rng(reach)
    ddf = {"grad_output": rng.standard_normal((1, 2, 5, 4)),
           "features": rng.standard_normal((1, 2, 5, 4)),
           "channel_filter": rng.standard_normal((1, 2, 3, 3)),
           "spatial_filter": rng.standard_normal((1, 9, 5, 4)), "kernel_size": 3,
           "dilation": reach}
    lsdfn_sample = {"grad_output": rng.standard_normal((1, 4, 1, 5, 4)),
                    "features": rng.standard_normal((1, 1, 5, 4)),
                    "kernels": rng.standard_normal((1, 1, 1, 3, 3, 5, 4)),
                    "samples": 2, "gamma": reach, "kernel_size": 3}
    for name, arguments in (("ddf", ddf), ("lsdfn_sample", lsdfn_sample)):
        assert_matches(name, "vectorized", "literal", load_backend, arguments)

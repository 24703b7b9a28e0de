"""Test-wide settings: the Hypothesis profiles, the Numba CUDA simulator without a GPU, the
``backend`` marker of tests that need a GPU backend; the border-rule edge case the GPU backend
tests share."""

import importlib
import os
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from refdyn.bilinear_numpy import sample_point, sample_point_grad
from refdyn.gpu import backend_problem, use_numba_simulator_without_device
from refdyn.testing.cases import Case

# Without a GPU, Numba kernels run under the CUDA simulator; with one they run on the device.
use_numba_simulator_without_device()

# "ci" (the default): derandomized, no deadline, bounded examples, so every run is the same.
settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=15, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# "thorough": random, many more examples; HYPOTHESIS_PROFILE=thorough pytest
settings.register_profile(
    "thorough", deadline=None, max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config):
    config.addinivalue_line("markers", "backend(name): run only where the GPU backend ``name`` "
                                       "can run (refdyn.gpu.backend_problem), else skip saying why")


def pytest_runtest_setup(item):
    for marker in item.iter_markers("backend"):
        problem = backend_problem(marker.args[0])
        if problem is not None:
            pytest.skip(f"{marker.args[0]} backend: {problem}")


@dataclass
class BorderEdgeCase:
    """A deform_conv2d case whose output (i, j) is the border-rule sample at the point
    ``points[:, i, j]`` (a 1 x 1 kernel of weight 1, no padding, mask or bias; grad_output = 1),
    with the expected output and offset gradient from the scalar formulas of refdyn.bilinear_numpy."""

    case: Case
    points: np.ndarray           # (2, H, W): p_y, p_x of each output, in the case's dtype
    expected_output: np.ndarray  # x(p) under the border rule, (1, 1, H, W)
    expected_grad_offset: np.ndarray  # (d x(p)/d p_y, d x(p)/d p_x), (1, 2, H, W)


#: Sampling points of :func:`border_edge_case` in a 3 x 4 image: each corner exactly (0 and
#: H - 1, W - 1), the last row and column exactly, points beyond each edge, far beyond (up to
#: the float32 maximum) and inside.
BORDER_EDGE_POINTS = [(0.0, 0.0), (2.0, 3.0), (0.0, 3.0), (2.0, 0.0),
                      (-5.0, 1.5), (1.5, -7.0), (1e30, -1e30), (-3e38, 3e38),
                      (0.5, 0.25), (2.0, 1.5), (1.5, 3.0), (-1.0, 2.5)]


@pytest.fixture
def border_edge_case():
    """``border_edge_case(dtype)``: the :class:`BorderEdgeCase` of BORDER_EDGE_POINTS."""
    def make(dtype) -> BorderEdgeCase:
        dtype = np.dtype(dtype)
        image = (np.arange(1.0, 13.0).reshape(3, 4) ** 1.5).astype(dtype)  # no two equal steps
        grid = np.stack(np.meshgrid(np.arange(3.0), np.arange(4.0), indexing="ij"))
        targets = np.array(BORDER_EDGE_POINTS).T.reshape(2, 3, 4)
        offset = (targets - grid).astype(dtype)[None]
        points = grid.astype(dtype) + offset[0]       # p = p0 + dp, rounded as the kernels do
        expected_output = np.zeros((1, 1, 3, 4))
        expected_grad_offset = np.zeros((1, 2, 3, 4))
        for i, j in np.ndindex(3, 4):
            p_y, p_x = points[:, i, j]
            expected_output[0, 0, i, j] = sample_point(image, p_y, p_x, "border")
            expected_grad_offset[0, :, i, j] = sample_point_grad(image, p_y, p_x, "border")
        case = Case(arrays={"input": image[None, None], "offset": offset,
                            "weight": np.ones((1, 1, 1, 1), dtype), "bias": None, "mask": None},
                    params={"boundary": "border"}, grad_output=np.ones((1, 1, 3, 4), dtype),
                    description=f"border edge points, {dtype}")
        return BorderEdgeCase(case, points, expected_output.astype(dtype),
                              expected_grad_offset.astype(dtype))
    return make


@pytest.fixture(scope="module")
def nb():
    """The Numba backend, refdyn.gpu.numba (its tests skip first where Numba cannot run)."""
    return importlib.import_module("refdyn.gpu.numba")


@pytest.fixture(scope="module")
def deform_conv_kernels(nb):
    """The Numba kernels of deformable convolution, refdyn.gpu.deform_conv_numba."""
    return importlib.import_module("refdyn.gpu.deform_conv_numba")


@pytest.fixture(scope="module")
def cuda():
    """numba.cuda (the simulator without a GPU)."""
    return importlib.import_module("numba.cuda")


@pytest.fixture
def load_backend():
    """``load(op, backend) -> (forward, backward)`` of a registered backend, or a skip that
    names why this machine cannot run it (no GPU, package missing)."""
    def load(op, backend):
        implementation = op.implementation(backend)
        problem = implementation.problem()
        if problem:
            pytest.skip(f"{backend} backend not available: {problem}")
        return implementation.load()
    return load


@pytest.fixture
def assert_rejected():
    """``check(forward, backward, arguments, error, message)``: both calls raise ``error`` with a
    message matching ``message``; ``arguments`` holds grad_output for the backward."""
    def check(forward, backward, arguments, error, message):
        with pytest.raises(error, match=message):
            forward(**{name: value for name, value in arguments.items() if name != "grad_output"})
        with pytest.raises(error, match=message):
            backward(**arguments)
    return check


def pytest_collection_modifyitems(items):
    """test_gpu_numba_ptx.py runs last: it compiles every Numba kernel variant the session
    launched."""
    items.sort(key=lambda item: item.path.name == "test_gpu_numba_ptx.py")

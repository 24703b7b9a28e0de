"""DCNv2's R-CNN feature mimic loss (gpu/mimic_loss.cu, gpu/_numba_mimic.py) on the GPU backends.

``refdyn.gpu.host`` runs the CUDA C kernels on the CPU (g++ and gpu/cuda_host_compat.h) and
``refdyn.gpu.numba`` the Numba kernels (on a GPU, or under the CUDA simulator) on every machine
that has them; ``refdyn.gpu.cupy`` runs only where CuPy and a device exist.  Each is checked
against the NumPy reference (refdyn/feature_mimic.py): both dtypes, zero feature vectors (the eps
rule), odd trailing shapes, several launch grids, device arrays in and out, an empty RoI list
(which launches nothing), and bad arguments raising the reference's errors.  The nvcc and
host-warning compile checks of mimic_loss.cu are in test_gpu_cuda_c.py;
test_registry_generic.py covers the registered backends generically.
"""


import numpy as np
import pytest

from refdyn.gpu import backend_problem
from refdyn.feature_mimic import mimic_loss, mimic_loss_backward
from refdyn.testing.cases import close_enough, mismatch_report

BACKENDS = ("host", "numba", "cupy")


def backend(name):
    """The module refdyn.gpu.<name>, or a skip naming why it cannot run here."""
    problem = backend_problem(name)
    if problem is not None:
        pytest.skip(f"{name} backend: {problem}")
    if name == "host":
        from refdyn.gpu import host as module
    elif name == "numba":
        from refdyn.gpu import numba as module
    else:
        from refdyn.gpu import cupy as module
    return module


def arrays(shape, dtype, seed=0, zero_rows=()):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal(shape).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    for which, row in zero_rows:
        (features if which == "f" else target)[row] = 0.0
    return features, target, np.asarray(rng.standard_normal(), dtype=dtype)


# (shape, zero rows as ("f" | "g", RoI)); every case runs in both dtypes.
CASES = {
    "3 RoIs of 2x2x2": ((3, 2, 2, 2), ()),
    "5 RoIs of 7": ((5, 7), ()),
    "zero features in RoI 0": ((4, 3, 2), (("f", 0),)),
    "zero target in RoI 2, both zero in RoI 1": ((3, 5), (("g", 2), ("f", 1), ("g", 1))),
    "one entry per RoI": ((6,), (("f", 3),)),
    "empty features per RoI": ((2, 0, 3), ()),
    "17 RoIs of 3x3x3": ((17, 3, 3, 3), (("g", 16),)),
}


def assert_matches_reference(module, shape, zero_rows, dtype, eps=1e-8):
    features, target, grad_output = arrays(shape, dtype, zero_rows=zero_rows)
    expected = mimic_loss(features, target, eps)
    expected_grads = mimic_loss_backward(grad_output, features, target, eps)
    output = module.mimic_loss(features, target, eps)
    grads = module.mimic_loss_backward(grad_output, features, target, eps)
    assert type(output) is np.ndarray and output.shape == () and output.dtype == dtype
    assert close_enough(output, expected, dtype), mismatch_report("loss", output, expected, dtype)
    for name in ("grad_features", "grad_target"):
        actual, wanted = getattr(grads, name), getattr(expected_grads, name)
        assert type(actual) is np.ndarray and actual.dtype == dtype
        assert close_enough(actual, wanted, dtype), mismatch_report(name, actual, wanted, dtype)
    assert np.isfinite(output) and all(np.isfinite(getattr(grads, n)).all()
                                       for n in ("grad_features", "grad_target"))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_matches_numpy_reference(backend_name, name, dtype):
    assert_matches_reference(backend(backend_name), *CASES[name], np.dtype(dtype))


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_zero_vector_rule_and_a_large_eps(backend_name):
    """A zero RoI's term is exactly 1 and its own gradient has no radial part; eps = 0.5 clamps
    short vectors too."""
    module = backend(backend_name)
    features = np.zeros((2, 3))
    features[1] = [0.1, 0.2, 0.0]
    target = np.array([[1.0, 2.0, 2.0], [0.3, 0.1, 0.2]])
    assert float(module.mimic_loss(features[:1], target[:1])) == 1.0
    assert_matches_reference(module, (4, 3), (("f", 0),), np.dtype(np.float64), eps=0.5)
    for eps in (1e-8, 0.5):
        output = module.mimic_loss(features, target, eps)
        assert np.isclose(output, mimic_loss(features, target, eps), rtol=1e-13, atol=0)


def test_host_any_grid_gives_the_same_bits():
    host = backend("host")
    features, target, grad_output = arrays((7, 2, 3), np.float32, seed=3,
                                           zero_rows=(("f", 2),))
    runs = []
    for grid in [(1, 1), (2, 3), (4, 5), (3, 16)]:
        with host.launch_grid(*grid):
            grads = host.mimic_loss_backward(grad_output, features, target)
            runs.append((host.mimic_loss(features, target), grads.grad_features,
                         grads.grad_target))
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            np.testing.assert_array_equal(a, b)


def _forbid_launches(monkeypatch, backend_name, module):
    def refuse(*args, **kwargs):
        raise AssertionError("an empty RoI list must launch nothing")
    if backend_name == "numba":
        from refdyn.gpu import _numba_mimic
        monkeypatch.setattr(_numba_mimic, "_launch", refuse)
    else:
        monkeypatch.setattr(module, "launch", refuse)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_empty_roi_list_is_zero_and_launches_nothing(monkeypatch, backend_name, dtype):
    module = backend(backend_name)
    _forbid_launches(monkeypatch, backend_name, module)
    features, target, grad_output = arrays((0, 4, 2), dtype)
    output = module.mimic_loss(features, target)
    assert type(output) is np.ndarray and output.shape == () and output.dtype == dtype
    assert float(output) == 0.0
    grads = module.mimic_loss_backward(grad_output, features, target)
    for name in ("grad_features", "grad_target"):
        gradient = getattr(grads, name)
        assert gradient.shape == (0, 4, 2) and gradient.dtype == dtype


def _bad_arguments():
    """(name, loss arguments or None, backward arguments or None), each rejected by NumPy."""
    f, g, go = arrays((3, 4), np.float64)
    nan = f.copy()
    nan[1, 2] = np.nan
    return {
        "dtype mismatch": ((f, g.astype(np.float32)), None),
        "shape mismatch": ((f, g[:, :3]), None),
        "integer features": ((f.astype(np.int64), g), None),
        "0-d features": ((np.asarray(1.0), np.asarray(1.0)), None),
        "NaN features": ((nan, g), None),
        "infinite target": ((f, np.where(g > 0, np.inf, g)), None),
        "eps zero": ((f, g, 0.0), None),
        "eps bool": ((f, g, True), None),
        "grad_output not 0-d": (None, (go.reshape(1), f, g)),
        "grad_output float32": (None, (go.astype(np.float32), f, g)),
    }


def _error(call, arguments):
    try:
        call(*arguments)
    except (TypeError, ValueError) as error:
        return type(error), str(error)
    return None


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_bad_arguments_raise_the_numpy_errors(backend_name):
    module = backend(backend_name)
    for problem, (loss_arguments, backward_arguments) in _bad_arguments().items():
        if loss_arguments is not None:
            expected = _error(mimic_loss, loss_arguments)
            assert expected is not None, problem
            assert _error(module.mimic_loss, loss_arguments) == expected, problem
            f, g, *rest = loss_arguments
            backward_arguments = (np.asarray(1.0, dtype=getattr(f, "dtype", np.float64)),
                                  f, g, *rest)
        expected = _error(mimic_loss_backward, backward_arguments)
        assert expected is not None, problem
        assert _error(module.mimic_loss_backward, backward_arguments) == expected, problem


# --- Device arrays ------------------------------------------------------------------------------


def _device_kit(backend_name):
    """(module, to_device, to_host, device type) of a backend that takes device arrays."""
    module = backend(backend_name)
    if backend_name == "numba":
        from numba import cuda
        return module, cuda.to_device, lambda array: array.copy_to_host(), type(
            cuda.to_device(np.zeros(1)))
    import cupy
    return module, cupy.asarray, cupy.asnumpy, cupy.ndarray


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("backend_name", ["numba", "cupy"])
def test_device_arrays_in_and_out(backend_name, dtype):
    module, to_device, to_host, device_type = _device_kit(backend_name)
    features, target, grad_output = arrays((5, 3, 2), dtype, seed=7, zero_rows=(("g", 4),))
    expected = mimic_loss(features, target)
    expected_grads = mimic_loss_backward(grad_output, features, target)
    output = module.mimic_loss(to_device(features), to_device(target))
    assert isinstance(output, device_type) and output.shape == ()
    assert close_enough(to_host(output), expected, dtype)
    # A host grad_output with device features: the features decide where the results live.
    for go in (to_device(grad_output), grad_output):
        grads = module.mimic_loss_backward(go, to_device(features), to_device(target))
        for name in ("grad_features", "grad_target"):
            gradient = getattr(grads, name)
            assert isinstance(gradient, device_type) and gradient.shape == features.shape
            assert close_enough(to_host(gradient), getattr(expected_grads, name), dtype), name
    empty = module.mimic_loss(to_device(features[:0]), to_device(target[:0]))
    assert isinstance(empty, device_type) and float(to_host(empty)) == 0.0
    nan = features.copy()
    nan[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="features must be finite"):
        module.mimic_loss(to_device(nan), to_device(target))

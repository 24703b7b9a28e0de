"""DCNv2's R-CNN feature mimic loss (gpu/mimic_loss.cu, gpu/mimic_loss_numba.py) on the GPU backends.

``refdyn.gpu.host`` runs the CUDA C kernels on the CPU (g++ and gpu/cuda_host_compat.h) and
``refdyn.gpu.numba`` the Numba kernels (on a GPU, or under the CUDA simulator) on every machine
that has them; ``refdyn.gpu.cupy`` runs only where CuPy and a device exist.  Each is checked
against the NumPy reference (refdyn/mimic_loss_numpy.py): both dtypes, zero feature vectors (the eps
rule), odd trailing shapes.  The nvcc and host-warning compile checks of mimic_loss.cu are in
test_gpu_cuda_c.py; empty RoI lists, bad arguments, device arrays and reproducibility on any
launch grid in test_backends_generic.py; test_registry_generic.py adds Hypothesis-drawn cases.
"""


import numpy as np
import pytest

from refdyn.gpu import backend_problem
from refdyn.mimic_loss_numpy import mimic_loss, mimic_loss_backward
from refdyn.registry import OPERATORS
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


# --- Device arrays ------------------------------------------------------------------------------




@pytest.mark.parametrize("backend_name", ["literal", "vectorized", *BACKENDS])
def test_the_loss_is_scale_invariant_up_to_the_dtypes_range(backend_name, load_backend):
    """cos(s f, t g) = cos(f, g) for s, t far beyond where |f|^2 overflows (1e200: the loss was
    NaN) or underflows (1e-200, with eps below the norms), on every backend; the gradients
    scale by 1/s; mimic_loss(s f, s f) is 0."""
    forward, backward = load_backend(OPERATORS["mimic_loss"], backend_name)
    rng = np.random.default_rng(5)
    features, target = rng.standard_normal((2, 3, 4, 2, 3))
    grad_output = np.array(1.5)
    expected = forward(features, target)
    expected_grads = backward(grad_output, features, target)
    for scale, eps in ((1e200, 1e-8), (1e300, 1e-8), (1e-200, 1e-260)):
        scaled = features * scale
        np.testing.assert_allclose(forward(scaled, target, eps), expected, rtol=1e-13,
                                   err_msg=f"scale {scale}")
        np.testing.assert_allclose(forward(scaled, scaled, eps), 0.0, atol=1e-13)
        grads = backward(grad_output, scaled, target, eps)
        np.testing.assert_allclose(grads.grad_features * scale, expected_grads.grad_features,
                                   rtol=1e-12, atol=1e-14, err_msg=f"scale {scale}")
        np.testing.assert_allclose(grads.grad_target, expected_grads.grad_target, rtol=1e-12,
                                   atol=1e-14, err_msg=f"scale {scale}")

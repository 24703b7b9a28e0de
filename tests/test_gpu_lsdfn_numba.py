"""The Numba CUDA mirrors of LS-DFN and DFN (refdyn.gpu.numba: dfn, lsdfn_sample, lsdfn and their
backwards) against the NumPy reference: every example configuration (every option, both dtypes,
an empty batch), device arrays in and out, bad arguments.

Without a GPU, conftest.py selects Numba's CUDA simulator, where every thread is a Python
thread: the sizes stay tiny (the thorough example configurations are left to the host tests).
"""


import numpy as np
import pytest

from refdyn.gpu import backend_problem
from refdyn.checks import compare_results
from refdyn.registry import OPERATORS as REGISTERED
from refdyn.testing.lsdfn_cases import DFNConfig, LSDFNConfig, LSDFNSampleConfig, \
    bad_arguments, error_mismatches, example_cases, make_dfn_case, make_lsdfn_case, \
    make_lsdfn_sample_case, references

PROBLEM = backend_problem("numba")
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"numba backend: {PROBLEM}")

OPERATORS = references()


def assert_matches_reference(name, case, output, grads):
    """The forward output and every gradient close to the NumPy reference, same dtype and
    shape; None exactly where the reference has None."""
    assert isinstance(output, np.ndarray) and all(
        isinstance(value, (np.ndarray, type(None))) for value in vars(grads).values())
    comparison = compare_results(REGISTERED[name], case, output, grads)
    assert comparison.ok, "\n".join(comparison.failures) + f"\n{case.description}"


@pytest.mark.parametrize("name,case", example_cases(thorough=False),
                         ids=lambda value: getattr(value, "description", value))
def test_numba_lsdfn_and_dfn_match_numpy_reference(nb, name, case):
    output = getattr(nb, name)(**case.forward_kwargs())
    grads = getattr(nb, f"{name}_backward")(case.grad_output, **case.backward_kwargs())
    assert_matches_reference(name, case, output, grads)


@pytest.mark.parametrize("name,case", [
    ("dfn", make_dfn_case(DFNConfig(batch=2, channels=2, per_channel=True, softmax=True,
                                    dtype="float32", seed=7))),
    ("lsdfn_sample", make_lsdfn_sample_case(LSDFNSampleConfig(samples=2, gamma=2, seed=7))),
    ("lsdfn", make_lsdfn_case(LSDFNConfig(height=3, width=4, samples=2, gamma=2,
                                          attention="full", fuse="max", seed=7))),
    ("lsdfn", make_lsdfn_case(LSDFNConfig(batch=0, seed=8))),
], ids=["dfn", "lsdfn_sample", "lsdfn", "lsdfn empty"])
def test_numba_lsdfn_device_arrays_in_and_out(nb, cuda, name, case):
    on_device = {k: None if v is None else cuda.to_device(v) for k, v in case.arrays.items()}
    output = getattr(nb, name)(**on_device, **case.params)
    grads = getattr(nb, f"{name}_backward")(cuda.to_device(case.grad_output), **on_device,
                                            **case.params)
    assert cuda.devicearray.is_cuda_ndarray(output)
    assert all(v is None or cuda.devicearray.is_cuda_ndarray(v) for v in vars(grads).values())
    assert_matches_reference(name, case, output.copy_to_host(), type(grads)(
        **{k: None if v is None else v.copy_to_host() for k, v in vars(grads).items()}))


@pytest.mark.parametrize("on_device", [False, True], ids=["numpy", "device"])
@pytest.mark.parametrize("name,problem", [(name, problem) for name in OPERATORS
                                          for problem in bad_arguments(name)])
def test_numba_lsdfn_bad_arguments_raise_the_numpy_errors(nb, cuda, name, problem, on_device):
    move = cuda.to_device if on_device else (lambda array: array)
    assert not error_mismatches(name, getattr(nb, name), getattr(nb, f"{name}_backward"),
                                bad_arguments(name)[problem], move)

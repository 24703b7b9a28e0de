"""Every GPU backend offers every operator, with the NumPy signature plus its documented extras.

The public modules refdyn.gpu.cupy, refdyn.gpu.host and refdyn.gpu.numba bind the operators of
the ``<stem>_ops`` modules to their adapter (refdyn.gpu.backend), one line per operator.  Here:
the three modules offer the same operators, every registered operator among them; each has the
signature of the NumPy function of the same name in ``refdyn``, plus the arguments the registry
declares as ``gpu_extras`` and with its own defaults only for ``gpu_defaults``.
"""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest

import refdyn
from refdyn.registry import GPU_BACKENDS, OPERATORS

#: Public functions of refdyn that have no GPU mirror (NumPy-only helpers of a family).
NUMPY_ONLY = {"bilinear_sample", "bilinear_sample_backward", "filter_norm", "filter_norm_backward",
              "gradcheck", "lsdfn_kernels"}


def gpu_module(backend: str):
    """refdyn.gpu.<backend>; skipped only where its array library is not installed."""
    if backend == "cupy":
        pytest.importorskip("cupy")
    return importlib.import_module(f"refdyn.gpu.{backend}")


def operator_functions(module) -> dict:
    """The functions of ``module`` named like a public function of refdyn."""
    return {name: value for name, value in vars(module).items()
            if name in refdyn.__all__ and inspect.isfunction(value)}


def numpy_operators() -> set[str]:
    return {name for name in refdyn.__all__
            if inspect.isfunction(getattr(refdyn, name)) and name not in NUMPY_ONLY}


def declared_extras(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(gpu_extras, gpu_defaults) of the registered operator whose forward or backward is
    ``name``; none for the special cases (roi_pool, ps_roi_pool, modulated_deform_roi_pool)."""
    operator = OPERATORS.get(name.removesuffix("_backward"))
    return (operator.gpu_extras, operator.gpu_defaults) if operator else ((), ())


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_every_backend_offers_every_operator_with_a_gpu_mirror(backend):
    offered = set(operator_functions(gpu_module(backend)))
    registered = {f"{op.name}{suffix}" for op in OPERATORS.values() if "host" in op.implementations
                  for suffix in ("", "_backward")}
    assert registered <= numpy_operators()
    assert offered == numpy_operators(), (sorted(numpy_operators() - offered),
                                         sorted(offered - numpy_operators()))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_every_gpu_function_has_the_numpy_signature_plus_its_extras(backend):
    module = gpu_module(backend)
    for name, function in operator_functions(module).items():
        extras, own_defaults = declared_extras(name)
        reference = inspect.signature(getattr(refdyn, name)).parameters
        actual = inspect.signature(function).parameters
        added = [parameter for parameter in actual if parameter not in reference]
        assert set(added) <= set(extras), f"{backend}.{name} adds undeclared {added}"
        assert [p for p in actual if p in reference] == list(reference), \
            f"{backend}.{name}: parameters {list(actual)}, NumPy {list(reference)}"
        for parameter, expected in reference.items():
            got = actual[parameter]
            assert got.kind == expected.kind, f"{backend}.{name}({parameter}): {got.kind}"
            if parameter not in own_defaults:
                assert got.default == expected.default, f"{backend}.{name}({parameter})"
        assert function.__module__ == module.__name__ and function.__doc__, name


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_every_declared_extra_is_an_argument_of_the_backward(backend):
    """The declarations cannot go stale: each names an argument the backend's backward has."""
    module = gpu_module(backend)
    for op in OPERATORS.values():
        declared = set(op.gpu_extras + op.gpu_defaults)
        if declared:
            backward = inspect.signature(getattr(module, f"{op.name}_backward")).parameters
            assert declared <= set(backward), (backend, op.name, declared - set(backward))


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_deform_conv2d_chunks_of_images_give_the_whole_batch_result(backend, deterministic):
    """chunk_elements=1 runs one image at a time (every chunk boundary crossed); the result and
    every gradient equal the reference's, on every backend."""
    from refdyn.gpu import backend_problem
    if backend_problem(backend):
        pytest.skip(backend_problem(backend))
    module = gpu_module(backend)
    rng = np.random.default_rng(0)
    input, offset, mask, weight, bias, grad_output = (
        rng.uniform(-1, 1, shape) for shape in
        ((3, 2, 4, 4), (3, 2 * 9, 4, 4), (3, 9, 4, 4), (2, 2, 3, 3), (2,), (3, 2, 4, 4)))
    offset *= 2.0
    arguments = (input, offset, weight, bias, 1, 1, 1, mask)
    np.testing.assert_allclose(module.deform_conv2d(*arguments, chunk_elements=1),
                               refdyn.deform_conv2d(*arguments), rtol=1e-12, atol=1e-12)
    grads = module.deform_conv2d_backward(grad_output, *arguments, deterministic=deterministic,
                                          chunk_elements=1)
    expected = refdyn.deform_conv2d_backward(grad_output, *arguments)
    for name in ("grad_input", "grad_offset", "grad_weight", "grad_bias", "grad_mask"):
        np.testing.assert_allclose(getattr(grads, name), getattr(expected, name), rtol=1e-10,
                                   atol=1e-10, err_msg=f"{backend} {name}")

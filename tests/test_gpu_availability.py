"""How refdyn.gpu decides which GPU backends can run, without importing CuPy or Numba."""

import pytest

import refdyn.gpu as gpu


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown GPU backend 'opencl'"):
        gpu.backend_problem("opencl")


def test_cupy_needs_a_device(monkeypatch):
    monkeypatch.setattr(gpu, "cuda_device_count", lambda: 0)
    assert gpu.backend_problem("cupy") in ("no CUDA device",
                                           "cupy is not installed (pip install 'refdyn[gpu]')")


def test_numba_runs_under_the_simulator_without_a_device(monkeypatch):
    pytest.importorskip("numba")
    monkeypatch.setattr(gpu, "cuda_device_count", lambda: 0)
    monkeypatch.setenv(gpu.CUDA_SIMULATOR_VARIABLE, "1")
    assert gpu.backend_problem("numba") is None
    monkeypatch.setenv(gpu.CUDA_SIMULATOR_VARIABLE, "0")
    assert "no CUDA device" in gpu.backend_problem("numba")


def test_simulator_is_selected_only_without_a_device(monkeypatch):
    monkeypatch.delenv(gpu.CUDA_SIMULATOR_VARIABLE, raising=False)
    monkeypatch.setattr(gpu, "cuda_device_count", lambda: 1)
    gpu.use_numba_simulator_without_device()
    assert not gpu.numba_uses_simulator()
    monkeypatch.setattr(gpu, "cuda_device_count", lambda: 0)
    gpu.use_numba_simulator_without_device()
    assert gpu.numba_uses_simulator()


def test_host_backend_needs_a_compiler(monkeypatch):
    monkeypatch.setattr(gpu, "host_compiler", lambda: None)
    assert "no host C++ compiler" in gpu.backend_problem("host")


def test_device_count_is_a_non_negative_int():
    assert isinstance(gpu.cuda_device_count(), int) and gpu.cuda_device_count() >= 0

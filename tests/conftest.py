"""Test-wide settings: the Hypothesis profiles and the Numba CUDA simulator without a GPU."""

import os

from hypothesis import HealthCheck, settings

from refdyn.gpu import use_numba_simulator_without_device

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

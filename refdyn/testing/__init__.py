"""Tools to test deformable-operator implementations against refdyn.

- :func:`check_forward`, :func:`check_backward` (:mod:`refdyn.testing.conformance`): drive a
  user's function with an operator's Hypothesis strategy and compare it with refdyn; importing
  them needs ``hypothesis`` (the ``test`` extra), importing this package does not.
- :mod:`refdyn.testing.adapters`: the layouts of torchvision, mmcv, ONNX and the official DCN
  MXNet operators mapped onto refdyn's (NumPy only).
- :mod:`refdyn.testing.cases`: a test case (the arrays and parameters of one call) and
  dtype-aware comparison (NumPy only).
- :mod:`refdyn.testing.deform_conv_cases`: configurations of ``deform_conv2d`` and the
  arrays they describe (NumPy only).
- :mod:`refdyn.testing.strategies`: Hypothesis strategies drawing those configurations
  (needs ``hypothesis``, installed by the ``test`` extra).
"""

__all__ = ["check_forward", "check_backward"]


def __getattr__(name):
    # check_forward / check_backward import Hypothesis; load them on first use only.
    if name in __all__:
        from . import conformance
        return getattr(conformance, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Tools to test deformable-operator implementations against refdyn.

- :mod:`refdyn.testing.cases`: a test case (the arrays and parameters of one call) and
  dtype-aware comparison (NumPy only).
- :mod:`refdyn.testing.deform_conv_cases`: configurations of ``deform_conv2d`` and the
  arrays they describe (NumPy only).
- :mod:`refdyn.testing.strategies`: Hypothesis strategies drawing those configurations
  (needs ``hypothesis``, installed by the ``test`` extra).
"""

"""refdyn: reference implementations of deformable and dynamic-filter convolution operators.

NumPy forward and backward of every operator, in a literal version that follows the paper's
equations loop by loop and a vectorized default; GPU mirrors in :mod:`refdyn.gpu`; a
finite-difference checker in :mod:`refdyn.gradcheck`; every operator listed in
:mod:`refdyn.registry`.
"""

from .active_conv import active_conv2d, active_conv2d_backward
from .deform_conv import deform_conv2d, deform_conv2d_backward
from .deform_conv_args import DeformConvGrads
from .decoupled_dynamic_filter import ddf, ddf_backward
from .filter_normalization import filter_norm, filter_norm_backward
from .gradcheck import gradcheck

__all__ = ["active_conv2d", "active_conv2d_backward", "deform_conv2d", "deform_conv2d_backward",
           "DeformConvGrads", "ddf", "ddf_backward", "filter_norm", "filter_norm_backward",
           "gradcheck"]
__version__ = "0.1.0"

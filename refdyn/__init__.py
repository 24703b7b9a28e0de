"""refdyn: reference implementations of deformable and dynamic-filter convolution operators.

NumPy forward and backward of every operator, in a literal version that follows the paper's
equations loop by loop and a vectorized default; GPU mirrors in :mod:`refdyn.gpu`; a
finite-difference checker in :mod:`refdyn.finite_differences`; every operator listed in
:mod:`refdyn.registry`.
"""

from .active_conv_numpy import active_conv2d, active_conv2d_backward
from .deform_conv_numpy import deform_conv2d, deform_conv2d_backward
from .deform_conv_args import DeformConvGrads
from .ddf_numpy import ddf, ddf_backward
from .lsdfn_dfn_numpy import dfn, dfn_backward
from .ddf_filter_norm_numpy import filter_norm, filter_norm_backward
from .finite_differences import gradcheck
from .lsdfn_numpy import lsdfn, lsdfn_backward, lsdfn_kernels, \
    lsdfn_sample, lsdfn_sample_backward
from .lsdfn_args import DFNGrads, LSDFNGrads, LSDFNSampleGrads
from .mimic_loss_numpy import mimic_loss, mimic_loss_backward
from .roi_align_numpy import deform_roi_align, deform_roi_align_backward, modulated_deform_roi_pool, \
    ps_roi_align, ps_roi_align_backward, roi_align, roi_align_backward
from .roi_pool_numpy import deform_ps_roi_pool, deform_ps_roi_pool_backward, deform_roi_pool, \
    deform_roi_pool_backward, ps_roi_pool, ps_roi_pool_backward, roi_pool, roi_pool_backward
from .roi_args import RoIPoolGrads

__all__ = ["active_conv2d", "active_conv2d_backward", "deform_conv2d", "deform_conv2d_backward",
           "DeformConvGrads", "ddf", "ddf_backward", "filter_norm", "filter_norm_backward",
           "gradcheck", "mimic_loss", "mimic_loss_backward", "deform_roi_align",
           "deform_roi_align_backward", "modulated_deform_roi_pool", "roi_align",
           "roi_align_backward", "ps_roi_align", "ps_roi_align_backward", "deform_ps_roi_pool", "deform_ps_roi_pool_backward",
           "deform_roi_pool", "deform_roi_pool_backward", "ps_roi_pool", "ps_roi_pool_backward",
           "roi_pool", "roi_pool_backward", "RoIPoolGrads", "dfn", "dfn_backward",
           "DFNGrads", "lsdfn", "lsdfn_backward", "lsdfn_kernels", "lsdfn_sample",
           "lsdfn_sample_backward", "LSDFNGrads", "LSDFNSampleGrads"]
__version__ = "0.1.0"

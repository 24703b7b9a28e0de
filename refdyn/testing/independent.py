"""Independent computations that the operators must reduce to in special cases.

Written without any refdyn code (zero padding, strided and dilated windows, einsum), so a test
that compares an operator with them compares two separate derivations.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def plain_conv2d(input, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """Grouped cross-correlation: input (N, C_in, H, W), weight (C_out, C_in/groups, kh, kw)
    -> (N, C_out, H_out, W_out); stride, padding, dilation are (h, w) pairs; zero padding."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    out_channels, in_per_group, kh, kw = weight.shape
    groups = input.shape[1] // in_per_group
    padded = np.pad(input, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    windows = sliding_window_view(padded, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]                    # (N, C, Ho, Wo, kh, kw)
    n, _, out_h, out_w = windows.shape[:4]
    windows = windows.reshape(n, groups, in_per_group, out_h, out_w, kh, kw)
    grouped_weight = weight.reshape(groups, out_channels // groups, in_per_group, kh, kw)
    out = np.einsum("ngchwab,gocab->ngohw", windows, grouped_weight)
    out = out.reshape(n, out_channels, out_h, out_w)
    return out if bias is None else out + bias[None, :, None, None]

"""Hypothesis strategies that draw valid operator configurations.

Each strategy draws a configuration dataclass (NumPy-free, shrinkable, printable); turn it into
arrays with the family's ``make_case``.  Example, in a user's own test suite::

    from hypothesis import given
    from refdyn.testing.strategies import deform_conv2d_configs
    from refdyn.testing.deform_conv_cases import make_case

    @given(deform_conv2d_configs(dtypes=("float32",)))
    def test_my_kernel(config):
        case = make_case(config)
        ...
"""

from __future__ import annotations

import math
from typing import Sequence

from hypothesis import strategies as st

from .active_conv_cases import ActiveConvConfig
from .bilinear_cases import KINK_FREE_POINT_KINDS, POINT_KINDS, BilinearConfig
from .ddf_cases import DDFConfig
from .deform_conv_cases import KINK_FREE_OFFSET_KINDS, OFFSET_KINDS, DeformConvConfig


@st.composite
def deform_conv2d_configs(draw, *, dtypes: Sequence[str] = ("float64", "float32"),
                          kink_free: bool = False, offset_kinds: Sequence[str] = OFFSET_KINDS,
                          max_batch: int = 2, max_channels_per_group: int = 2,
                          max_extent: int = 7, max_kernel: int = 3,
                          coord_grads: Sequence[str] = ("torchvision", "mmcv"),
                          boundaries: Sequence[str] = ("zeros", "border")) -> DeformConvConfig:
    """Valid ``deform_conv2d`` configurations: every shape, stride, padding, dilation, groups
    and offset-groups combination within the limits, with optional mask and bias.

    offset_kinds: which offset distributions to draw (see :mod:`refdyn.testing.deform_conv_cases`);
    kink_free: keep only the kink-free ones among them (for finite-difference checks).
    """
    if kink_free:
        offset_kinds = [kind for kind in offset_kinds if kind in KINK_FREE_OFFSET_KINDS]
    kernel = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    # The padded input must hold the dilated kernel: H + 2 pad >= dil (k - 1) + 1.
    extents = []
    for axis in range(2):
        smallest = max(1, dilation[axis] * (kernel[axis] - 1) + 1 - 2 * padding[axis])
        extents.append(draw(st.integers(smallest, max(smallest, max_extent))))
    groups = draw(st.integers(1, 2))
    offset_groups = draw(st.integers(1, 2))
    channel_unit = math.lcm(groups, offset_groups)
    in_channels = channel_unit * draw(st.integers(1, max_channels_per_group))
    out_channels = groups * draw(st.integers(1, max_channels_per_group))
    return DeformConvConfig(
        batch=draw(st.sampled_from([1, *range(2, max_batch + 1), 0])),  # shrinks towards 1
        in_channels=in_channels, out_channels=out_channels,
        height=extents[0], width=extents[1], kernel=kernel, stride=stride, padding=padding,
        dilation=dilation, groups=groups, offset_groups=offset_groups,
        with_mask=draw(st.booleans()), with_bias=draw(st.booleans()),
        offset_kind=draw(st.sampled_from(tuple(offset_kinds))),
        offset_scale=draw(st.sampled_from((0.5, 2.0, 4.0))),
        dtype=draw(st.sampled_from(tuple(dtypes))),
        coord_grad=draw(st.sampled_from(tuple(coord_grads))),
        boundary=draw(st.sampled_from(tuple(boundaries))),
        seed=draw(st.integers(0, 2**16)))


@st.composite
def bilinear_sample_configs(draw, *, dtypes: Sequence[str] = ("float64", "float32"),
                            kink_free: bool = False, point_kinds: Sequence[str] = POINT_KINDS,
                            max_extent: int = 6) -> BilinearConfig:
    """Valid ``bilinear_sample`` configurations: image sizes from 1 x 1, points of every kind,
    both boundary rules and both offset-gradient rules."""
    if kink_free:
        point_kinds = [kind for kind in point_kinds if kind in KINK_FREE_POINT_KINDS]
    return BilinearConfig(
        channels=draw(st.sampled_from([1, 2, 3, 0])),
        height=draw(st.integers(1, max_extent)), width=draw(st.integers(1, max_extent)),
        points=draw(st.integers(1, 8)), point_kind=draw(st.sampled_from(tuple(point_kinds))),
        boundary=draw(st.sampled_from(("zeros", "border"))),
        coord_grad=draw(st.sampled_from(("torchvision", "mmcv"))),
        dtype=draw(st.sampled_from(tuple(dtypes))), seed=draw(st.integers(0, 2**16)))


@st.composite
def active_conv2d_configs(draw, *, dtypes: Sequence[str] = ("float64", "float32"),
                          kink_free: bool = False, position_kinds: Sequence[str] = OFFSET_KINDS,
                          max_batch: int = 2, max_extent: int = 7,
                          boundaries: Sequence[str] = ("zeros", "border")) -> ActiveConvConfig:
    """Valid ``active_conv2d`` configurations: kernel, stride, padding, groups and position
    groups (1, 2 or one per output channel), positions of every kind, both boundary rules."""
    if kink_free:
        position_kinds = [kind for kind in position_kinds if kind in KINK_FREE_OFFSET_KINDS]
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    extents = [draw(st.integers(max(1, kernel[axis] - 2 * padding[axis]), max_extent))
               for axis in range(2)]
    groups = draw(st.integers(1, 2))
    in_channels = groups * draw(st.integers(1, 2))
    out_channels = groups * draw(st.integers(1, 2)) * draw(st.integers(1, 2))
    position_groups = draw(st.sampled_from(sorted({1, out_channels, *(
        p for p in (2,) if out_channels % p == 0)})))
    return ActiveConvConfig(
        batch=draw(st.sampled_from([1, *range(2, max_batch + 1), 0])),
        in_channels=in_channels, out_channels=out_channels, height=extents[0],
        width=extents[1], kernel=kernel, stride=stride, padding=padding, groups=groups,
        position_groups=position_groups, with_bias=draw(st.booleans()),
        position_kind=draw(st.sampled_from(tuple(position_kinds))),
        position_scale=draw(st.sampled_from((0.5, 2.0, 4.0))),
        boundary=draw(st.sampled_from(tuple(boundaries))),
        coord_grad=draw(st.sampled_from(("torchvision", "mmcv"))),
        dtype=draw(st.sampled_from(tuple(dtypes))), seed=draw(st.integers(0, 2**16)))


@st.composite
def ddf_configs(draw, *, dtypes: Sequence[str] = ("float64", "float32"), kink_free: bool = False,
                max_batch: int = 2, max_channels_per_head: int = 2, max_extent: int = 7,
                kernel_sizes: Sequence[int] = (1, 3, 5),
                kernel_combines: Sequence[str] = ("mul", "add")) -> DDFConfig:
    """Valid ``ddf`` configurations: odd kernels, strides that do and do not divide the image,
    dilations reaching past the border, one to three heads, both kernel combinations.

    kink_free is accepted for a uniform interface and ignored: the operator has no kinks.
    """
    del kink_free
    stride = draw(st.integers(1, 3))
    head = draw(st.integers(1, 3))
    return DDFConfig(
        batch=draw(st.sampled_from([1, *range(2, max_batch + 1), 0])),  # shrinks towards 1
        channels=head * draw(st.integers(1, max_channels_per_head)),
        height=draw(st.integers(stride, max(stride, max_extent))),
        width=draw(st.integers(stride, max(stride, max_extent))),
        kernel_size=draw(st.sampled_from(tuple(kernel_sizes))),
        dilation=draw(st.integers(1, 3)), stride=stride, head=head,
        kernel_combine=draw(st.sampled_from(tuple(kernel_combines))),
        dtype=draw(st.sampled_from(tuple(dtypes))), seed=draw(st.integers(0, 2**16)))

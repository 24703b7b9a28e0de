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
from .lsdfn_cases import DFNConfig, LSDFNConfig, LSDFNSampleConfig
from .deform_conv_cases import KINK_FREE_OFFSET_KINDS, OFFSET_KINDS, DeformConvConfig
from .mimic_loss_cases import MimicLossConfig
from .roi_cases import KINK_FREE_OFFSET_KINDS as ROI_KINK_FREE_OFFSET_KINDS
from .roi_cases import OFFSET_KINDS as ROI_OFFSET_KINDS
from .roi_cases import ROI_KINDS, RoIPoolConfig


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
                            max_extent: int = 6,
                            boundaries: Sequence[str] = ("zeros", "border"),
                            coord_grads: Sequence[str] = ("torchvision", "mmcv")) -> BilinearConfig:
    """Valid ``bilinear_sample`` configurations: image sizes from 1 x 1, points of every kind,
    both boundary rules and both offset-gradient rules."""
    if kink_free:
        point_kinds = [kind for kind in point_kinds if kind in KINK_FREE_POINT_KINDS]
    return BilinearConfig(
        channels=draw(st.sampled_from([1, 2, 3, 0])),
        height=draw(st.integers(1, max_extent)), width=draw(st.integers(1, max_extent)),
        points=draw(st.integers(1, 8)), point_kind=draw(st.sampled_from(tuple(point_kinds))),
        boundary=draw(st.sampled_from(tuple(boundaries))),
        coord_grad=draw(st.sampled_from(tuple(coord_grads))),
        dtype=draw(st.sampled_from(tuple(dtypes))), seed=draw(st.integers(0, 2**16)))


@st.composite
def active_conv2d_configs(draw, *, dtypes: Sequence[str] = ("float64", "float32"),
                          kink_free: bool = False, position_kinds: Sequence[str] = OFFSET_KINDS,
                          max_batch: int = 2, max_extent: int = 7,
                          boundaries: Sequence[str] = ("zeros", "border"),
                          coord_grads: Sequence[str] = ("torchvision", "mmcv")) -> ActiveConvConfig:
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
        coord_grad=draw(st.sampled_from(tuple(coord_grads))),
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


def _roi_pool_configs(operator: str):
    """A strategy factory for one RoI operator (see :mod:`refdyn.testing.roi_cases`)."""

    @st.composite
    def configs(draw, *, dtypes: Sequence[str] = ("float64", "float32"), kink_free: bool = False,
                roi_kinds: Sequence[str] = ROI_KINDS, offset_kinds: Sequence[str] = ROI_OFFSET_KINDS,
                max_rois: int = 4, max_extent: int = 7,
                coord_grads: Sequence[str] = ("torchvision", "mmcv")) -> RoIPoolConfig:
        """Valid configurations: every RoI kind (empty RoI lists included), 1 to 3 bins per
        axis, fixed and adaptive sampling, optional offsets and mask, offsets of every kind
        (kink-free ones only with ``kink_free``), both offset-gradient rules of
        deform_roi_align (only the derivative, ``"torchvision"``, with ``kink_free``: mmcv's
        rule is not the derivative where a sample is clamped)."""
        if kink_free:
            offset_kinds = [kind for kind in offset_kinds if kind in ROI_KINK_FREE_OFFSET_KINDS]
            coord_grads = [rule for rule in coord_grads if rule == "torchvision"]
        output_dim = draw(st.integers(1, 2))
        return RoIPoolConfig(
            operator=operator,
            batch=draw(st.integers(1, 2)), channels=output_dim * draw(st.integers(1, 2)),
            height=draw(st.integers(1, max_extent)), width=draw(st.integers(1, max_extent)),
            rois=draw(st.sampled_from([*range(1, max_rois + 1), 0])),
            roi_kind=draw(st.sampled_from(tuple(roi_kinds))),
            pooled=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
            spatial_scale=draw(st.sampled_from((1.0, 0.5, 0.25))),
            sampling_ratio=draw(st.integers(0, 2)), aligned=draw(st.booleans()),
            with_offset=draw(st.booleans()), with_mask=draw(st.booleans()),
            offset_kind=draw(st.sampled_from(tuple(offset_kinds))),
            gamma=draw(st.sampled_from((0.1, 0.5))), group_size=draw(st.integers(1, 2)),
            classes=draw(st.sampled_from([1, output_dim])), part_size=draw(st.integers(0, 2)),
            sample_per_part=draw(st.integers(1, 2)),
            coord_grad=draw(st.sampled_from(tuple(coord_grads))),
            dtype=draw(st.sampled_from(tuple(dtypes))), seed=draw(st.integers(0, 2**16)))

    configs.__name__ = f"{operator}_configs"
    return configs


roi_align_configs = _roi_pool_configs("roi_align")
ps_roi_align_configs = _roi_pool_configs("ps_roi_align")
deform_roi_align_configs = _roi_pool_configs("deform_roi_align")
deform_roi_pool_configs = _roi_pool_configs("deform_roi_pool")
deform_ps_roi_pool_configs = _roi_pool_configs("deform_ps_roi_pool")


@st.composite
def mimic_loss_configs(draw, *, dtypes: Sequence[str] = ("float64", "float32"),
                       kink_free: bool = False, max_rois: int = 4) -> MimicLossConfig:
    """Valid ``mimic_loss`` configurations: 0 to ``max_rois`` RoIs, feature maps of 1 to 8
    entries, with or without a zero feature vector.  kink_free is accepted and ignored (the
    loss is smooth away from zero vectors, which the finite-difference cases do not perturb
    across)."""
    del kink_free
    return MimicLossConfig(
        rois=draw(st.sampled_from([*range(1, max_rois + 1), 0])),
        feature_shape=(draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))),
        zero_row=draw(st.booleans()), dtype=draw(st.sampled_from(tuple(dtypes))),
        seed=draw(st.integers(0, 2**16)))


@st.composite
def lsdfn_configs(draw, *, dtypes: Sequence[str] = ("float64", "float32"),
                  kink_free: bool = False, max_batch: int = 2, max_channels: int = 2,
                  max_extent: int = 5, max_samples: int = 3, max_kernel: int = 3,
                  attentions: Sequence = ("factorized", "full", None),
                  fuses: Sequence[str] = ("sum", "max")) -> LSDFNConfig:
    """Valid ``lsdfn`` configurations: s and k from 1 (even ones too), sample strides whose
    samples reach past the border, every attention, fusion, indexing and kernel form.

    kink_free: draw only fuse="sum" (LS-DFN reads at integer offsets; max fusion's ties are its
    only kinks).
    """
    if kink_free:
        fuses = [fuse for fuse in fuses if fuse == "sum"]
    return LSDFNConfig(
        batch=draw(st.sampled_from([1, *range(2, max_batch + 1), 0])),  # shrinks towards 1
        channels=draw(st.integers(1, max_channels)),
        out_channels=draw(st.integers(1, max_channels)),
        height=draw(st.integers(1, max_extent)), width=draw(st.integers(1, max_extent)),
        samples=draw(st.integers(1, max_samples)), gamma=draw(st.integers(1, 3)),
        kernel_size=draw(st.integers(1, max_kernel)), residual=draw(st.booleans()),
        attention=draw(st.sampled_from(tuple(attentions))),
        fuse=draw(st.sampled_from(tuple(fuses))),
        indexing=draw(st.sampled_from(("centred", "paper"))),
        kernel_form=draw(st.sampled_from(("described", "printed"))),
        dtype=draw(st.sampled_from(tuple(dtypes))), seed=draw(st.integers(0, 2**16)))


@st.composite
def lsdfn_sample_configs(draw, *, dtypes: Sequence[str] = ("float64", "float32"),
                         kink_free: bool = False, max_batch: int = 2, max_channels: int = 2,
                         max_extent: int = 5, max_samples: int = 3,
                         max_kernel: int = 3) -> LSDFNSampleConfig:
    """Valid ``lsdfn_sample`` (Eq. 2) configurations; kink_free is accepted for a uniform
    interface and ignored (integer offsets, no kinks)."""
    del kink_free
    return LSDFNSampleConfig(
        batch=draw(st.sampled_from([1, *range(2, max_batch + 1), 0])),
        channels=draw(st.integers(1, max_channels)),
        out_channels=draw(st.integers(1, max_channels)),
        height=draw(st.integers(1, max_extent)), width=draw(st.integers(1, max_extent)),
        samples=draw(st.integers(1, max_samples)), gamma=draw(st.integers(1, 3)),
        kernel_size=draw(st.integers(1, max_kernel)),
        indexing=draw(st.sampled_from(("centred", "paper"))),
        dtype=draw(st.sampled_from(tuple(dtypes))), seed=draw(st.integers(0, 2**16)))


@st.composite
def dfn_configs(draw, *, dtypes: Sequence[str] = ("float64", "float32"), kink_free: bool = False,
                max_batch: int = 2, max_channels: int = 3, max_extent: int = 6,
                max_kernel: int = 5) -> DFNConfig:
    """Valid ``dfn`` configurations: shared or per-channel filters, with or without the softmax;
    kink_free is accepted for a uniform interface and ignored (no kinks)."""
    del kink_free
    return DFNConfig(
        batch=draw(st.sampled_from([1, *range(2, max_batch + 1), 0])),
        channels=draw(st.integers(1, max_channels)),
        height=draw(st.integers(1, max_extent)), width=draw(st.integers(1, max_extent)),
        kernel_size=draw(st.integers(1, max_kernel)), per_channel=draw(st.booleans()),
        softmax=draw(st.booleans()), dtype=draw(st.sampled_from(tuple(dtypes))),
        seed=draw(st.integers(0, 2**16)))

"""What a deformable or dynamic-filter network looks at: the analysis quantities of DCNv1 and
DCNv2 (docs/conventions.md section 7), in NumPy, for stacks of registered operators.

- **Sampling locations** (DCNv1 section 4.1, Fig. 5): where each output of a sampling layer reads
  its input, p0 + p_k + dp_k (DCNv1 Eq. 2), and the *composite* locations of one output through
  a stack of layers: K^L points in the image for L layers of K taps.
- **Effective dilation** (DCNv1 section 4.1, Table 2): the mean distance between all adjacent
  pairs of sampling locations of one filter.
- **Effective receptive field** (DCNv2 section 2, after Luo et al.): |d node / d input pixel|,
  by a one-hot ``grad_output`` at the node and the layers' own backwards, chained.
- **Effective sampling / bin locations** (DCNv2 section 2): the gradient of the node with respect
  to each sampling location of a deformable layer, or to each bin of a deformable RoI pooling,
  drawn as weighted points.
- **Error-bounded saliency region** (DCNv2 section 2 and its appendix): the smallest image region
  that, with the rest of the image masked, gives the node's full-image response within an
  error bound; found by progressive masking.

A stack is a list of :class:`OperatorLayer`, each a registered operator (:mod:`refdyn.registry`)
with every argument except its input fixed; layer 0 reads the image, layer l reads the output of
layer l - 1.  Arrays are float64 NCHW; a point is (y, x) = (row, column).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from .args import check_float_array, check_shape
from .active_conv_numpy import grouped_positions, check_active_conv2d_args
from .bilinear_numpy import bilinear_sample
from .deform_conv_numpy import regular_grid
from .deform_conv_args import ConvGeometry, check_deform_conv2d_args
from .registry import OPERATORS, REFERENCE_BACKEND
from .roi_align_numpy import align_grid
from .roi_pool_numpy import eq5_grid

SALIENCY_DIRECTIONS = ("grow", "shrink")


# ---------------------------------------------------------------------------------------------
# Stacks of registered operators
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OperatorLayer:
    """One layer of a stack: the registered operator ``operator`` with ``arguments`` (every
    argument but the input, by the operator's own names) on ``backend``.

    The input is the operator's first differentiable argument (``input``, ``features`` or
    ``image``), and its gradient is the backward's ``grad_<that name>``.
    """

    operator: str
    arguments: Mapping[str, object] = field(default_factory=dict)
    backend: str = REFERENCE_BACKEND

    def __post_init__(self):
        if self.operator not in OPERATORS:
            raise ValueError(f"operator must be a registered operator, one of "
                             f"{sorted(OPERATORS)}, got {self.operator!r}")
        if self.backend not in OPERATORS[self.operator].implementations:
            raise ValueError(f"backend {self.backend!r} is not an implementation of "
                             f"{self.operator}")

    @property
    def input_name(self) -> str:
        return OPERATORS[self.operator].differentiable[0]

    def forward(self, x: np.ndarray) -> np.ndarray:
        forward, _ = OPERATORS[self.operator].implementation(self.backend).load()
        return forward(**{self.input_name: x}, **self.arguments)

    def backward(self, grad_output: np.ndarray, x: np.ndarray, **overrides):
        """The operator's gradient record at input ``x`` (``overrides`` replace arguments)."""
        _, backward = OPERATORS[self.operator].implementation(self.backend).load()
        return backward(grad_output, **{self.input_name: x}, **{**self.arguments, **overrides})

    def input_gradient(self, grad_output: np.ndarray, x: np.ndarray) -> np.ndarray:
        return getattr(self.backward(grad_output, x), f"grad_{self.input_name}")


def _check_stack(layers: Sequence[OperatorLayer]) -> None:
    if not layers or not all(isinstance(layer, OperatorLayer) for layer in layers):
        raise TypeError("layers must be a non-empty sequence of OperatorLayer")


def _layer_inputs(layers: Sequence[OperatorLayer], image: np.ndarray) -> list[np.ndarray]:
    """The input of every layer and, last, the output of the stack."""
    _check_stack(layers)
    check_float_array(image, "image", 4)
    values = [image]
    for layer in layers:
        values.append(layer.forward(values[-1]))
    return values


def _check_node(node, shape: tuple[int, ...], name: str = "node") -> tuple[int, ...]:
    """``node`` as a tuple of ints indexing an array of ``shape``."""
    node = tuple(node)
    if len(node) != len(shape) or not all(isinstance(v, (int, np.integer)) for v in node):
        raise ValueError(f"{name} must be {len(shape)} integer indices into shape {shape}, "
                         f"got {node!r}")
    if not all(0 <= v < size for v, size in zip(node, shape)):
        raise ValueError(f"{name} {node!r} is out of range for shape {shape}")
    return tuple(int(v) for v in node)


def _grad_at_layer_output(layers, values, node, layer_index: int) -> np.ndarray:
    """d node / d (output of layer ``layer_index``): one-hot at the node, chained backwards."""
    grad = np.zeros_like(values[-1])
    grad[_check_node(node, values[-1].shape)] = 1.0
    for index in range(len(layers) - 1, layer_index, -1):
        grad = layers[index].input_gradient(grad, values[index])
    return grad


# ---------------------------------------------------------------------------------------------
# Sampling locations and effective dilation (DCNv1 section 4.1)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SamplingLayer:
    """Where one sampling layer reads its input: the kernel ``geometry`` and the offset of every
    tap at every output position, ``offsets`` (K, 2, H_out, W_out) = (dy, dx) per tap k = a kw + b
    (one image and one offset group of the torchvision layout)."""

    geometry: ConvGeometry
    offsets: np.ndarray


def _deform_conv2d_sampling(layer: OperatorLayer, input_shape, image: int, group: int):
    arguments = dict(layer.arguments)
    offset = arguments.pop("offset")
    geo = check_deform_conv2d_args(np.broadcast_to(np.zeros((), offset.dtype), input_shape),
                                   offset, **arguments)
    _check_node((image, group), (geo.batch, geo.offset_groups), "(image, group)")
    offsets = offset[image].reshape(geo.offset_groups, geo.taps, 2, geo.out_h, geo.out_w)[group]
    return SamplingLayer(geo, offsets.astype(np.float64))


def _active_conv2d_sampling(layer: OperatorLayer, input_shape, image: int, group: int):
    arguments = {"bias": None, "stride": 1, "padding": 0, "boundary": "zeros", **layer.arguments}
    positions = arguments["positions"]
    geo, _ = check_active_conv2d_args(np.broadcast_to(np.zeros((), positions.dtype), input_shape),
                                      positions, arguments["weight"], arguments["bias"],
                                      arguments["stride"], arguments["padding"],
                                      arguments["boundary"])
    grouped = grouped_positions(positions)
    _check_node((image, group), (geo.batch, grouped.shape[0]), "(image, group)")
    offsets = np.broadcast_to(grouped[group][:, :, None, None], (geo.taps, 2, geo.out_h, geo.out_w))
    return SamplingLayer(geo, offsets.astype(np.float64))


#: The registered operators that sample their input on a kernel grid moved by offsets, and how
#: to read their :class:`SamplingLayer` from their arguments.  A plain convolution is
#: ``deform_conv2d`` with zero offsets.
SAMPLING_OPERATORS: dict[str, Callable[..., SamplingLayer]] = {
    "deform_conv2d": _deform_conv2d_sampling,    # offset (N, 2 G K, H_out, W_out); group = G index
    "active_conv2d": _active_conv2d_sampling,    # positions (K, 2) or (P, K, 2); group = P index
}


def sampling_layer(layer: OperatorLayer, input_shape, *, image: int = 0,
                   group: int = 0) -> SamplingLayer:
    """The :class:`SamplingLayer` of ``layer`` applied to an input of ``input_shape``
    (N, C_in, H, W), for image ``image`` and offset / position group ``group``."""
    if layer.operator not in SAMPLING_OPERATORS:
        raise ValueError(f"layer.operator must be a sampling operator, one of "
                         f"{sorted(SAMPLING_OPERATORS)}, got {layer.operator!r}")
    return SAMPLING_OPERATORS[layer.operator](layer, tuple(input_shape), image, group)


def sampling_locations(layer: SamplingLayer) -> np.ndarray:
    """p0 + p_k + dp_k (DCNv1 Eq. 2) of every tap and output: (K, 2, H_out, W_out), (y, x)
    in the layer's input coordinates."""
    geo = layer.geometry
    base_y, base_x = regular_grid(geo, slice(0, geo.out_h * geo.out_w))        # p0 + p_k, (K, L)
    base = np.stack([base_y, base_x], axis=1).reshape(geo.taps, 2, geo.out_h, geo.out_w)
    return base + layer.offsets


def _locations_at(layer: SamplingLayer, points: np.ndarray) -> np.ndarray:
    """Sampling locations of output positions ``points`` (M, 2), which may be fractional:
    (M, K, 2).  p0 + p_k is affine in the output position (p0 = i stride - pad), so it is the
    grid of output (0, 0) moved by stride times the position; the offsets are bilinearly
    interpolated between the four nearest outputs, clamped to the output map at its edge."""
    geo = layer.geometry
    origin = np.stack(regular_grid(geo, slice(0, 1)), axis=1)[..., 0].astype(np.float64)  # (K, 2)
    base = origin[None] + (points * np.array(geo.stride, dtype=np.float64))[:, None, :]
    offsets = bilinear_sample(layer.offsets, points[:, 0].copy(), points[:, 1].copy(), "border")
    return base + offsets.transpose(2, 0, 1)


def composite_sampling_locations(layers: Sequence[SamplingLayer], node) -> list[np.ndarray]:
    """The sampling locations of output ``node`` = (i, j) of the last layer through the whole
    stack (DCNv1 Fig. 5), level by level from the top.

    ``layers[0]`` reads the image and ``layers[l]`` the output of ``layers[l - 1]``.  Level 0 is
    the K_L locations of the node in the input of the last layer; level t holds the locations,
    in the input of layer L - 1 - t, of every point of level t - 1: K_L ... K_{L-t} points in
    the order (point of level t - 1, tap).  The last level is in image coordinates.

    A location between outputs of the layer below takes that layer's offsets interpolated
    bilinearly from its four nearest outputs (exact at integer locations, e.g. with zero
    offsets); outside the layer's output map the offsets of the nearest edge output are used.
    Returns a list of L arrays (M_t, 2).
    """
    if not layers or not all(isinstance(layer, SamplingLayer) for layer in layers):
        raise TypeError("layers must be a non-empty sequence of SamplingLayer")
    for lower, upper in zip(layers, layers[1:]):
        if (upper.geometry.height, upper.geometry.width) != (lower.geometry.out_h,
                                                              lower.geometry.out_w):
            raise ValueError("layers must chain: each layer's input size must be the output "
                             "size of the layer before it")
    top = layers[-1].geometry
    points = np.array([_check_node(node, (top.out_h, top.out_w))], dtype=np.float64)
    levels = []
    for layer in reversed(layers):
        points = _locations_at(layer, points).reshape(-1, 2)
        levels.append(points)
    return levels


def effective_dilation(locations: np.ndarray, kernel_size) -> np.ndarray:
    """Effective dilation of each filter (DCNv1 section 4.1): the mean distance between all
    adjacent pairs of its sampling locations, adjacent meaning neighbouring taps (a, b), (a, b+1)
    or (a, b), (a+1, b) of the kh x kw kernel grid: kh (kw - 1) + (kh - 1) kw pairs.

    locations (K, 2, ...) with K = kh kw, as from :func:`sampling_locations`.  On the regular
    grid of a convolution with dilation d (in both directions) every filter gives d.
    Returns (...).
    """
    kernel_h, kernel_w = (kernel_size, kernel_size) if np.isscalar(kernel_size) else kernel_size
    if kernel_h * kernel_w < 2:
        raise ValueError(f"kernel_size must have at least two taps, got {kernel_size!r}")
    locations = np.asarray(locations, dtype=np.float64)
    if locations.ndim < 2 or locations.shape[:2] != (kernel_h * kernel_w, 2):
        raise ValueError(f"locations must have shape (K, 2, ...) with K = kh * kw = "
                         f"{kernel_h * kernel_w}, got {locations.shape}")
    grid = locations.reshape((kernel_h, kernel_w) + locations.shape[1:])
    along_rows = np.linalg.norm(np.diff(grid, axis=1), axis=2)        # (kh, kw - 1, ...)
    along_columns = np.linalg.norm(np.diff(grid, axis=0), axis=2)     # (kh - 1, kw, ...)
    pairs = kernel_h * (kernel_w - 1) + (kernel_h - 1) * kernel_w
    return (along_rows.sum(axis=(0, 1)) + along_columns.sum(axis=(0, 1))) / pairs


# ---------------------------------------------------------------------------------------------
# Effective receptive field and effective sampling locations (DCNv2 section 2)
# ---------------------------------------------------------------------------------------------

def node_input_gradient(layers: Sequence[OperatorLayer], image: np.ndarray, node) -> np.ndarray:
    """d node / d image: ``grad_output`` one-hot at ``node`` = (n, c, i, j) of the stack's
    output, taken down through every layer's own backward.  image (N, C, H, W) -> (N, C, H, W)."""
    values = _layer_inputs(layers, image)
    grad = _grad_at_layer_output(layers, values, node, 0)
    return layers[0].input_gradient(grad, values[0])


def effective_receptive_field(layers: Sequence[OperatorLayer], image: np.ndarray,
                              node) -> np.ndarray:
    """Effective receptive field of ``node`` (DCNv2 section 2): |d node / d pixel|, summed over
    the channels of the node's image.  Returns (H, W)."""
    return np.abs(node_input_gradient(layers, image, node)[node[0]]).sum(axis=0)


@dataclass
class EffectiveSamplingLocations:
    """The sampling locations of one deformable layer, weighted by their effect on a node.

    points (M, 2): every (y, x) location of the layer's image ``node[0]``, M = G K H_out W_out,
    in the order (offset group, tap, output row, output column);
    location_gradients (M, 2): d node / d p, the gradient with respect to the location itself
    (the layer's ``grad_offset``, since dp moves p one for one);
    contributions (M,): dm_k d node / d dm_k, the first-order change of the node when the
    sample is removed (the layer's ``grad_mask`` times the mask, with dm = 1 for DCNv1).
    """

    points: np.ndarray
    location_gradients: np.ndarray
    contributions: np.ndarray


def effective_sampling_locations(layers: Sequence[OperatorLayer], image: np.ndarray, node,
                                 layer_index: int = 0) -> EffectiveSamplingLocations:
    """Effective sampling locations (DCNv2 section 2) of the deformable layer
    ``layers[layer_index]`` for ``node`` = (n, c, i, j) of the stack's output.

    DCNv2 draws each sampling location weighted by the gradient of the node with respect to it.
    refdyn returns that gradient, d node / d p, and, because it vanishes where the image is flat,
    also the sample's contribution dm_k d node / d dm_k (the modulation of DCNv2 Eq. 1 scales one
    sample, so this is how much of the node the sample carries when the layers above are linear).
    Both come from the layer's own backward, fed d node / d (layer output).
    """
    values = _layer_inputs(layers, image)
    if not 0 <= layer_index < len(layers):
        raise ValueError(f"layer_index must be in [0, {len(layers)}), got {layer_index!r}")
    layer = layers[layer_index]
    if layer.operator != "deform_conv2d":
        raise ValueError(f"layers[layer_index] must be a deform_conv2d layer, got {layer.operator!r}")
    grad = _grad_at_layer_output(layers, values, node, layer_index)
    offset = layer.arguments["offset"]
    mask = layer.arguments.get("mask")
    if mask is None:                                           # DCNv1: dm_k = 1
        batch, pairs, out_h, out_w = offset.shape
        mask = np.ones((batch, pairs // 2, out_h, out_w), dtype=offset.dtype)
    grads = layer.backward(grad, values[layer_index], mask=mask)
    n = node[0]
    first = sampling_layer(layer, values[layer_index].shape, image=n)
    samplers = [first] + [sampling_layer(layer, values[layer_index].shape, image=n, group=g)
                          for g in range(1, first.geometry.offset_groups)]
    points = np.concatenate([sampling_locations(s).transpose(0, 2, 3, 1).reshape(-1, 2)
                             for s in samplers])
    location_gradients = grads.grad_offset[n].reshape(-1, 2, *offset.shape[2:])
    return EffectiveSamplingLocations(
        points=points,
        location_gradients=location_gradients.transpose(0, 2, 3, 1).reshape(-1, 2),
        contributions=(grads.grad_mask[n] * mask[n]).reshape(-1))


@dataclass
class EffectiveBinLocations:
    """The bins of one RoI of a deformable RoI pooling layer, weighted by their effect on a node.

    points (P_h P_w, 2): the (y, x) centre of each bin's samples after its offset, in
    feature-map pixels, bins in row-major order (NaN for a bin without samples);
    location_gradients (P_h P_w, 2): d node / d (bin shift in pixels), (y, x);
    contributions (P_h P_w,): sum_c g[c, i, j] y[c, i, j], the first-order change of the node
    when the bin is removed (exact when the node is linear in the pooled values).
    """

    points: np.ndarray
    location_gradients: np.ndarray
    contributions: np.ndarray


#: The deformable RoI pooling operators: the sampling grid of one RoI before offsets (a
#: :class:`refdyn.roi_pool_numpy.BinGrid`) from the call's bound arguments, and which offset
#: channels hold (y, x) (DCNv1's order, or mmcv's x first).
BIN_OPERATORS: dict[str, tuple[Callable, tuple[int, int]]] = {
    "deform_roi_pool": (lambda roi, pooled, a: eq5_grid(roi, pooled, a["spatial_scale"],
                                                        a["gamma"]), (0, 1)),
    "deform_roi_align": (lambda roi, pooled, a: align_grid(roi, pooled, a["spatial_scale"],
                                                           a["sampling_ratio"], True, a["gamma"]),
                         (1, 0)),
}


def effective_bin_locations(layer: OperatorLayer, features: np.ndarray, roi: int,
                            grad_pooled: np.ndarray) -> EffectiveBinLocations:
    """Effective bin locations (DCNv2 section 2) of RoI ``roi`` of the deformable RoI pooling
    ``layer`` (``deform_roi_pool`` or ``deform_roi_align``; ``arguments`` hold rois, offset and
    the rest) applied to ``features`` (N, C, H, W).

    grad_pooled (C_out, P_h, P_w): d node / d (pooled output of this RoI), from the layers
    above (the R-CNN head); for a node of the pooled output itself, a one-hot.  The location
    gradient is the layer's own ``grad_offset`` divided by the pixels one unit of normalized
    offset moves the bin (gamma h, gamma w; DCNv1 Eq. 6, so gamma must not be 0).
    """
    if layer.operator not in BIN_OPERATORS:
        raise ValueError(f"layer.operator must be a deformable RoI pooling operator, one of "
                         f"{sorted(BIN_OPERATORS)}, got {layer.operator!r}")
    make_grid, (y_channel, x_channel) = BIN_OPERATORS[layer.operator]
    forward, _ = OPERATORS[layer.operator].implementation(layer.backend).load()
    bound = inspect.signature(forward).bind(features, **layer.arguments)
    bound.apply_defaults()
    arguments = bound.arguments
    if arguments["offset"] is None:
        raise ValueError("layer.arguments must hold an offset (R, 2, P_h, P_w)")
    if arguments["gamma"] == 0:
        raise ValueError("gamma must not be 0: the offsets would not move the bins")
    pooled = layer.forward(features)
    rois, offset = np.asarray(arguments["rois"]), arguments["offset"]
    r = _check_node((roi,), (pooled.shape[0],), "roi")[0]
    check_float_array(grad_pooled, "grad_pooled", 3)
    check_shape(grad_pooled, "grad_pooled", pooled.shape[1:], "(C_out, P_h, P_w)")
    grad = np.zeros_like(pooled)
    grad[r] = grad_pooled
    grad_offset = layer.backward(grad, features).grad_offset[r].astype(np.float64)

    grid = make_grid(rois[r], pooled.shape[2:], arguments)
    shift_y = offset[r, y_channel].astype(np.float64) * grid.scale_y
    shift_x = offset[r, x_channel].astype(np.float64) * grid.scale_x
    y, x, valid = grid.points(shift_y[None], shift_x[None])
    with np.errstate(invalid="ignore", divide="ignore"):
        centres = np.stack([(y[0] * valid).sum(-1), (x[0] * valid).sum(-1)], axis=-1) \
            / valid.sum(-1)[..., None]
    location_gradients = np.stack([grad_offset[y_channel] / grid.scale_y,
                                   grad_offset[x_channel] / grid.scale_x], axis=-1)
    return EffectiveBinLocations(
        points=centres.reshape(-1, 2),
        location_gradients=location_gradients.reshape(-1, 2),
        contributions=(grad_pooled * pooled[r]).sum(axis=0).reshape(-1))


# ---------------------------------------------------------------------------------------------
# Error-bounded saliency region (DCNv2 section 2 and appendix)
# ---------------------------------------------------------------------------------------------

@dataclass
class SaliencyRegion:
    """mask (H, W), True inside the region; the node's response on the masked image and on the
    full image; relative_error = |masked - full| / |full|; evaluations: responses computed."""

    mask: np.ndarray
    response: float
    full_response: float
    relative_error: float
    evaluations: int


def square_window_priority(shape, centre) -> np.ndarray:
    """A priority map whose regions are the square windows (2r + 1) x (2r + 1) around ``centre``
    = (y, x): minus the Chebyshev distance to the centre.  shape (H, W) -> (H, W)."""
    height, width = shape
    centre_y, centre_x = _check_node(centre, (height, width), "centre")
    rows, columns = np.indices((height, width))
    return -np.maximum(np.abs(rows - centre_y), np.abs(columns - centre_x)).astype(np.float64)


def saliency_region(response: Callable[[np.ndarray], float], image: np.ndarray,
                    priority: np.ndarray, error_bound: float = 0.1, *, fill: float = 0.0,
                    direction: str = "grow") -> SaliencyRegion:
    """Error-bounded saliency region (DCNv2 section 2): the smallest region R such that the
    masked image (pixels outside R set to ``fill``, 0 for a mean-subtracted image) gives
    |response(masked) - response(image)| <= error_bound * |response(image)|.

    The candidates are nested: the regions {priority >= t} for every value t of ``priority``
    (H, W), e.g. :func:`square_window_priority` for square windows around the node, or the
    effective receptive field to add pixels in order of their gradient.  Progressive masking
    then either grows the region (``"grow"``: from the highest-priority pixels, the first region
    within the bound) or shrinks it (``"shrink"``: from the whole image, masking the
    lowest-priority pixels while the bound still holds).  The two agree when the error falls
    monotonically as the region grows; the whole image is always within the bound.

    response: image -> the node's value (a float); image (..., H, W), every leading channel
    masked alike.  Returns a :class:`SaliencyRegion`.
    """
    if not callable(response):
        raise TypeError("response must be a callable image -> float")
    check_float_array(image, "image", np.ndim(image))
    if np.ndim(image) < 2:
        raise ValueError(f"image must have shape (..., H, W), got {np.shape(image)}")
    check_float_array(priority, "priority", 2)
    check_shape(priority, "priority", image.shape[-2:], "(H, W) of the image")
    if not np.isfinite(priority).all():
        raise ValueError("priority must be finite")
    if not np.isfinite(error_bound) or error_bound < 0:
        raise ValueError(f"error_bound must be a finite number >= 0, got {error_bound!r}")
    if direction not in SALIENCY_DIRECTIONS:
        raise ValueError(f"direction must be one of {SALIENCY_DIRECTIONS}, got {direction!r}")

    full_response = float(response(image))
    tolerance = error_bound * abs(full_response)
    evaluations = 1

    def masked_response(mask):
        nonlocal evaluations
        evaluations += 1
        return float(response(np.where(mask, image, fill)))

    levels = np.unique(priority)                               # ascending
    chosen_mask, chosen_response = np.ones(priority.shape, dtype=bool), full_response
    if direction == "grow":
        for level in levels[::-1]:
            mask = priority >= level
            value = masked_response(mask)
            if abs(value - full_response) <= tolerance:
                chosen_mask, chosen_response = mask, value
                break
    else:
        for level in levels[1:]:
            mask = priority >= level
            value = masked_response(mask)
            if abs(value - full_response) > tolerance:
                break
            chosen_mask, chosen_response = mask, value
    error = abs(chosen_response - full_response)
    relative_error = error / abs(full_response) if full_response else (np.inf if error else 0.0)
    return SaliencyRegion(chosen_mask, chosen_response, full_response, float(relative_error),
                          evaluations)

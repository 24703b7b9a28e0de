"""Bilinear sampling G and its gradients (DCNv1 Eq. 3-4, Appendix A).

The value of an image x at a fractional point p = (p_y, p_x) is

    x(p) = sum_q G(q, p) x(q),    G(q, p) = g(q_y, p_y) g(q_x, p_x),    g(a, b) = max(0, 1 - |a - b|)   (Eq. 3-4)

Only the four integer neighbours q of p have G(q, p) != 0.  With y0 = floor(p_y), ly = p_y - y0
(likewise x0, lx) their weights are (1-ly)(1-lx), (1-ly)lx, ly(1-lx) and ly lx.

Gradients:
- with respect to the image, x(p) is linear: d x(p) / d x(q) = G(q, p), so the adjoint scatters
  the incoming gradient to the four neighbours with the same weights;
- with respect to the point (Appendix A, Eq. 7): d x(p)/d p_y = sum_q d g(q_y, p_y)/d p_y g(q_x, p_x) x(q).
  g has kinks where p_y is an integer.  Like every floor-based implementation, refdyn returns the
  **right derivative** there (ly = 0: a forward difference).

Boundary rules (docs/conventions.md section 1):
- ``"zeros"``: the image is zero-padded; the value is 0 when p_y <= -1, p_y >= H, p_x <= -1 or
  p_x >= W, and each neighbour outside the image reads 0 (DCN, torchvision, mmcv, ONNX).
- ``"border"``: the point is clamped to [0, H-1] x [0, W-1] first (edge replicated; the MXNet
  Active Convolution port).  The clamp has zero derivative outside the image.
- ``"roi_align"``: 0 when p_y < -1, p_y > H, p_x < -1 or p_x > W; otherwise the ``border``
  rule (torchvision roi_align / ps_roi_align, mmcv DeformRoIPool).  Only the sampling functions
  (:func:`sample_point`, :func:`sample_point_grad`, :func:`scatter_point`, :func:`make_stencil`)
  take it; the convolution operators accept :data:`BOUNDARY_RULES`.

Offset-gradient rules at the edge of the ``zeros`` rule (pytorch/vision issue 6885):
- ``"torchvision"``: the formula above with no early exit.  At p_y = -1 exactly it returns the
  right derivative, which reads row 0.
- ``"mmcv"`` (also the official DCNv2 code): 0 whenever p_y <= -1, p_y >= H, p_x <= -1 or p_x >= W.
The two differ only where a coordinate is exactly -1, which is every border output of a
padding-1 3x3 layer with zero offsets.

Under the ``roi_align`` rule the same two names mean (mmcv DeformRoIPool's backward):
- ``"torchvision"``: the right derivative of the sampled value, so 0 along an axis where the
  point is clamped (p_y < 0 or p_y >= H - 1).
- ``"mmcv"``: with (y_l, y_h) the rows the clamped point reads (y_l = y_h = H - 1 at the far
  edge) and p_y unclamped, d/d p_x = (y_h - p_y)(x(y_l, x_h) - x(y_l, x_l))
  + (p_y - y_l)(x(y_h, x_h) - x(y_h, x_l)), and likewise d/d p_y.  For -1 <= p_y < 0 this is
  the slope between rows 0 and 1 extrapolated to p_y, not 0; along an axis of collapsed
  neighbours (p >= size - 1) both derivatives are 0.

This module has two layers: scalar functions that follow the equations term by term
(:func:`g`, :func:`G`, :func:`sample_point`, :func:`sample_point_grad`) and array functions
that compute the same for many points at once (:func:`bilinear_sample`,
:func:`bilinear_sample_grad_image`, :func:`bilinear_sample_grad_coords`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .args import check_finite, check_float_array, check_grad_output, check_shape, \
    numpy_all_finite

BOUNDARY_RULES = ("zeros", "border")
SAMPLING_RULES = BOUNDARY_RULES + ("roi_align",)
COORD_GRAD_RULES = ("torchvision", "mmcv")


def check_boundary(boundary: str, rules: tuple[str, ...] = BOUNDARY_RULES) -> None:
    """Reject a boundary rule not in ``rules``."""
    if boundary not in rules:
        raise ValueError(f"boundary must be one of {rules}, got {boundary!r}")


def check_coord_grad(coord_grad: str) -> None:
    """Reject an unknown offset-gradient boundary rule."""
    if coord_grad not in COORD_GRAD_RULES:
        raise ValueError(f"coord_grad must be one of {COORD_GRAD_RULES}, got {coord_grad!r}")


# ---------------------------------------------------------------------------------------------
# Scalar, equation-by-equation versions (for reading beside the paper)
# ---------------------------------------------------------------------------------------------

def g(a: float, b: float) -> float:
    """The 1-D bilinear kernel g(a, b) = max(0, 1 - |a - b|) (DCNv1 Eq. 4)."""
    return max(0.0, 1.0 - abs(a - b))


def dg_db(a: float, b: float) -> float:
    """Right derivative of g(a, b) with respect to b.

    g(a, b) rises with slope +1 for b in [a - 1, a) and falls with slope -1 for b in [a, a + 1).
    At the kinks b = a - 1, a, a + 1 the slope to the right of b is returned.
    """
    if a - 1.0 <= b < a:
        return 1.0
    if a <= b < a + 1.0:
        return -1.0
    return 0.0


def G(q: tuple[float, float], p: tuple[float, float]) -> float:
    """The 2-D bilinear kernel G(q, p) = g(q_y, p_y) g(q_x, p_x) (DCNv1 Eq. 4)."""
    return g(q[0], p[0]) * g(q[1], p[1])


def _outside_roi_align(y: float, x: float, height: int, width: int) -> bool:
    """Whether the ``roi_align`` rule reads 0 at (y, x): beyond one pixel outside the image."""
    return y < -1 or y > height or x < -1 or x > width


def _clamp_point(y: float, x: float, height: int, width: int) -> tuple[float, float]:
    """The ``border`` rule's clamp of a point into [0, H-1] x [0, W-1]."""
    return min(max(y, 0.0), height - 1.0), min(max(x, 0.0), width - 1.0)


def _read(image: np.ndarray, qy: int, qx: int, boundary: str) -> float:
    """x(q) for an integer point q: 0 outside the image (``zeros``), else the nearest edge pixel."""
    height, width = image.shape
    if boundary == "border":
        return float(image[min(max(qy, 0), height - 1), min(max(qx, 0), width - 1)])
    if 0 <= qy < height and 0 <= qx < width:
        return float(image[qy, qx])
    return 0.0


def neighbours(y: float, x: float) -> list[tuple[int, int]]:
    """The four integer points q with G(q, p) possibly non-zero: floor(p) and its right/lower neighbours."""
    y0, x0 = math.floor(y), math.floor(x)
    return [(y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)]


def sample_point(image: np.ndarray, y: float, x: float, boundary: str = "zeros") -> float:
    """x(p) = sum_q G(q, p) x(q) for one point p = (y, x) of a 2-D image (DCNv1 Eq. 3).

    image: (H, W).  The sum runs over the four neighbours of p; every other q has G(q, p) = 0.
    """
    check_boundary(boundary, SAMPLING_RULES)
    height, width = image.shape
    if boundary == "roi_align":
        if _outside_roi_align(y, x, height, width):
            return 0.0
        boundary = "border"
    if boundary == "border":
        y, x = _clamp_point(y, x, height, width)
    elif y <= -1 or y >= height or x <= -1 or x >= width:
        return 0.0
    return sum(G(q, (y, x)) * _read(image, q[0], q[1], boundary) for q in neighbours(y, x))


def sample_point_grad(image: np.ndarray, y: float, x: float, boundary: str = "zeros",
                      coord_grad: str = "torchvision") -> tuple[float, float]:
    """(d x(p)/d p_y, d x(p)/d p_x) for one point (DCNv1 Appendix A, Eq. 7), right derivatives.

    d x(p)/d p_y = sum_q dg(q_y, p_y)/dp_y * g(q_x, p_x) * x(q), and likewise for p_x.
    ``coord_grad`` picks the rule at the edge of the ``zeros`` boundary (see the module docstring).
    """
    check_boundary(boundary, SAMPLING_RULES)
    check_coord_grad(coord_grad)
    height, width = image.shape
    slope_y = slope_x = 1.0
    if boundary == "roi_align":
        if _outside_roi_align(y, x, height, width):
            return 0.0, 0.0
        if coord_grad == "mmcv":
            return _mmcv_roi_align_grad(image, y, x)
        boundary = "border"
    if boundary == "border":
        # Right derivative of the clamp: 1 inside [0, H-1), 0 beyond.
        slope_y = 1.0 if 0.0 <= y < height - 1 else 0.0
        slope_x = 1.0 if 0.0 <= x < width - 1 else 0.0
        y, x = _clamp_point(y, x, height, width)
    elif coord_grad == "mmcv" and (y <= -1 or y >= height or x <= -1 or x >= width):
        return 0.0, 0.0
    grad_y = grad_x = 0.0
    for qy, qx in neighbours(y, x):
        value = _read(image, qy, qx, boundary)
        grad_y += dg_db(qy, y) * g(qx, x) * value
        grad_x += g(qy, y) * dg_db(qx, x) * value
    return slope_y * grad_y, slope_x * grad_x


def _clamped_neighbours(v: float, extent: int) -> tuple[int, int]:
    """The two coordinates a clamped point reads along one axis (both extent - 1 at the far edge)."""
    low = min(math.floor(min(max(v, 0.0), extent - 1.0)), extent - 1)
    return low, min(low + 1, extent - 1)


def _mmcv_roi_align_grad(image: np.ndarray, y: float, x: float) -> tuple[float, float]:
    """mmcv DeformRoIPool's (d/d p_y, d/d p_x) under the roi_align rule (module docstring): the
    slopes between the clamped point's neighbours, weighted by the unclamped point."""
    y_low, y_high = _clamped_neighbours(y, image.shape[0])
    x_low, x_high = _clamped_neighbours(x, image.shape[1])
    v00, v01 = float(image[y_low, x_low]), float(image[y_low, x_high])
    v10, v11 = float(image[y_high, x_low]), float(image[y_high, x_high])
    return ((x_high - x) * (v10 - v00) + (x - x_low) * (v11 - v01),
            (y_high - y) * (v01 - v00) + (y - y_low) * (v11 - v10))


def scatter_point(grad_image: np.ndarray, y: float, x: float, grad_value: float,
                  boundary: str = "zeros") -> None:
    """Adjoint of :func:`sample_point` for one point: grad_image[q] += G(q, p) grad_value.

    Under ``zeros`` a point with x(p) = 0 (outside (-1, H) x (-1, W)) and every neighbour outside
    the image receive nothing; under ``border`` the point is clamped and a neighbour outside the
    image passes its share to the edge pixel it reads.
    """
    height, width = grad_image.shape
    if boundary == "roi_align":
        if _outside_roi_align(y, x, height, width):
            return
        boundary = "border"
    if boundary == "border":
        y, x = _clamp_point(y, x, height, width)
    elif y <= -1 or y >= height or x <= -1 or x >= width:
        return
    for qy, qx in neighbours(y, x):
        weight = G((qy, qx), (y, x))
        if boundary == "border":
            qy, qx = min(max(qy, 0), height - 1), min(max(qx, 0), width - 1)
        elif not (0 <= qy < height and 0 <= qx < width):
            continue
        grad_image[qy, qx] += grad_value * weight


# ---------------------------------------------------------------------------------------------
# Array versions: the same quantities for many points at once
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stencil:
    """The four neighbours of many points p, as used by every array function below.

    For points of shape P, each field has shape (4, *P); corner order (y0, x0), (y0, x0+1),
    (y0+1, x0), (y0+1, x0+1).  ``index`` is the flat index y * W + x of each corner, moved into
    the image where the corner reads nothing, so it is always safe to gather with;
    ``weight`` is G(q, p), set to 0 where the corner reads 0; ``dweight_dy``/``dweight_dx``
    are the right derivatives of ``weight`` with respect to p_y/p_x under the chosen rule
    (None when the stencil was made without them).
    """

    index: np.ndarray
    weight: np.ndarray
    dweight_dy: Optional[np.ndarray]
    dweight_dx: Optional[np.ndarray]


def make_stencil(y: np.ndarray, x: np.ndarray, height: int, width: int,
                 boundary: str = "zeros", coord_grad: str = "torchvision",
                 derivatives: bool = True) -> Stencil:
    """Neighbours, G weights and weight derivatives of the points (y, x) in an H x W image.

    y, x: arrays of one shape P and a float dtype; the results keep that dtype.
    derivatives: False leaves ``dweight_dy`` and ``dweight_dx`` out (None), for a forward pass.
    """
    check_boundary(boundary, SAMPLING_RULES)
    check_coord_grad(coord_grad)
    dtype = np.result_type(y, x)
    one = dtype.type(1)
    slope_y = slope_x = one
    inside = True
    unclamped_y, unclamped_x = y, x
    mmcv_roi_align = boundary == "roi_align" and coord_grad == "mmcv"
    if boundary == "roi_align":
        inside = (y >= -1) & (y <= height) & (x >= -1) & (x <= width)
        boundary = "border"
    if boundary == "border" and not mmcv_roi_align:
        slope_y = ((y >= 0) & (y < height - 1)).astype(dtype)
        slope_x = ((x >= 0) & (x < width - 1)).astype(dtype)
    if boundary == "border":
        y = np.clip(y, 0, height - 1)
        x = np.clip(x, 0, width - 1)
    else:
        # Points this far out read only zeros; clipping keeps floor() within int range.
        y = np.clip(y, -2, height + 1)
        x = np.clip(x, -2, width + 1)
    y0 = np.floor(y)
    x0 = np.floor(x)
    ly, lx = y - y0, x - x0
    hy, hx = one - ly, one - lx
    y0 = y0.astype(np.int64)
    x0 = x0.astype(np.int64)
    rows, cols = (y0, y0 + 1), (x0, x0 + 1)     # corner (a, b) is (rows[a], cols[b])
    corners = ((0, 0), (0, 1), (1, 0), (1, 1))
    weight = np.stack([hy * hx, hy * lx, ly * hx, ly * lx])
    if boundary == "border":
        valid = np.broadcast_to(inside, weight.shape)
        rows = tuple(np.minimum(r, height - 1) for r in rows)
        cols = tuple(np.minimum(c, width - 1) for c in cols)
    else:
        row_inside = [(r >= 0) & (r < height) for r in rows]
        col_inside = [(c >= 0) & (c < width) for c in cols]
        valid = np.stack([row_inside[a] & col_inside[b] for a, b in corners])
        rows = tuple(np.clip(r, 0, height - 1) for r in rows)
        cols = tuple(np.clip(c, 0, width - 1) for c in cols)
    row_starts = [r * width for r in rows]
    index = np.stack([row_starts[a] + cols[b] for a, b in corners])
    weight = np.where(valid, weight, 0).astype(dtype, copy=False)
    if not derivatives:
        return Stencil(index=index, weight=weight, dweight_dy=None, dweight_dx=None)
    if mmcv_roi_align:  # the clamped point's neighbours, weighted by the unclamped point
        hx, lx = cols[1] - unclamped_x, unclamped_x - cols[0]
        hy, ly = rows[1] - unclamped_y, unclamped_y - rows[0]
    dweight_dy = np.where(valid, np.stack([-hx, -lx, hx, lx]) * slope_y, 0)
    dweight_dx = np.where(valid, np.stack([-hy, hy, -ly, ly]) * slope_x, 0)
    if boundary == "zeros" and coord_grad == "mmcv":
        outside = (y <= -1) | (y >= height) | (x <= -1) | (x >= width)
        dweight_dy = np.where(outside, 0, dweight_dy)
        dweight_dx = np.where(outside, 0, dweight_dx)
    return Stencil(index=index, weight=weight,
                   dweight_dy=dweight_dy.astype(dtype, copy=False),
                   dweight_dx=dweight_dx.astype(dtype, copy=False))


def gather_corners(image: np.ndarray, stencil: Stencil) -> np.ndarray:
    """x(q) at the four corners of every point.  image (..., H, W) -> (..., 4, *P)."""
    flat = image.reshape(image.shape[:-2] + (image.shape[-2] * image.shape[-1],))
    return flat[..., stencil.index]


def bilinear_sample(image: np.ndarray, y: np.ndarray, x: np.ndarray,
                    boundary: str = "zeros") -> np.ndarray:
    """x(p) = sum_q G(q, p) x(q) at every point (DCNv1 Eq. 3).  image (..., H, W), y, x (*P) -> (..., *P)."""
    check_bilinear_args(image, y, x, boundary)
    stencil = make_stencil(y, x, image.shape[-2], image.shape[-1], boundary)
    return sample_with(image, stencil)


def sample_with(image: np.ndarray, stencil: Stencil) -> np.ndarray:
    """Bilinear values from a prepared stencil.  image (..., H, W) -> (..., *P)."""
    return interpolate(gather_corners(image, stencil), stencil, image.ndim - 2)


def interpolate(corners: np.ndarray, stencil: Stencil, lead_ndim: int) -> np.ndarray:
    """sum_q G(q, p) x(q) from gathered corners (..., 4, *P) -> (..., *P)."""
    return np.sum(corners * stencil.weight, axis=lead_ndim)


def coord_grads_with(corners: np.ndarray, stencil: Stencil, lead_ndim: int):
    """(dx(p)/dp_y, dx(p)/dp_x) from gathered corners (..., 4, *P) -> two arrays (..., *P)."""
    return (np.sum(corners * stencil.dweight_dy, axis=lead_ndim),
            np.sum(corners * stencil.dweight_dx, axis=lead_ndim))


def bilinear_sample_grad_coords(image: np.ndarray, y: np.ndarray, x: np.ndarray,
                                boundary: str = "zeros", coord_grad: str = "torchvision"):
    """(d x(p)/d p_y, d x(p)/d p_x) at every point (Appendix A, Eq. 7), right derivatives at kinks.

    image (..., H, W), y, x (*P) -> two arrays (..., *P).
    """
    check_bilinear_args(image, y, x, boundary)
    stencil = make_stencil(y, x, image.shape[-2], image.shape[-1], boundary, coord_grad)
    return coord_grads_with(gather_corners(image, stencil), stencil, image.ndim - 2)


def scatter_add(grad_image: np.ndarray, grad_values: np.ndarray, stencil: Stencil) -> None:
    """Adjoint of :func:`sample_with`, accumulated in place: grad_image[q] += sum_p G(q, p) grad_values[p].

    grad_image (B..., H, W), C-contiguous, is updated; grad_values (B..., *P), whose trailing dims match the
    stencil's point shape P.  Only the span of flat pixel indices the stencil touches is summed,
    so the cost follows the number of points, not the image size.
    """
    if not grad_image.flags.c_contiguous:
        raise ValueError("grad_image must be C-contiguous (it is updated in place)")
    point_ndim = stencil.index.ndim - 1
    lead = int(np.prod(grad_values.shape[:grad_values.ndim - point_ndim], dtype=np.int64))
    point_count = stencil.index[0].size
    if lead == 0 or point_count == 0:
        return
    first, last = int(stencil.index.min()), int(stencil.index.max())
    span = last - first + 1
    weighted = grad_values.reshape(lead, 1, point_count) * stencil.weight.reshape(1, 4, -1)
    target = (np.arange(lead, dtype=np.int64).reshape(lead, 1, 1) * span
              + (stencil.index.reshape(1, 4, -1) - first))
    summed = np.bincount(target.ravel(), weights=weighted.ravel(), minlength=lead * span)
    flat = grad_image.reshape(lead, grad_image.shape[-2] * grad_image.shape[-1])
    flat[:, first:last + 1] += summed.reshape(lead, span).astype(grad_image.dtype, copy=False)


def bilinear_sample_grad_image(grad_values: np.ndarray, y: np.ndarray, x: np.ndarray,
                               image_shape: tuple[int, ...], boundary: str = "zeros") -> np.ndarray:
    """Gradient of a loss with respect to the image, given its gradient at the sampled values.

    grad_values (..., *P), y, x (*P), image_shape (..., H, W) -> (..., H, W).
    """
    stencil = make_stencil(y, x, image_shape[-2], image_shape[-1], boundary)
    grad_image = np.zeros(image_shape, dtype=grad_values.dtype)
    scatter_add(grad_image, grad_values, stencil)
    return grad_image


# ---------------------------------------------------------------------------------------------
# The registered operator: sampling an image batch at given points, forward and backward
# ---------------------------------------------------------------------------------------------

@dataclass
class BilinearGrads:
    """Gradients of a scalar loss with respect to the image and the two coordinate arrays."""

    grad_image: np.ndarray
    grad_y: np.ndarray
    grad_x: np.ndarray


def check_bilinear_args(image, y, x, boundary: str, all_finite=numpy_all_finite) -> np.dtype:
    """image (..., H, W) with H, W >= 1; y and x of one shape P; one float dtype; finite points."""
    check_boundary(boundary)
    if not hasattr(image, "ndim") or image.ndim < 2:
        raise ValueError("image must be an array of shape (..., H, W)")
    dtype = check_float_array(image, "image", image.ndim)
    check_float_array(y, "y", y.ndim, dtype)
    check_float_array(x, "x", x.ndim, dtype)
    if image.shape[-1] < 1 or image.shape[-2] < 1:
        raise ValueError(f"image must have H >= 1 and W >= 1, got shape {tuple(image.shape)}")
    check_shape(x, "x", y.shape, "y.shape")
    check_finite(y, "y", all_finite)
    check_finite(x, "x", all_finite)
    return dtype


def check_bilinear_backward_args(grad_output, image, y, dtype, coord_grad: str) -> None:
    """coord_grad a known rule; grad_output of the forward's shape image.shape[:-2] + y.shape
    and of the arrays' dtype."""
    check_coord_grad(coord_grad)
    check_grad_output(grad_output, image.shape[:-2] + y.shape, dtype, "image.shape[:-2] + y.shape")


def bilinear_sample_literal(image, y, x, boundary: str = "zeros") -> np.ndarray:
    """:func:`bilinear_sample` by a loop over every image of the batch and every point."""
    dtype = check_bilinear_args(image, y, x, boundary)
    images = image.reshape((int(np.prod(image.shape[:-2])),) + image.shape[-2:])
    out = np.zeros((images.shape[0],) + y.shape, dtype=dtype)
    for b in range(images.shape[0]):
        for point in np.ndindex(*y.shape):
            out[(b,) + point] = sample_point(images[b], y[point], x[point], boundary)
    return out.reshape(image.shape[:-2] + y.shape)


def bilinear_sample_backward_literal(grad_output, image, y, x, boundary: str = "zeros",
                                     coord_grad: str = "torchvision") -> BilinearGrads:
    """Gradients of :func:`bilinear_sample` by loops: each point scatters go * G(q, p) to its
    four neighbours q (the image gradient) and adds go * d x(p)/d p to its coordinates."""
    dtype = check_bilinear_args(image, y, x, boundary)
    check_bilinear_backward_args(grad_output, image, y, dtype, coord_grad)
    height, width = image.shape[-2:]
    images = image.reshape(int(np.prod(image.shape[:-2])), height, width)
    grads_out = grad_output.reshape((images.shape[0],) + y.shape)
    grad_image = np.zeros(images.shape)
    grad_y, grad_x = np.zeros(y.shape), np.zeros(x.shape)
    for b in range(images.shape[0]):
        for point in np.ndindex(*y.shape):
            go, p_y, p_x = grads_out[(b,) + point], y[point], x[point]
            d_y, d_x = sample_point_grad(images[b], p_y, p_x, boundary, coord_grad)
            grad_y[point] += go * d_y
            grad_x[point] += go * d_x
            scatter_point(grad_image[b], p_y, p_x, go, boundary)
    return BilinearGrads(grad_image.reshape(image.shape).astype(dtype),
                         grad_y.astype(dtype), grad_x.astype(dtype))


def bilinear_sample_backward(grad_output, image, y, x, boundary: str = "zeros",
                             coord_grad: str = "torchvision") -> BilinearGrads:
    """Gradients of :func:`bilinear_sample`: grad_output (..., *P) -> image (..., H, W), y, x (*P)."""
    dtype = check_bilinear_args(image, y, x, boundary)
    check_bilinear_backward_args(grad_output, image, y, dtype, coord_grad)
    height, width = image.shape[-2:]
    stencil = make_stencil(y, x, height, width, boundary, coord_grad)
    lead_ndim = image.ndim - 2
    d_y, d_x = coord_grads_with(gather_corners(image, stencil), stencil, lead_ndim)
    lead_axes = tuple(range(lead_ndim))
    grad_image = np.zeros(image.shape, dtype=dtype)
    scatter_add(grad_image, grad_output, stencil)
    return BilinearGrads(
        grad_image=grad_image,
        grad_y=np.sum(grad_output * d_y, axis=lead_axes).astype(dtype, copy=False),
        grad_x=np.sum(grad_output * d_x, axis=lead_axes).astype(dtype, copy=False))

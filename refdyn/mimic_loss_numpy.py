"""The R-CNN feature mimic loss of DCNv2 (Zhu et al. 2019, Section 3.3).

For the RoI features f(b) of the Faster R-CNN head and the features g(b) of the R-CNN branch on
the cropped RoI:

    L_mimic = sum_b [1 - cos(f(b), g(b))],     cos(f, g) = <f, g> / (N(f) N(g)),   N(v) = max(|v|, eps)

Each RoI's features (any trailing shape) are flattened into one vector.  ``eps`` (default 1e-8,
as torch's ``cosine_similarity``) keeps a zero feature vector from dividing by zero: its cosine is
0 and its loss term 1, never NaN.  Gradient (|f| > eps):

    d cos / d f = g / (N(f) N(g)) - cos f / |f|^2          (and symmetrically for g)

With |f| <= eps the norm is the constant eps and the second term drops.  No RoIs: L = 0.

The loss is scale-invariant (cos(a f, b g) = cos(f, g) for a, b > 0 above eps), and refdyn keeps
it so up to the dtype's range: every implementation divides each RoI's vectors by their largest
|entry| s_f, s_g first (f^ = f / s_f; s = 1 for a zero vector), where no square overflows or
underflows, and computes

    cos = <f^, g^> / n_f / n_g,   n_f = N(f) / s_f = max(|f^|, eps / s_f),
    dL/df_k = -go (g^_k / N(f) / n_g - [|f^| > eps / s_f] cos f^_k / (s_f |f^|) / |f^|),

with N(f) = max(s_f |f^|, eps): the numbers of the formulas above, with no intermediate that
overflows unless the result does (a vector of 1e200 entries gives what it gives at 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .args import check_finite, check_float_array, check_shape, numpy_all_finite


@dataclass
class MimicLossGrads:
    """Gradients of a scalar loss with respect to both feature sets (their shapes and dtype)."""

    grad_features: object
    grad_target: object


def check_mimic_loss_args(features, target, eps, all_finite=numpy_all_finite):
    """Check the arguments of one call and return their dtype; ``all_finite(array) -> bool``
    lets a GPU backend test finiteness on its own device arrays."""
    if not hasattr(features, "shape") or len(features.shape) < 1:
        raise ValueError("features must be an array of shape (R, ...), one row of features per RoI")
    dtype = check_float_array(features, "features", len(features.shape))
    check_float_array(target, "target", len(features.shape), dtype)
    check_shape(target, "target", features.shape, "features.shape")
    check_finite(features, "features", all_finite)
    check_finite(target, "target", all_finite)
    if not isinstance(eps, (float, int)) or isinstance(eps, bool) or not eps > 0:
        raise ValueError(f"eps must be a number > 0, got {eps!r}")
    return dtype


def _rows(array):
    """(R, ...) -> (R, D): one feature vector per RoI (also for R = 0)."""
    return array.reshape(array.shape[0], int(np.prod(array.shape[1:], dtype=np.int64)))


def _scaled_literal(vector, eps):
    """The scaled entries, s, |v^|, N(v) and n = max(|v^|, eps / s) of one vector (module
    docstring), by loops over its entries."""
    scale = max((abs(float(a)) for a in vector), default=0.0) or 1.0
    scaled = [float(a) / scale for a in vector]
    length = sum(a * a for a in scaled) ** 0.5
    return scaled, scale, length, max(scale * length, eps), max(length, eps / scale)


def mimic_loss_literal(features, target, eps=1e-8):
    """L_mimic by loops over RoIs and feature entries.  Same arguments and result as
    :func:`mimic_loss`."""
    dtype = check_mimic_loss_args(features, target, eps)
    total = 0.0
    for f, g in zip(_rows(features), _rows(target)):
        (f, *_, norm_f), (g, *_, norm_g) = _scaled_literal(f, eps), _scaled_literal(g, eps)
        total += 1.0 - sum(a * b for a, b in zip(f, g)) / norm_f / norm_g
    return np.asarray(total, dtype=dtype)


def mimic_loss_backward_literal(grad_output, features, target, eps=1e-8) -> MimicLossGrads:
    """Gradients of L_mimic by loops: for each RoI and entry k, on the scaled vectors,
    dL/df_k = -go (g^_k / N(f) / n_g - [|f^| > eps / s_f] cos f^_k / (s_f |f^|) / |f^|), and
    symmetrically."""
    dtype = check_mimic_loss_args(features, target, eps)
    check_float_array(grad_output, "grad_output", 0, dtype)
    go = float(grad_output)
    rows_f, rows_g = _rows(features), _rows(target)
    grads = np.zeros(rows_f.shape), np.zeros(rows_g.shape)
    for r, (f, g) in enumerate(zip(rows_f, rows_g)):
        vectors = _scaled_literal(f, eps), _scaled_literal(g, eps)
        cos = sum(a * b for a, b in zip(vectors[0][0], vectors[1][0])) / vectors[0][4] \
            / vectors[1][4]
        for grad, own, other in ((grads[0], *vectors), (grads[1], *vectors[::-1])):
            scaled, scale, length, clamped_norm, _ = own
            radial = cos / (scale * length) / length if length > eps / scale else 0.0
            for k in range(len(scaled)):
                grad[r, k] = -go * (other[0][k] / clamped_norm / other[4] - radial * scaled[k])
    return MimicLossGrads(grads[0].reshape(features.shape).astype(dtype),
                          grads[1].reshape(target.shape).astype(dtype))


@dataclass
class _Scaled:
    """The rows of one feature set as the module docstring scales them (float64): ``rows``
    (R, D) divided by ``scale`` (R,), their lengths |v^|, N(v) and n = max(|v^|, eps / s)."""

    rows: np.ndarray
    scale: np.ndarray
    length: np.ndarray
    clamped_norm: np.ndarray
    scaled_norm: np.ndarray


def _scaled(rows, eps) -> _Scaled:
    peak = np.max(np.abs(rows), axis=1, initial=0.0)
    scale = np.where(peak > 0, peak, 1.0)
    scaled = rows / scale[:, None]
    length = np.sqrt(np.sum(scaled * scaled, axis=1))
    return _Scaled(scaled, scale, length, np.maximum(scale * length, eps),
                   np.maximum(length, eps / scale))


def _cosines(f: _Scaled, g: _Scaled) -> np.ndarray:
    """cos of every RoI, <f^, g^> / n_f / n_g."""
    return np.sum(f.rows * g.rows, axis=1) / f.scaled_norm / g.scaled_norm


def mimic_loss(features, target, eps=1e-8):
    """DCNv2's mimic loss sum_b [1 - cos(features[b], target[b])].

    features, target: (R, ...) of one shape and dtype.  Returns a 0-d array in that dtype.
    """
    dtype = check_mimic_loss_args(features, target, eps)
    rows_f = _rows(features).astype(np.float64)
    rows_g = _rows(target).astype(np.float64)
    cos = _cosines(_scaled(rows_f, eps), _scaled(rows_g, eps))
    return np.asarray(np.sum(1.0 - cos), dtype=dtype)


def mimic_loss_backward(grad_output, features, target, eps=1e-8) -> MimicLossGrads:
    """Gradients of :func:`mimic_loss` for both feature sets; grad_output is a 0-d array."""
    dtype = check_mimic_loss_args(features, target, eps)
    check_float_array(grad_output, "grad_output", 0, dtype)
    rows_f = _rows(features).astype(np.float64)
    rows_g = _rows(target).astype(np.float64)
    f, g = _scaled(rows_f, eps), _scaled(rows_g, eps)
    cos = _cosines(f, g)

    def grad(own: _Scaled, other: _Scaled):
        with np.errstate(divide="ignore", invalid="ignore"):
            radial = np.where(own.length > eps / own.scale,
                              cos / (own.scale * own.length) / own.length, 0.0)
        return -float(grad_output) * (other.rows / own.clamped_norm[:, None]
                                      / other.scaled_norm[:, None] - radial[:, None] * own.rows)

    return MimicLossGrads(grad(f, g).reshape(features.shape).astype(dtype),
                          grad(g, f).reshape(target.shape).astype(dtype))

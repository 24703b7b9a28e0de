"""The R-CNN feature mimic loss of DCNv2 (Zhu et al. 2019, Section 3.3).

For the RoI features f(b) of the Faster R-CNN head and the features g(b) of the R-CNN branch on
the cropped RoI:

    L_mimic = sum_b [1 - cos(f(b), g(b))],     cos(f, g) = <f, g> / (N(f) N(g)),   N(v) = max(|v|, eps)

Each RoI's features (any trailing shape) are flattened into one vector.  ``eps`` (default 1e-8,
as torch's ``cosine_similarity``) keeps a zero feature vector from dividing by zero: its cosine is
0 and its loss term 1, never NaN.  Gradient (|f| > eps):

    d cos / d f = g / (N(f) N(g)) - cos f / |f|^2          (and symmetrically for g)

With |f| <= eps the norm is the constant eps and the second term drops.  No RoIs: L = 0.
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


def mimic_loss_literal(features, target, eps=1e-8):
    """L_mimic by loops over RoIs and feature entries.  Same arguments and result as
    :func:`mimic_loss`."""
    dtype = check_mimic_loss_args(features, target, eps)
    total = 0.0
    for f, g in zip(_rows(features), _rows(target)):
        dot = sum(float(a) * float(b) for a, b in zip(f, g))
        norm_f = max(sum(float(a) ** 2 for a in f) ** 0.5, eps)
        norm_g = max(sum(float(b) ** 2 for b in g) ** 0.5, eps)
        total += 1.0 - dot / (norm_f * norm_g)
    return np.asarray(total, dtype=dtype)


def mimic_loss_backward_literal(grad_output, features, target, eps=1e-8) -> MimicLossGrads:
    """Gradients of L_mimic by loops: for each RoI and entry k,
    dL/df_k = -go (g_k / (N(f) N(g)) - cos f_k / |f|^2 [|f| > eps]), and symmetrically."""
    dtype = check_mimic_loss_args(features, target, eps)
    check_float_array(grad_output, "grad_output", 0, dtype)
    go = float(grad_output)
    rows_f, rows_g = _rows(features), _rows(target)
    grad_f, grad_g = np.zeros(rows_f.shape), np.zeros(rows_g.shape)
    for r, (f, g) in enumerate(zip(rows_f, rows_g)):
        dot = sum(float(a) * float(b) for a, b in zip(f, g))
        length_f = sum(float(a) ** 2 for a in f) ** 0.5
        length_g = sum(float(b) ** 2 for b in g) ** 0.5
        norm_f, norm_g = max(length_f, eps), max(length_g, eps)
        cos = dot / (norm_f * norm_g)
        for k in range(len(f)):
            grad_f[r, k] = -go * (g[k] / (norm_f * norm_g)
                                  - (cos * f[k] / length_f ** 2 if length_f > eps else 0.0))
            grad_g[r, k] = -go * (f[k] / (norm_f * norm_g)
                                  - (cos * g[k] / length_g ** 2 if length_g > eps else 0.0))
    return MimicLossGrads(grad_f.reshape(features.shape).astype(dtype),
                          grad_g.reshape(target.shape).astype(dtype))


def _cosines(rows_f, rows_g, eps):
    """Per RoI: cos, N(f), N(g), |f|, |g| (float64)."""
    length_f = np.linalg.norm(rows_f, axis=1)
    length_g = np.linalg.norm(rows_g, axis=1)
    norm_f, norm_g = np.maximum(length_f, eps), np.maximum(length_g, eps)
    return np.sum(rows_f * rows_g, axis=1) / (norm_f * norm_g), norm_f, norm_g, length_f, length_g


def mimic_loss(features, target, eps=1e-8):
    """DCNv2's mimic loss sum_b [1 - cos(features[b], target[b])].

    features, target: (R, ...) of one shape and dtype.  Returns a 0-d array in that dtype.
    """
    dtype = check_mimic_loss_args(features, target, eps)
    rows_f = _rows(features).astype(np.float64)
    rows_g = _rows(target).astype(np.float64)
    cos = _cosines(rows_f, rows_g, eps)[0]
    return np.asarray(np.sum(1.0 - cos), dtype=dtype)


def mimic_loss_backward(grad_output, features, target, eps=1e-8) -> MimicLossGrads:
    """Gradients of :func:`mimic_loss` for both feature sets; grad_output is a 0-d array."""
    dtype = check_mimic_loss_args(features, target, eps)
    check_float_array(grad_output, "grad_output", 0, dtype)
    rows_f = _rows(features).astype(np.float64)
    rows_g = _rows(target).astype(np.float64)
    cos, norm_f, norm_g, length_f, length_g = _cosines(rows_f, rows_g, eps)

    def grad(own, other, length):
        radial = np.where(length > eps, cos / np.where(length > eps, length, 1.0) ** 2, 0.0)
        return -float(grad_output) * (other / (norm_f * norm_g)[:, None] - radial[:, None] * own)

    return MimicLossGrads(grad(rows_f, rows_g, length_f).reshape(features.shape).astype(dtype),
                          grad(rows_g, rows_f, length_g).reshape(target.shape).astype(dtype))

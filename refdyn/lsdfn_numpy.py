"""LS-DFN: dynamic filtering with a large sampling field (LS-DFN, Wu et al., ECCV 2018).

Every output position (y, x) has its own kernels W^{v,u}[y, x] (C' x C x k x k) and applies them
to s * s regions sampled around it with stride gamma (Eq. 2):

    Xhat^v[a,b,y,x] = sum_u sum_{j,i} X^u[y^ + j, x^ + i] W^{v,u}[y,x,j,i],   x^ = x + a gamma, y^ = y + b gamma

Attention weighs each tap of each sample (Eq. 3), factorized into a sample weight read at the
output position and a position weight read at the sample's centre (Eq. 4), each with the
paper's residual +1:

    Xtil^v[a,b,y,x] = (1 + A_sam^v[a,b,y,x]) sum_u sum_{j,i} X^u[y^+j, x^+i] W^{v,u}[y,x,j,i] (1 + A_pos^v[y^,x^,j,i])

and the samples are summed (Eq. 5; or max-pooled, the paper's fusion without attention):

    out^v[y,x] = sum_{a,b} Xtil^v[a,b,y,x]

The kernels are not predicted whole but built from U (C' x C per position) and V (C' x k x k per
position), Eq. 6, plus 1/C at the centre tap c = floor((k-1)/2) with residual learning (Eq. 7).
Both the printed equation and the paper's description of its Fig. 5 are implemented
(``kernel_form``); written with the coefficients (mu_t, nu_t, rho_t) of tap t:

    W^{v,u}_t = mu_t U^{v,u} + nu_t V^v_t + rho_t,      rho_t = [t = c] / C with Eq. 7's residual
    "described" (default): mu_t = [t = c], nu_t = 1      (U at the centre, V at every tap)
    "printed":             mu_t = 1,       nu_t = [t = c] (U at every tap, V's centre only)

Pixel coordinates (``indexing``), layouts and zero padding: :mod:`refdyn.lsdfn_args`.

Two implementations that agree to rounding: ``*_literal`` evaluates the equations term by term
(Eq. 6/7 as cases, tiny inputs only), and the vectorized default, which never builds the
C' C k^2 kernels: per sample and tap it reads one shifted view of the zero-padded features and
uses Eq. 6's structure, sum_u X^u W^{v,u}_t = mu_t sum_u U^{v,u} X^u + (nu_t V^v_t + rho_t) sum_u X^u.
"""

from __future__ import annotations

import numpy as np

from .args import check_grad_output
from .lsdfn_args import LSDFNGeometry, LSDFNGrads, LSDFNSampleGrads, \
    check_kernel_parts, check_lsdfn_args, check_lsdfn_sample_args, pad_by_reach, read_window


# ---------------------------------------------------------------------------------------------
# Eq. 6 / 7: the kernels built from U and V
# ---------------------------------------------------------------------------------------------


def kernel_coefficients(kernel_size, channels, residual, kernel_form):
    """(mu_t, nu_t, rho_t) of every tap t = j*k + i: W^{v,u}_t = mu_t U^{v,u} + nu_t V^v_t + rho_t
    (Eq. 6, with Eq. 7's 1/C at the centre tap when ``residual``)."""
    centre = (kernel_size - 1) // 2 * (kernel_size + 1)
    coefficients = []
    for t in range(kernel_size * kernel_size):
        at_centre = float(t == centre)
        mu, nu = (at_centre, 1.0) if kernel_form == "described" else (1.0, at_centre)
        coefficients.append((mu, nu, at_centre / channels if residual else 0.0))
    return coefficients


def lsdfn_kernels(u, v, kernel_size, residual=True, kernel_form="described"):
    """The full kernels W (N, C', C, k, k, H, W) of Eq. 6 (Eq. 7 with ``residual``) from
    U (N, C', C, H, W) and V (N, C', k*k, H, W); feed them to :func:`lsdfn_sample`."""
    batch, out_channels, channels, height, width = check_kernel_parts(u, v, kernel_size,
                                                                     residual, kernel_form)
    kernels = np.empty((batch, out_channels, channels, kernel_size * kernel_size, height, width),
                       dtype=u.dtype)
    for t, (mu, nu, rho) in enumerate(kernel_coefficients(kernel_size, channels, residual,
                                                          kernel_form)):
        kernels[:, :, :, t] = mu * u + nu * v[:, :, None, t] + rho
    return kernels.reshape(batch, out_channels, channels, kernel_size, kernel_size, height, width)


def lsdfn_kernels_backward(grad_kernels, u, v, kernel_size, residual=True,
                           kernel_form="described"):
    """(dL/dU, dL/dV) through :func:`lsdfn_kernels`: dL/dU = sum_t mu_t dL/dW_t,
    dL/dV_t = nu_t sum_u dL/dW^{., u}_t."""
    shape = check_kernel_parts(u, v, kernel_size, residual, kernel_form)
    batch, out_channels, channels, height, width = shape
    check_grad_output(grad_kernels, (batch, out_channels, channels, kernel_size, kernel_size,
                                     height, width), np.dtype(u.dtype), "(N, C', C, k, k, H, W)")
    grads = grad_kernels.reshape(batch, out_channels, channels, kernel_size * kernel_size,
                                 height, width)
    grad_u = np.zeros_like(u)
    grad_v = np.zeros_like(v)
    for t, (mu, nu, _) in enumerate(kernel_coefficients(kernel_size, channels, residual,
                                                        kernel_form)):
        grad_u += mu * grads[:, :, :, t]
        grad_v[:, :, t] = nu * grads[:, :, :, t].sum(axis=2)
    return grad_u, grad_v


# ---------------------------------------------------------------------------------------------
# Literal versions: the equations term by term
# ---------------------------------------------------------------------------------------------


def _inside(geo: LSDFNGeometry, y: int, x: int) -> bool:
    return 0 <= y < geo.height and 0 <= x < geo.width


def _output_reads(geo: LSDFNGeometry, y: int, x: int):
    """Every (sample, tap, (y^, x^), (yq, xq)) of output (y, x) whose read (yq, xq) lies in the
    map (outside it X is zero and so is the term): Eq. 2's X^u[y^ + j, x^ + i]."""
    for sample, tap, (cy, cx), (dy, dx) in geo.reads():
        if _inside(geo, y + dy, x + dx):
            yield sample, tap, (y + cy, x + cx), (y + dy, x + dx)


def lsdfn_sample_literal(features, kernels, samples, gamma, kernel_size, indexing="centred"):
    """Eq. 2 by its loops (tiny inputs only); same arguments and result as :func:`lsdfn_sample`."""
    geo = check_lsdfn_sample_args(features, kernels, samples, gamma, kernel_size, indexing)
    k = geo.kernel_size
    out = np.zeros(geo.sample_output_shape)
    for n, v, y, x in np.ndindex(geo.batch, geo.out_channels, geo.height, geo.width):
        for sample, tap, _, (yq, xq) in _output_reads(geo, y, x):
            j, i = divmod(tap, k)
            for u in range(geo.channels):
                # X^u[y^ + j, x^ + i] W^{v,u}[y, x, j, i]
                out[n, sample, v, y, x] += features[n, u, yq, xq] * kernels[n, v, u, j, i, y, x]
    return out.astype(geo.dtype)


def lsdfn_sample_backward_literal(grad_output, features, kernels, samples, gamma, kernel_size,
                                  indexing="centred") -> LSDFNSampleGrads:
    """Gradients of Eq. 2 by its loops: each term X W adds go * W to dL/dX and go * X to dL/dW."""
    geo = check_lsdfn_sample_args(features, kernels, samples, gamma, kernel_size, indexing)
    check_grad_output(grad_output, geo.sample_output_shape, geo.dtype, "(N, s*s, C', H, W)")
    k = geo.kernel_size
    grad_features = np.zeros(features.shape)
    grad_kernels = np.zeros(kernels.shape)
    for n, v, y, x in np.ndindex(geo.batch, geo.out_channels, geo.height, geo.width):
        for sample, tap, _, (yq, xq) in _output_reads(geo, y, x):
            j, i = divmod(tap, k)
            go = grad_output[n, sample, v, y, x]
            for u in range(geo.channels):
                grad_features[n, u, yq, xq] += go * kernels[n, v, u, j, i, y, x]
                grad_kernels[n, v, u, j, i, y, x] += go * features[n, u, yq, xq]
    return LSDFNSampleGrads(grad_features.astype(geo.dtype), grad_kernels.astype(geo.dtype))


def _kernel_value_literal(u, v, n, vo, uc, tap, y, x, geo, residual, kernel_form):
    """(W^{v,u}[y,x,j,i], dW/dU^{v,u}[y,x], dW/dV^v[y,x,j,i]) by the cases of Eq. 6 / 7."""
    centre = (geo.kernel_size - 1) // 2
    j, i = divmod(tap, geo.kernel_size)
    if j == i == centre:            # both forms: U + V (+ 1/C, Eq. 7) at the centre
        value = u[n, vo, uc, y, x] + v[n, vo, tap, y, x] + (1 / geo.channels if residual else 0)
        return value, 1.0, 1.0
    if kernel_form == "printed":    # Eq. 6 as printed: U elsewhere
        return u[n, vo, uc, y, x], 1.0, 0.0
    return v[n, vo, tap, y, x], 0.0, 1.0   # as described for Fig. 5: V elsewhere


def _attention_literal(geo, attention, arrays, n, vo, sample, tap, y, x, centre):
    """(weight, d weight / d A_sam, d weight / d A_pos, d weight / d A) of one term: Eq. 4's
    (1 + A_sam^v[a,b,y,x]) (1 + A_pos^v[y^,x^,j,i]), Eq. 3's 1 + A^{v,a,b}[j,i] (stored at the
    output position), or 1 without attention.  A_pos at a centre outside the map reads 0."""
    if attention == "factorized":
        sam = arrays["sample_attention"][n, vo * geo.sample_count + sample, y, x]
        pos = (arrays["position_attention"][n, vo * geo.taps + tap, centre[0], centre[1]]
               if _inside(geo, *centre) else 0.0)
        return (1 + sam) * (1 + pos), 1 + pos, 1 + sam, 0.0
    if attention == "full":
        full = arrays["full_attention"][n, (vo * geo.sample_count + sample) * geo.taps + tap, y, x]
        return 1 + full, 0.0, 0.0, 1.0
    return 1.0, 0.0, 0.0, 0.0


def _terms_literal(geo, arrays, options, n, vo, y, x):
    """Every term of Eq. 4 for output (n, v, y, x): (sample, tap, centre, (yq, xq), u, X value,
    kernel value and partials, attention weight and partials)."""
    for sample, tap, centre, (yq, xq) in _output_reads(geo, y, x):
        attention = _attention_literal(geo, options["attention"], arrays, n, vo, sample, tap, y,
                                       x, centre)
        for uc in range(geo.channels):
            kernel = _kernel_value_literal(arrays["u"], arrays["v"], n, vo, uc, tap, y, x, geo,
                                           options["residual"], options["kernel_form"])
            yield sample, tap, centre, (yq, xq), uc, arrays["features"][n, uc, yq, xq], kernel, \
                attention


def _samples_literal(geo, arrays, options, n, vo, y, x):
    """Xtil^v[a, b, y, x] of every sample b*s + a (Eq. 4)."""
    values = np.zeros(geo.sample_count)
    for sample, _, _, _, _, value, kernel, attention in _terms_literal(geo, arrays, options, n,
                                                                        vo, y, x):
        values[sample] += value * kernel[0] * attention[0]
    return values


def _fused_literal(values, fuse):
    """Eq. 5 (sum over samples) or the paper's max pooling over samples; with the sample that
    max picks (the first largest) as a one-hot."""
    if fuse == "sum":
        return values.sum(), np.ones_like(values)
    picked = np.zeros_like(values)
    picked[int(np.argmax(values))] = 1.0
    return values.max(), picked


def _literal_setup(features, u, v, sample_attention, position_attention, full_attention,
                   samples, gamma, kernel_size, residual, attention, fuse, indexing, kernel_form):
    geo = check_lsdfn_args(features, u, v, sample_attention, position_attention, full_attention,
                           samples, gamma, kernel_size, residual, attention, fuse, indexing,
                           kernel_form)
    arrays = {"features": features, "u": u, "v": v, "sample_attention": sample_attention,
              "position_attention": position_attention, "full_attention": full_attention}
    options = {"residual": residual, "attention": attention, "kernel_form": kernel_form}
    return geo, arrays, options


def lsdfn_literal(features, u, v, sample_attention=None, position_attention=None,
                  full_attention=None, *, samples, gamma, kernel_size, residual=True,
                  attention="factorized", fuse="sum", indexing="centred",
                  kernel_form="described"):
    """Eq. 4-7 term by term (tiny inputs only); same arguments and result as :func:`lsdfn`."""
    geo, arrays, options = _literal_setup(features, u, v, sample_attention, position_attention,
                                          full_attention, samples, gamma, kernel_size, residual,
                                          attention, fuse, indexing, kernel_form)
    out = np.zeros(geo.output_shape)
    for n, vo, y, x in np.ndindex(*geo.output_shape):
        out[n, vo, y, x] = _fused_literal(_samples_literal(geo, arrays, options, n, vo, y, x),
                                          fuse)[0]
    return out.astype(geo.dtype)


def lsdfn_backward_literal(grad_output, features, u, v, sample_attention=None,
                           position_attention=None, full_attention=None, *, samples, gamma,
                           kernel_size, residual=True, attention="factorized", fuse="sum",
                           indexing="centred", kernel_form="described") -> LSDFNGrads:
    """Every gradient of :func:`lsdfn` term by term.  A term t = X W P of sample (a, b) with
    incoming gradient go (go for "sum", go at the picked sample only for "max") adds go W P to
    dL/dX, go X P dW/dU to dL/dU, go X P dW/dV to dL/dV and go X W dP/dA to each attention."""
    geo, arrays, options = _literal_setup(features, u, v, sample_attention, position_attention,
                                          full_attention, samples, gamma, kernel_size, residual,
                                          attention, fuse, indexing, kernel_form)
    check_grad_output(grad_output, geo.output_shape, geo.dtype, "(N, C', H, W)")
    grads = {name: None if array is None else np.zeros(array.shape)
             for name, array in arrays.items()}
    for n, vo, y, x in np.ndindex(*geo.output_shape):
        _, picked = _fused_literal(_samples_literal(geo, arrays, options, n, vo, y, x), fuse)
        for sample, tap, centre, (yq, xq), uc, value, kernel, weight in _terms_literal(
                geo, arrays, options, n, vo, y, x):
            go = grad_output[n, vo, y, x] * picked[sample]
            grads["features"][n, uc, yq, xq] += go * kernel[0] * weight[0]
            grads["u"][n, vo, uc, y, x] += go * value * weight[0] * kernel[1]
            grads["v"][n, vo, tap, y, x] += go * value * weight[0] * kernel[2]
            if attention == "factorized":
                grads["sample_attention"][n, vo * geo.sample_count + sample, y, x] += \
                    go * value * kernel[0] * weight[1]
                if _inside(geo, *centre):
                    grads["position_attention"][n, vo * geo.taps + tap, centre[0], centre[1]] += \
                        go * value * kernel[0] * weight[2]
            elif attention == "full":
                grads["full_attention"][n, (vo * geo.sample_count + sample) * geo.taps + tap, y,
                                        x] += go * value * kernel[0] * weight[3]
    return LSDFNGrads(*(None if grads[name] is None else grads[name].astype(geo.dtype)
                        for name in arrays))


# ---------------------------------------------------------------------------------------------
# Vectorized versions: one shifted view of the padded features per sample and tap
# ---------------------------------------------------------------------------------------------


def lsdfn_sample(features, kernels, samples, gamma, kernel_size, indexing="centred"):
    """Eq. 2: the s*s sampled dynamic filtering with full position-specific kernels.

    features (N, C, H, W); kernels (N, C', C, k, k, H, W); samples: s; gamma: the sample stride;
    indexing: "centred" or "paper" (:mod:`refdyn.lsdfn_args`).  Returns Xhat (N, s*s, C', H, W),
    sample b*s + a at index b*s + a.
    """
    geo = check_lsdfn_sample_args(features, kernels, samples, gamma, kernel_size, indexing)
    padded = pad_by_reach(geo, features)
    out = np.zeros(geo.sample_output_shape, dtype=geo.dtype)
    for sample, tap, _, (dy, dx) in geo.reads():
        j, i = divmod(tap, geo.kernel_size)
        out[:, sample] += np.einsum("nvuhw,nuhw->nvhw", kernels[:, :, :, j, i],
                                    padded[read_window(geo, dy, dx)])
    return out


def lsdfn_sample_backward(grad_output, features, kernels, samples, gamma, kernel_size,
                          indexing="centred") -> LSDFNSampleGrads:
    """Gradients through :func:`lsdfn_sample`: per sample and tap, dL/dW_t[v,u] = go^v X^u_shifted
    and dL/dX^u_shifted += sum_v go^v W_t[v,u] (the transposed read)."""
    geo = check_lsdfn_sample_args(features, kernels, samples, gamma, kernel_size, indexing)
    check_grad_output(grad_output, geo.sample_output_shape, geo.dtype, "(N, s*s, C', H, W)")
    padded = pad_by_reach(geo, features)
    grad_padded = np.zeros_like(padded)
    grad_kernels = np.zeros_like(kernels)
    for sample, tap, _, (dy, dx) in geo.reads():
        j, i = divmod(tap, geo.kernel_size)
        window = read_window(geo, dy, dx)
        go = grad_output[:, sample]
        grad_kernels[:, :, :, j, i] += go[:, :, None] * padded[window][:, None]
        grad_padded[window] += np.einsum("nvhw,nvuhw->nuhw", go, kernels[:, :, :, j, i])
    return LSDFNSampleGrads(grad_padded[read_window(geo, 0, 0)].copy(), grad_kernels)


class _Operands:
    """One call's inputs arranged for the vectorized path: the padded features and their channel
    sum (Eq. 6's V part multiplies sum_u X^u), the padded position attention (N, C', k*k, ...),
    the full attention (N, C', s*s, k*k, H, W), the sample attention (N, s*s, C', H, W)."""

    def __init__(self, geo: LSDFNGeometry, features, u, v, sample_attention, position_attention,
                 full_attention, residual, attention, kernel_form):
        self.geo, self.u, self.v, self.attention = geo, u, v, attention
        self.padded = pad_by_reach(geo, features)
        self.channel_sum = self.padded.sum(axis=1)
        self.coefficients = kernel_coefficients(geo.kernel_size, geo.channels, residual,
                                                kernel_form)
        shape = (geo.batch, geo.out_channels)
        if attention == "factorized":
            self.position = pad_by_reach(geo, position_attention.reshape(
                *shape, geo.taps, geo.height, geo.width))
            self.sample = sample_attention.reshape(*shape, geo.sample_count, geo.height,
                                                   geo.width).transpose(0, 2, 1, 3, 4)
        if attention == "full":
            self.full = full_attention.reshape(*shape, geo.sample_count, geo.taps, geo.height,
                                               geo.width)

    def response(self, tap, dy, dx):
        """T^v_t = sum_u X^u[y + dy, x + dx] W^{v,u}_t[y, x] (Eq. 2's inner sum, Eq. 6/7 kernels):
        mu_t sum_u U^{v,u} X^u + (nu_t V^v_t + rho_t) sum_u X^u, (N, C', H, W)."""
        mu, nu, rho = self.coefficients[tap]
        window = read_window(self.geo, dy, dx)
        out = (nu * self.v[:, :, tap] + rho) * self.channel_sum[window][:, None]
        if mu:
            out = out + mu * np.einsum("nvuhw,nuhw->nvhw", self.u, self.padded[window])
        return out

    def response_backward(self, grad_response, tap, dy, dx, grad_padded, grad_u, grad_v):
        """Accumulate the gradients of :meth:`response` into the padded features, U and V."""
        mu, nu, rho = self.coefficients[tap]
        window = read_window(self.geo, dy, dx)
        grad_v[:, :, tap] += nu * grad_response * self.channel_sum[window][:, None]
        grad_padded[window] += np.sum(grad_response * (nu * self.v[:, :, tap] + rho), axis=1,
                                      keepdims=True)
        if mu:
            grad_u += mu * grad_response[:, :, None] * self.padded[window][:, None]
            grad_padded[window] += mu * np.einsum("nvhw,nvuhw->nuhw", grad_response, self.u)

    def tap_weight(self, sample, tap, centre):
        """The attention on tap t of a sample: 1 + A_pos^v[y^, x^, t] (Eq. 4), 1 + A^{v,a,b}_t
        (Eq. 3) or 1."""
        if self.attention == "factorized":
            return 1 + self.position[:, :, tap][read_window(self.geo, *centre)]
        if self.attention == "full":
            return 1 + self.full[:, :, sample, tap]
        return 1.0

    def sample_weight(self):
        """1 + A_sam^v[a, b, y, x] of Eq. 4 as (N, s*s, C', H, W), or 1."""
        return 1 + self.sample if self.attention == "factorized" else 1.0

    def unweighted_samples(self):
        """Eq. 4 without the sample weight, (N, s*s, C', H, W)."""
        geo = self.geo
        out = np.zeros(geo.sample_output_shape, dtype=geo.dtype)
        for sample, tap, centre, (dy, dx) in geo.reads():
            out[:, sample] += self.tap_weight(sample, tap, centre) * self.response(tap, dy, dx)
        return out


def _picked(samples, fuse):
    """d out / d Xtil of the fusion: 1 for Eq. 5's sum; the one-hot of the first largest sample
    for max pooling."""
    if fuse == "sum":
        return np.ones_like(samples)
    return (np.arange(samples.shape[1])[None, :, None, None, None]
            == np.argmax(samples, axis=1)[:, None]).astype(samples.dtype)


def lsdfn(features, u, v, sample_attention=None, position_attention=None, full_attention=None,
          *, samples, gamma, kernel_size, residual=True, attention="factorized", fuse="sum",
          indexing="centred", kernel_form="described"):
    """LS-DFN, Eq. 4-7 end to end.

    features X (N, C, H, W); u (N, C', C, H, W) and v (N, C', k*k, H, W): Eq. 6's kernel parts;
    attention "factorized" (Eq. 4): sample_attention (N, C'*s*s, H, W) and position_attention
    (N, C'*k*k, H, W); "full" (Eq. 3): full_attention (N, C'*s*s*k*k, H, W) read at the output
    position; None: no attention.  Every attention weight gets the paper's +1.
    samples: s; gamma: sample stride; kernel_size: k; residual: Eq. 7's 1/C at the centre tap;
    fuse: "sum" (Eq. 5) or "max" (max pooling over the samples); indexing: "centred" or "paper";
    kernel_form: "described" (Fig. 5's text) or "printed" (Eq. 6 as printed).
    Returns (N, C', H, W) in the input dtype.
    """
    geo = check_lsdfn_args(features, u, v, sample_attention, position_attention, full_attention,
                           samples, gamma, kernel_size, residual, attention, fuse, indexing,
                           kernel_form)
    operands = _Operands(geo, features, u, v, sample_attention, position_attention,
                         full_attention, residual, attention, kernel_form)
    weighted = operands.sample_weight() * operands.unweighted_samples()    # Eq. 4
    return weighted.sum(axis=1) if fuse == "sum" else weighted.max(axis=1)  # Eq. 5 / max


def lsdfn_backward(grad_output, features, u, v, sample_attention=None, position_attention=None,
                   full_attention=None, *, samples, gamma, kernel_size, residual=True,
                   attention="factorized", fuse="sum", indexing="centred",
                   kernel_form="described") -> LSDFNGrads:
    """Gradients through :func:`lsdfn` (derivation: docs/lsdfn.md).

    With g_ab = dL/dXtil_ab (go for "sum", go at the picked sample for "max"), Xhat_ab the
    sample before its weight, alpha_ab = 1 + A_sam, P_t the tap weight, T_t the tap response:
      dL/dA_sam_ab = g_ab Xhat_ab;   dL/dP_t = g_ab alpha_ab T_t (to A_pos at the sample centre,
      or to A);   dL/dT_t = g_ab alpha_ab P_t, then through T_t to X, U and V.
    """
    geo = check_lsdfn_args(features, u, v, sample_attention, position_attention, full_attention,
                           samples, gamma, kernel_size, residual, attention, fuse, indexing,
                           kernel_form)
    check_grad_output(grad_output, geo.output_shape, geo.dtype, "(N, C', H, W)")
    operands = _Operands(geo, features, u, v, sample_attention, position_attention,
                         full_attention, residual, attention, kernel_form)
    unweighted = operands.unweighted_samples()
    sample_weight = operands.sample_weight()
    grad_samples = grad_output[:, None] * _picked(sample_weight * unweighted, fuse)
    grad_unweighted = grad_samples * sample_weight
    grad_padded = np.zeros_like(operands.padded)
    grad_u, grad_v = np.zeros_like(u), np.zeros_like(v)
    grad_position = np.zeros_like(operands.position) if attention == "factorized" else None
    grad_full = np.zeros_like(operands.full) if attention == "full" else None
    for sample, tap, centre, (dy, dx) in geo.reads():
        response = operands.response(tap, dy, dx)
        go = grad_unweighted[:, sample]
        if attention == "factorized":
            grad_position[:, :, tap][read_window(geo, *centre)] += go * response
        elif attention == "full":
            grad_full[:, :, sample, tap] = go * response
        operands.response_backward(go * operands.tap_weight(sample, tap, centre), tap, dy, dx,
                                   grad_padded, grad_u, grad_v)
    grad_sample = grad_position_attention = None
    if attention == "factorized":
        grad_sample = (grad_samples * unweighted).transpose(0, 2, 1, 3, 4).reshape(
            sample_attention.shape)
        grad_position_attention = grad_position[read_window(geo, 0, 0)].reshape(
            position_attention.shape)
    return LSDFNGrads(
        grad_features=grad_padded[read_window(geo, 0, 0)].copy(), grad_u=grad_u, grad_v=grad_v,
        grad_sample_attention=grad_sample, grad_position_attention=grad_position_attention,
        grad_full_attention=None if grad_full is None else grad_full.reshape(
            full_attention.shape))

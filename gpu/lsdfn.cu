// LS-DFN (Wu et al., ECCV 2018; Eq. 2-7) and the dynamic local filtering layer of
// Dynamic Filter Networks (De Brabandere et al., 2016), forward and backward, in CUDA C.
//
// Layout and semantics are those of the NumPy references refdyn/lsdfn_numpy.py
// and refdyn/lsdfn_dfn_numpy.py (argument rules and coordinates in refdyn/lsdfn_args.py,
// docs/conventions.md section 5):
//     features X (N, C, H, W)        kernels W (N, C', C, k, k, H, W)           (Eq. 2)
//     u U (N, C', C, H, W)           v V (N, C', K, H, W)                       (Eq. 6), K = k k
//     A_sam (N, C' S, H, W)          A_pos (N, C' K, H, W)   A (N, C' S K, H, W) (Eq. 4 / 3)
//     filters F (N, G K, H, W), G = 1 (shared) or C (one filter per channel)     (DFN)
// with S = s s samples, sample s_ = b s + a, tap t = j k + i.  Sample (a, b) of output (y, x) is
// centred on (y + o_s(b), x + o_s(a)); its tap (j, i) reads X at (y + o_s(b) + o_k(j),
// x + o_s(a) + o_k(i)), zero outside the map, with o_s(a) = (a - a0) gamma, o_k(j) = j - j0 and
// (a0, j0) = (floor((s-1)/2), floor((k-1)/2)) for indexing "centred", (0, 0) for "paper".
//
// LS-DFN (Eq. 4-7), output (n, v, y, x), through the tap response and weights
//     T_t   = sum_u X^u[q] W^{v,u}_t = mu_t sum_u U^{v,u} X^u[q]
//                                      + (nu_t V^v_t + rho_t) sum_u X^u[q]
//             (Eq. 6 / 7: (mu, nu) = ([t = c], 1) "described", (1, [t = c]) "printed";
//              rho_t = [t = c] / C with the residual; c the centre tap)
//     P_t   = 1 + A_pos^v[centre, t] (Eq. 4; 1 at a centre outside the map), 1 + A^{v,s_}_t
//             (Eq. 3), or 1 without attention
//     Xhat_s_ = sum_t P_t T_t,   alpha_s_ = 1 + A_sam^v[s_] (Eq. 4) or 1
//     out   = sum_s_ alpha_s_ Xhat_s_ (Eq. 5), or its max over s_ (the first largest)
// Backward (refdyn's lsdfn_backward): G_s_ = dL/dXhat_s_ = go picked_s_ alpha_s_ (picked = 1 for
// the sum, the one-hot of the maximum for max); dL/dA_sam = go picked Xhat; dL/dP_t = G T_t (to
// A_pos at the sample's centre, or to A); dL/dT_t = G P_t, then through T_t to X, U and V.
//
// Eq. 2 (lsdfn_sample) is Xhat with the full kernels W and no weights, output (N, S, C', H, W).
// DFN: out[n, c, y, x] = sum_t X[n, c, y + o_k(j), x + o_k(i)] F'[n, g(c), t, y, x] (centred),
// F' = F or its softmax over the taps.
//
// The kernels follow the conventions of common.cuh (templates exported as _f32 / _f64,
// grid-stride loops, 64-bit indices), which also says how each compiler builds this file; as in
// ddf.cu, one thread per element written and every gradient a gather summed in a fixed order
// (no atomics: the same bits on every run).  The DFN kernels are exported as lsdfn_dfn_<name>.

#include "common.cuh"

// The options of one call (their values in lsdfn_launch.py).
enum Indexing { INDEXING_CENTRED = 0, INDEXING_PAPER = 1 };
enum KernelForm { FORM_DESCRIBED = 0, FORM_PRINTED = 1 };
enum Attention { ATTENTION_NONE = 0, ATTENTION_FACTORIZED = 1, ATTENTION_FULL = 2 };
enum Fuse { FUSE_SUM = 0, FUSE_MAX = 1 };

// The sizes and options of one call: 13 int64 values, in the order of GEOMETRY_FIELDS in
// lsdfn_launch.py (refdyn.lsdfn_args.LSDFNGeometry and lsdfn's options).
struct LSDFNGeometry {
    index_t batch, channels, out_channels, height, width;
    index_t kernel_size, samples, gamma;
    index_t indexing;     // an Indexing
    index_t residual;     // Eq. 7's 1/C at the centre tap: 0 or 1
    index_t kernel_form;  // a KernelForm
    index_t attention;    // an Attention
    index_t fuse;         // a Fuse

    __device__ index_t taps() const { return kernel_size * kernel_size; }
    __device__ index_t sample_count() const { return samples * samples; }
    __device__ index_t pixels() const { return height * width; }
    __device__ index_t centre_tap() const { return (kernel_size - 1) / 2 * (kernel_size + 1); }
    __device__ bool inside(index_t y, index_t x) const
    {
        return y >= 0 && y < height && x >= 0 && x < width;
    }

    // o_s(a): where sample row / column a lies relative to the output (Eq. 2's a gamma).
    __device__ index_t sample_offset(index_t a) const
    {
        return (a - (indexing == INDEXING_CENTRED ? (samples - 1) / 2 : 0)) * gamma;
    }
    // o_k(j): where tap row / column j lies relative to its sample's centre (Eq. 2's + j).
    __device__ index_t tap_offset(index_t j) const
    {
        return j - (indexing == INDEXING_CENTRED ? (kernel_size - 1) / 2 : 0);
    }
    // The offsets of sample s_'s centre (cy, cx) and of its tap t's read (dy, dx).
    __device__ void centre(index_t s_, index_t& cy, index_t& cx) const
    {
        cy = sample_offset(s_ / samples);
        cx = sample_offset(s_ % samples);
    }
    __device__ void read(index_t s_, index_t t, index_t& dy, index_t& dx) const
    {
        centre(s_, dy, dx);
        dy += tap_offset(t / kernel_size);
        dx += tap_offset(t % kernel_size);
    }

    // Eq. 6 / 7's coefficients of tap t: W_t = mu_t U + nu_t V_t + rho_t.
    __device__ bool at_centre(index_t t) const { return t == centre_tap(); }
    __device__ int mu(index_t t) const { return kernel_form == FORM_DESCRIBED ? at_centre(t) : 1; }
    __device__ int nu(index_t t) const { return kernel_form == FORM_DESCRIBED ? 1 : at_centre(t); }
    template <typename scalar_t>
    __device__ scalar_t rho(index_t t) const
    {
        return residual && at_centre(t) ? scalar_t(1) / scalar_t(channels) : scalar_t(0);
    }
};

// The inputs of lsdfn (absent attention arrays are null and never read).
template <typename scalar_t>
struct LSDFNInputs {
    const scalar_t *features, *u, *v, *sample_attention, *position_attention, *full_attention;
};

// ---------------------------------------------------------------------------------------------
// LS-DFN device functions (Eq. 3-7)
// ---------------------------------------------------------------------------------------------

// T_t of output (n, v, y, x) reading X at (yq, xq) inside the map (Eq. 2's inner sum with the
// Eq. 6 / 7 kernels), in the NumPy reference's form mu sum_u U X + (nu V + rho) sum_u X.
template <typename scalar_t>
__device__ scalar_t tap_response(const LSDFNGeometry& geo, const LSDFNInputs<scalar_t>& in,
                                 index_t n, index_t v, index_t t, index_t y, index_t x,
                                 index_t yq, index_t xq)
{
    const index_t pixel = y * geo.width + x, read = yq * geo.width + xq;
    const int mu = geo.mu(t);
    scalar_t channel_sum = 0, filtered = 0;
    for (index_t u = 0; u < geo.channels; ++u) {
        const scalar_t value = in.features[(n * geo.channels + u) * geo.pixels() + read];
        channel_sum += value;
        if (mu)
            filtered += in.u[((n * geo.out_channels + v) * geo.channels + u) * geo.pixels()
                             + pixel] * value;
    }
    const scalar_t vt = in.v[((n * geo.out_channels + v) * geo.taps() + t) * geo.pixels() + pixel];
    return (geo.nu(t) * vt + geo.rho<scalar_t>(t)) * channel_sum + scalar_t(mu) * filtered;
}

// P_t of sample s_, tap t of output (n, v, y, x): 1 + A_pos^v[centre, t] (Eq. 4; 1 at a centre
// outside the map), 1 + A^{v,s_}_t (Eq. 3) or 1.
template <typename scalar_t>
__device__ scalar_t tap_weight(const LSDFNGeometry& geo, const LSDFNInputs<scalar_t>& in,
                               index_t n, index_t v, index_t s_, index_t t, index_t y, index_t x)
{
    if (geo.attention == ATTENTION_FACTORIZED) {
        index_t cy, cx;
        geo.centre(s_, cy, cx);
        if (!geo.inside(y + cy, x + cx)) return scalar_t(1);
        return 1 + in.position_attention[((n * geo.out_channels + v) * geo.taps() + t)
                                         * geo.pixels() + (y + cy) * geo.width + x + cx];
    }
    if (geo.attention == ATTENTION_FULL)
        return 1 + in.full_attention[(((n * geo.out_channels + v) * geo.sample_count() + s_)
                                      * geo.taps() + t) * geo.pixels() + y * geo.width + x];
    return scalar_t(1);
}

// alpha_s_ = 1 + A_sam^v[s_] at output (n, v, y, x) (Eq. 4), or 1.
template <typename scalar_t>
__device__ scalar_t sample_weight(const LSDFNGeometry& geo, const scalar_t* sample_attention,
                                  index_t n, index_t v, index_t s_, index_t pixel)
{
    if (geo.attention != ATTENTION_FACTORIZED) return scalar_t(1);
    return 1 + sample_attention[((n * geo.out_channels + v) * geo.sample_count() + s_)
                                * geo.pixels() + pixel];
}

// Xhat_s_ = sum_t P_t T_t of output (n, v, y, x), taps in increasing t (Eq. 4 before alpha).
template <typename scalar_t>
__device__ scalar_t unweighted_sample(const LSDFNGeometry& geo, const LSDFNInputs<scalar_t>& in,
                                      index_t n, index_t v, index_t s_, index_t y, index_t x)
{
    scalar_t sum = 0;
    for (index_t t = 0; t < geo.taps(); ++t) {
        index_t dy, dx;
        geo.read(s_, t, dy, dx);
        if (!geo.inside(y + dy, x + dx)) continue;
        sum += tap_weight(geo, in, n, v, s_, t, y, x)
               * tap_response(geo, in, n, v, t, y, x, y + dy, x + dx);
    }
    return sum;
}

// ---------------------------------------------------------------------------------------------
// LS-DFN kernels
// ---------------------------------------------------------------------------------------------

// Eq. 4 and 5: out[n, v, y, x] = sum_s_ alpha Xhat (or the max over s_), one thread per output.
template <typename scalar_t>
__device__ void lsdfn_forward(const LSDFNGeometry geo, const LSDFNInputs<scalar_t> in,
                              scalar_t* output)
{
    GRID_STRIDE_LOOP(idx, geo.batch * geo.out_channels * geo.pixels()) {
        const index_t pixel = idx % geo.pixels(), nv = idx / geo.pixels();
        const index_t n = nv / geo.out_channels, v = nv % geo.out_channels;
        scalar_t fused = 0;
        for (index_t s_ = 0; s_ < geo.sample_count(); ++s_) {
            const scalar_t weighted = sample_weight(geo, in.sample_attention, n, v, s_, pixel)
                * unweighted_sample(geo, in, n, v, s_, pixel / geo.width, pixel % geo.width);
            if (geo.fuse == FUSE_SUM) fused += weighted;
            else if (s_ == 0 || weighted > fused) fused = weighted;
        }
        output[idx] = fused;
    }
}

// Xhat[n, s_, v, y, x] for the backward, one thread per element.
template <typename scalar_t>
__device__ void lsdfn_samples(const LSDFNGeometry geo, const LSDFNInputs<scalar_t> in,
                              scalar_t* unweighted)
{
    GRID_STRIDE_LOOP(idx, geo.batch * geo.sample_count() * geo.out_channels * geo.pixels()) {
        const index_t pixel = idx % geo.pixels(), v = idx / geo.pixels() % geo.out_channels;
        const index_t ns = idx / (geo.pixels() * geo.out_channels);
        unweighted[idx] = unweighted_sample(geo, in, ns / geo.sample_count(), v,
                                            ns % geo.sample_count(), pixel / geo.width,
                                            pixel % geo.width);
    }
}

// Per sample (n, s_, v, y, x): G = go picked alpha into grad_unweighted, and dL/dA_sam = go
// picked Xhat (when A_sam is given).  picked: 1 for the sum; for max, 1 at the first largest.
template <typename scalar_t>
__device__ void lsdfn_fusion_grads(const LSDFNGeometry geo, const scalar_t* sample_attention,
                                   const scalar_t* unweighted, const scalar_t* grad_output,
                                   scalar_t* grad_unweighted, scalar_t* grad_sample_attention)
{
    const index_t plane = geo.out_channels * geo.pixels();
    GRID_STRIDE_LOOP(idx, geo.batch * geo.sample_count() * plane) {
        const index_t pixel = idx % geo.pixels(), v = idx / geo.pixels() % geo.out_channels;
        const index_t s_ = idx / plane % geo.sample_count(), n = idx / plane / geo.sample_count();
        const index_t first = n * geo.sample_count() * plane + v * geo.pixels() + pixel;
        bool picked = true;
        if (geo.fuse == FUSE_MAX) {
            index_t best = 0;
            scalar_t largest = 0;
            for (index_t other = 0; other < geo.sample_count(); ++other) {
                const scalar_t weighted = sample_weight(geo, sample_attention, n, v, other, pixel)
                                          * unweighted[first + other * plane];
                if (other == 0 || weighted > largest) best = other, largest = weighted;
            }
            picked = best == s_;
        }
        const scalar_t go = picked ? grad_output[(n * geo.out_channels + v) * geo.pixels()
                                                 + pixel] : scalar_t(0);
        grad_unweighted[idx] = go * sample_weight(geo, sample_attention, n, v, s_, pixel);
        if (geo.attention == ATTENTION_FACTORIZED)
            grad_sample_attention[((n * geo.out_channels + v) * geo.sample_count() + s_)
                                  * geo.pixels() + pixel] = go * unweighted[idx];
    }
}

// dL/dX[n, u, yq, xq] = sum over the reads (s_, t) of (y, x) = (yq, xq) - (dy, dx) in the map
// and over v of G P_t W^{v,u}_t, with W^{v,u}_t = mu U^{v,u} + nu V^v_t + rho (Eq. 6 / 7).
template <typename scalar_t>
__device__ void lsdfn_grad_features(const LSDFNGeometry geo, const LSDFNInputs<scalar_t> in,
                                    const scalar_t* grad_unweighted, scalar_t* grad_features)
{
    const index_t plane = geo.out_channels * geo.pixels();
    GRID_STRIDE_LOOP(idx, geo.batch * geo.channels * geo.pixels()) {
        const index_t read = idx % geo.pixels(), nu_ = idx / geo.pixels();
        const index_t n = nu_ / geo.channels, u = nu_ % geo.channels;
        scalar_t sum = 0;
        for (index_t s_ = 0; s_ < geo.sample_count(); ++s_) {
            for (index_t t = 0; t < geo.taps(); ++t) {
                index_t dy, dx;
                geo.read(s_, t, dy, dx);
                const index_t y = read / geo.width - dy, x = read % geo.width - dx;
                if (!geo.inside(y, x)) continue;
                const index_t pixel = y * geo.width + x;
                for (index_t v = 0; v < geo.out_channels; ++v) {
                    const index_t nv = n * geo.out_channels + v;
                    const scalar_t kernel =
                        geo.mu(t) * in.u[(nv * geo.channels + u) * geo.pixels() + pixel]
                        + geo.nu(t) * in.v[(nv * geo.taps() + t) * geo.pixels() + pixel]
                        + geo.rho<scalar_t>(t);
                    sum += grad_unweighted[(n * geo.sample_count() + s_) * plane
                                           + v * geo.pixels() + pixel]
                           * tap_weight(geo, in, n, v, s_, t, y, x) * kernel;
                }
            }
        }
        grad_features[idx] = sum;
    }
}

// dL/dU[n, v, u, y, x] = sum over the reads (s_, t) in the map of G P_t mu_t X^u[q], and
// dL/dV[n, v, t, y, x] = nu_t sum_s_ G P_t sum_u X^u[q] (Eq. 6 differentiated).  One thread per
// element of both: the first N C' C H W indices write grad_u, the next N C' K H W grad_v.
template <typename scalar_t>
__device__ void lsdfn_grad_kernel_parts(const LSDFNGeometry geo, const LSDFNInputs<scalar_t> in,
                                        const scalar_t* grad_unweighted, scalar_t* grad_u,
                                        scalar_t* grad_v)
{
    const index_t plane = geo.out_channels * geo.pixels();
    const index_t u_elements = geo.batch * plane * geo.channels;
    GRID_STRIDE_LOOP(idx, u_elements + geo.batch * plane * geo.taps()) {
        const bool for_u = idx < u_elements;
        const index_t element = for_u ? idx : idx - u_elements;
        const index_t pixel = element % geo.pixels(), y = pixel / geo.width, x = pixel % geo.width;
        const index_t inner = for_u ? geo.channels : geo.taps();  // u or t
        const index_t which = element / geo.pixels() % inner, nv = element / geo.pixels() / inner;
        const index_t n = nv / geo.out_channels, v = nv % geo.out_channels;
        scalar_t sum = 0;
        for (index_t s_ = 0; s_ < geo.sample_count(); ++s_) {
            for (index_t t = for_u ? 0 : which; t < (for_u ? geo.taps() : which + 1); ++t) {
                index_t dy, dx;
                geo.read(s_, t, dy, dx);
                if (!geo.inside(y + dy, x + dx) || (for_u ? geo.mu(t) : geo.nu(t)) == 0) continue;
                const index_t read = (y + dy) * geo.width + x + dx;
                scalar_t value = 0;  // X^u[q] for U, sum_u X^u[q] for V
                for (index_t u = for_u ? which : 0; u < (for_u ? which + 1 : geo.channels); ++u)
                    value += in.features[(n * geo.channels + u) * geo.pixels() + read];
                sum += grad_unweighted[(n * geo.sample_count() + s_) * plane + v * geo.pixels()
                                       + pixel]
                       * tap_weight(geo, in, n, v, s_, t, y, x) * value;
            }
        }
        (for_u ? grad_u : grad_v)[element] = sum;
    }
}

// dL/dA_pos[n, v K + t, cy, cx] = sum over the samples s_ centred there from an output (y, x) in
// the map of G T_t (Eq. 4; T_t = 0 when the read is outside), one thread per element.
template <typename scalar_t>
__device__ void lsdfn_grad_position_attention(const LSDFNGeometry geo,
                                              const LSDFNInputs<scalar_t> in,
                                              const scalar_t* grad_unweighted,
                                              scalar_t* grad_position)
{
    const index_t plane = geo.out_channels * geo.pixels();
    GRID_STRIDE_LOOP(idx, geo.batch * plane * geo.taps()) {
        const index_t centre = idx % geo.pixels(), t = idx / geo.pixels() % geo.taps();
        const index_t nv = idx / geo.pixels() / geo.taps();
        const index_t n = nv / geo.out_channels, v = nv % geo.out_channels;
        scalar_t sum = 0;
        for (index_t s_ = 0; s_ < geo.sample_count(); ++s_) {
            index_t cy, cx, dy, dx;
            geo.centre(s_, cy, cx);
            geo.read(s_, t, dy, dx);
            const index_t y = centre / geo.width - cy, x = centre % geo.width - cx;
            if (!geo.inside(y, x) || !geo.inside(y + dy, x + dx)) continue;
            sum += grad_unweighted[(n * geo.sample_count() + s_) * plane + v * geo.pixels()
                                   + y * geo.width + x]
                   * tap_response(geo, in, n, v, t, y, x, y + dy, x + dx);
        }
        grad_position[idx] = sum;
    }
}

// dL/dA[n, (v S + s_) K + t, y, x] = G T_t (Eq. 3; 0 when the read is outside).
template <typename scalar_t>
__device__ void lsdfn_grad_full_attention(const LSDFNGeometry geo, const LSDFNInputs<scalar_t> in,
                                          const scalar_t* grad_unweighted, scalar_t* grad_full)
{
    const index_t plane = geo.out_channels * geo.pixels();
    GRID_STRIDE_LOOP(idx, geo.batch * plane * geo.sample_count() * geo.taps()) {
        const index_t pixel = idx % geo.pixels(), t = idx / geo.pixels() % geo.taps();
        const index_t s_ = idx / geo.pixels() / geo.taps() % geo.sample_count();
        const index_t nv = idx / geo.pixels() / geo.taps() / geo.sample_count();
        const index_t n = nv / geo.out_channels, v = nv % geo.out_channels;
        const index_t y = pixel / geo.width, x = pixel % geo.width;
        index_t dy, dx;
        geo.read(s_, t, dy, dx);
        grad_full[idx] = geo.inside(y + dy, x + dx)
            ? grad_unweighted[(n * geo.sample_count() + s_) * plane + v * geo.pixels() + pixel]
                  * tap_response(geo, in, n, v, t, y, x, y + dy, x + dx)
            : scalar_t(0);
    }
}

// ---------------------------------------------------------------------------------------------
// Eq. 2 (lsdfn_sample): full kernels W[n, v, u, t, y, x]
// ---------------------------------------------------------------------------------------------

// Xhat[n, s_, v, y, x] = sum_t sum_u X^u[q] W^{v,u}_t[y, x] over the reads in the map.
template <typename scalar_t>
__device__ void sample_forward(const LSDFNGeometry geo, const scalar_t* features,
                               const scalar_t* kernels, scalar_t* output)
{
    GRID_STRIDE_LOOP(idx, geo.batch * geo.sample_count() * geo.out_channels * geo.pixels()) {
        const index_t pixel = idx % geo.pixels(), v = idx / geo.pixels() % geo.out_channels;
        const index_t ns = idx / (geo.pixels() * geo.out_channels);
        const index_t n = ns / geo.sample_count(), s_ = ns % geo.sample_count();
        const index_t y = pixel / geo.width, x = pixel % geo.width;
        scalar_t sum = 0;
        for (index_t t = 0; t < geo.taps(); ++t) {
            index_t dy, dx;
            geo.read(s_, t, dy, dx);
            if (!geo.inside(y + dy, x + dx)) continue;
            for (index_t u = 0; u < geo.channels; ++u)
                sum += features[(n * geo.channels + u) * geo.pixels() + (y + dy) * geo.width
                                + x + dx]
                       * kernels[(((n * geo.out_channels + v) * geo.channels + u) * geo.taps() + t)
                                 * geo.pixels() + pixel];
        }
        output[idx] = sum;
    }
}

// dL/dX[n, u, yq, xq] = sum over the reads (s_, t) of (y, x) = q - (dy, dx) in the map and over
// v of go[n, s_, v, y, x] W^{v,u}_t[y, x].
template <typename scalar_t>
__device__ void sample_grad_features(const LSDFNGeometry geo, const scalar_t* kernels,
                                     const scalar_t* grad_output, scalar_t* grad_features)
{
    GRID_STRIDE_LOOP(idx, geo.batch * geo.channels * geo.pixels()) {
        const index_t read = idx % geo.pixels(), nu_ = idx / geo.pixels();
        const index_t n = nu_ / geo.channels, u = nu_ % geo.channels;
        scalar_t sum = 0;
        for (index_t s_ = 0; s_ < geo.sample_count(); ++s_) {
            for (index_t t = 0; t < geo.taps(); ++t) {
                index_t dy, dx;
                geo.read(s_, t, dy, dx);
                const index_t y = read / geo.width - dy, x = read % geo.width - dx;
                if (!geo.inside(y, x)) continue;
                for (index_t v = 0; v < geo.out_channels; ++v)
                    sum += grad_output[((n * geo.sample_count() + s_) * geo.out_channels + v)
                                       * geo.pixels() + y * geo.width + x]
                           * kernels[(((n * geo.out_channels + v) * geo.channels + u) * geo.taps()
                                      + t) * geo.pixels() + y * geo.width + x];
            }
        }
        grad_features[idx] = sum;
    }
}

// dL/dW[n, v, u, t, y, x] = sum_s_ go[n, s_, v, y, x] X^u[q] over the samples whose read is in
// the map.
template <typename scalar_t>
__device__ void sample_grad_kernels(const LSDFNGeometry geo, const scalar_t* features,
                                    const scalar_t* grad_output, scalar_t* grad_kernels)
{
    GRID_STRIDE_LOOP(idx, geo.batch * geo.out_channels * geo.channels * geo.taps()
                              * geo.pixels()) {
        const index_t pixel = idx % geo.pixels(), t = idx / geo.pixels() % geo.taps();
        const index_t nvu = idx / geo.pixels() / geo.taps(), u = nvu % geo.channels;
        const index_t n = nvu / geo.channels / geo.out_channels;
        const index_t v = nvu / geo.channels % geo.out_channels;
        const index_t y = pixel / geo.width, x = pixel % geo.width;
        scalar_t sum = 0;
        for (index_t s_ = 0; s_ < geo.sample_count(); ++s_) {
            index_t dy, dx;
            geo.read(s_, t, dy, dx);
            if (!geo.inside(y + dy, x + dx)) continue;
            sum += grad_output[((n * geo.sample_count() + s_) * geo.out_channels + v)
                               * geo.pixels() + pixel]
                   * features[(n * geo.channels + u) * geo.pixels() + (y + dy) * geo.width + x
                              + dx];
        }
        grad_kernels[idx] = sum;
    }
}

// ---------------------------------------------------------------------------------------------
// DFN: one sample, centred taps; filters of G groups (G = 1 shared, G = C one per channel)
// ---------------------------------------------------------------------------------------------

// F'[n, g, t, y, x] = exp(F_t - max F) / sum_t' exp(F_t' - max F), one thread per (n, g, y, x).
template <typename scalar_t>
__device__ void dfn_softmax(const LSDFNGeometry geo, index_t groups, const scalar_t* filters,
                            scalar_t* normalised)
{
    GRID_STRIDE_LOOP(idx, geo.batch * groups * geo.pixels()) {
        const index_t pixel = idx % geo.pixels();
        const index_t first = idx / geo.pixels() * geo.taps() * geo.pixels() + pixel;  // t = 0
        scalar_t largest = filters[first], total = 0;
        for (index_t t = 1; t < geo.taps(); ++t)
            largest = filters[first + t * geo.pixels()] > largest
                      ? filters[first + t * geo.pixels()] : largest;
        for (index_t t = 0; t < geo.taps(); ++t) {
            normalised[first + t * geo.pixels()] = exp(filters[first + t * geo.pixels()] - largest);
            total += normalised[first + t * geo.pixels()];
        }
        for (index_t t = 0; t < geo.taps(); ++t) normalised[first + t * geo.pixels()] /= total;
    }
}

// dL/dF = F' (dL/dF' - sum_t' F'_t' dL/dF'_t') through the softmax, one thread per element.
template <typename scalar_t>
__device__ void dfn_softmax_backward(const LSDFNGeometry geo, index_t groups,
                                     const scalar_t* normalised, const scalar_t* grad_normalised,
                                     scalar_t* grad_filters)
{
    GRID_STRIDE_LOOP(idx, geo.batch * groups * geo.taps() * geo.pixels()) {
        const index_t pixel = idx % geo.pixels();
        const index_t first = idx / (geo.taps() * geo.pixels()) * geo.taps() * geo.pixels() + pixel;
        scalar_t dot = 0;
        for (index_t t = 0; t < geo.taps(); ++t)
            dot += grad_normalised[first + t * geo.pixels()] * normalised[first + t * geo.pixels()];
        grad_filters[idx] = normalised[idx] * (grad_normalised[idx] - dot);
    }
}

// out[n, c, y, x] = sum_t X[n, c, y + dy, x + dx] F'[n, g(c), t, y, x] over the reads in the map.
template <typename scalar_t>
__device__ void dfn_forward(const LSDFNGeometry geo, index_t groups, const scalar_t* features,
                            const scalar_t* filters, scalar_t* output)
{
    GRID_STRIDE_LOOP(idx, geo.batch * geo.channels * geo.pixels()) {
        const index_t pixel = idx % geo.pixels(), nc = idx / geo.pixels();
        const index_t ng = groups == 1 ? nc / geo.channels : nc;  // n G + g(c)
        const index_t y = pixel / geo.width, x = pixel % geo.width;
        scalar_t sum = 0;
        for (index_t t = 0; t < geo.taps(); ++t) {
            index_t dy, dx;
            geo.read(0, t, dy, dx);
            if (!geo.inside(y + dy, x + dx)) continue;
            sum += features[nc * geo.pixels() + (y + dy) * geo.width + x + dx]
                   * filters[(ng * geo.taps() + t) * geo.pixels() + pixel];
        }
        output[idx] = sum;
    }
}

// dL/dX[n, c, yq, xq] = sum_t go[n, c, y, x] F'[n, g(c), t, y, x], (y, x) = q - (dy, dx) in map.
template <typename scalar_t>
__device__ void dfn_grad_features(const LSDFNGeometry geo, index_t groups, const scalar_t* filters,
                                  const scalar_t* grad_output, scalar_t* grad_features)
{
    GRID_STRIDE_LOOP(idx, geo.batch * geo.channels * geo.pixels()) {
        const index_t read = idx % geo.pixels(), nc = idx / geo.pixels();
        const index_t ng = groups == 1 ? nc / geo.channels : nc;
        scalar_t sum = 0;
        for (index_t t = 0; t < geo.taps(); ++t) {
            index_t dy, dx;
            geo.read(0, t, dy, dx);
            const index_t y = read / geo.width - dy, x = read % geo.width - dx;
            if (!geo.inside(y, x)) continue;
            sum += grad_output[nc * geo.pixels() + y * geo.width + x]
                   * filters[(ng * geo.taps() + t) * geo.pixels() + y * geo.width + x];
        }
        grad_features[idx] = sum;
    }
}

// dL/dF'[n, g, t, y, x] = sum over the channels c of group g of go[n, c, y, x] X[n, c, q]
// (0 when the read is outside).
template <typename scalar_t>
__device__ void dfn_grad_filters(const LSDFNGeometry geo, index_t groups, const scalar_t* features,
                                 const scalar_t* grad_output, scalar_t* grad_filters)
{
    GRID_STRIDE_LOOP(idx, geo.batch * groups * geo.taps() * geo.pixels()) {
        const index_t pixel = idx % geo.pixels(), t = idx / geo.pixels() % geo.taps();
        const index_t ng = idx / geo.pixels() / geo.taps();
        const index_t y = pixel / geo.width, x = pixel % geo.width;
        index_t dy, dx;
        geo.read(0, t, dy, dx);
        scalar_t sum = 0;
        if (geo.inside(y + dy, x + dx)) {
            // Channels n C + c of group g: all C of image n (shared), or c = g alone.
            const index_t first = groups == 1 ? ng * geo.channels : ng;
            const index_t stop = groups == 1 ? first + geo.channels : first + 1;
            for (index_t nc = first; nc < stop; ++nc)
                sum += grad_output[nc * geo.pixels() + pixel]
                       * features[nc * geo.pixels() + (y + dy) * geo.width + x + dx];
        }
        grad_filters[idx] = sum;
    }
}

// ---------------------------------------------------------------------------------------------
// Exported kernels: _f32 / _f64
// ---------------------------------------------------------------------------------------------

#define LSDFN_INPUTS(scalar_t)                                                                   \
    const LSDFNGeometry *geo, const scalar_t *features, const scalar_t *u, const scalar_t *v,   \
        const scalar_t *sample_attention, const scalar_t *position_attention,                   \
        const scalar_t *full_attention
#define LSDFN_INPUT_VALUES                                                                       \
    *geo, {features, u, v, sample_attention, position_attention, full_attention}

#define LSDFN_KERNELS(suffix, scalar_t)                                                          \
    extern "C" __global__ void lsdfn_forward_##suffix(LSDFN_INPUTS(scalar_t), scalar_t* output) \
    {                                                                                            \
        lsdfn_forward<scalar_t>(LSDFN_INPUT_VALUES, output);                                     \
    }                                                                                            \
    extern "C" __global__ void lsdfn_samples_##suffix(LSDFN_INPUTS(scalar_t),                   \
                                                      scalar_t* unweighted)                      \
    {                                                                                            \
        lsdfn_samples<scalar_t>(LSDFN_INPUT_VALUES, unweighted);                                 \
    }                                                                                            \
    extern "C" __global__ void lsdfn_fusion_grads_##suffix(                                      \
        const LSDFNGeometry* geo, const scalar_t* sample_attention, const scalar_t* unweighted, \
        const scalar_t* grad_output, scalar_t* grad_unweighted, scalar_t* grad_sample_attention) \
    {                                                                                            \
        lsdfn_fusion_grads(*geo, sample_attention, unweighted, grad_output, grad_unweighted,     \
                           grad_sample_attention);                                               \
    }                                                                                            \
    extern "C" __global__ void lsdfn_grad_features_##suffix(                                     \
        LSDFN_INPUTS(scalar_t), const scalar_t* grad_unweighted, scalar_t* grad_features)        \
    {                                                                                            \
        lsdfn_grad_features<scalar_t>(LSDFN_INPUT_VALUES, grad_unweighted, grad_features);       \
    }                                                                                            \
    extern "C" __global__ void lsdfn_grad_kernel_parts_##suffix(                                 \
        LSDFN_INPUTS(scalar_t), const scalar_t* grad_unweighted, scalar_t* grad_u,               \
        scalar_t* grad_v)                                                                        \
    {                                                                                            \
        lsdfn_grad_kernel_parts<scalar_t>(LSDFN_INPUT_VALUES, grad_unweighted, grad_u, grad_v);  \
    }                                                                                            \
    extern "C" __global__ void lsdfn_grad_position_attention_##suffix(                           \
        LSDFN_INPUTS(scalar_t), const scalar_t* grad_unweighted, scalar_t* grad_position)        \
    {                                                                                            \
        lsdfn_grad_position_attention<scalar_t>(LSDFN_INPUT_VALUES, grad_unweighted,             \
                                                grad_position);                                  \
    }                                                                                            \
    extern "C" __global__ void lsdfn_grad_full_attention_##suffix(                               \
        LSDFN_INPUTS(scalar_t), const scalar_t* grad_unweighted, scalar_t* grad_full)            \
    {                                                                                            \
        lsdfn_grad_full_attention<scalar_t>(LSDFN_INPUT_VALUES, grad_unweighted, grad_full);     \
    }                                                                                            \
    extern "C" __global__ void lsdfn_sample_forward_##suffix(                                    \
        const LSDFNGeometry* geo, const scalar_t* features, const scalar_t* kernels,             \
        scalar_t* output)                                                                        \
    {                                                                                            \
        sample_forward(*geo, features, kernels, output);                                         \
    }                                                                                            \
    extern "C" __global__ void lsdfn_sample_grad_features_##suffix(                              \
        const LSDFNGeometry* geo, const scalar_t* kernels, const scalar_t* grad_output,          \
        scalar_t* grad_features)                                                                 \
    {                                                                                            \
        sample_grad_features(*geo, kernels, grad_output, grad_features);                         \
    }                                                                                            \
    extern "C" __global__ void lsdfn_sample_grad_kernels_##suffix(                               \
        const LSDFNGeometry* geo, const scalar_t* features, const scalar_t* grad_output,         \
        scalar_t* grad_kernels)                                                                  \
    {                                                                                            \
        sample_grad_kernels(*geo, features, grad_output, grad_kernels);                          \
    }                                                                                            \
    extern "C" __global__ void lsdfn_dfn_softmax_##suffix(                                       \
        const LSDFNGeometry* geo, index_t groups, const scalar_t* filters,                       \
        scalar_t* normalised)                                                                    \
    {                                                                                            \
        dfn_softmax(*geo, groups, filters, normalised);                                          \
    }                                                                                            \
    extern "C" __global__ void lsdfn_dfn_softmax_backward_##suffix(                              \
        const LSDFNGeometry* geo, index_t groups, const scalar_t* normalised,                    \
        const scalar_t* grad_normalised, scalar_t* grad_filters)                                 \
    {                                                                                            \
        dfn_softmax_backward(*geo, groups, normalised, grad_normalised, grad_filters);           \
    }                                                                                            \
    extern "C" __global__ void lsdfn_dfn_forward_##suffix(                                       \
        const LSDFNGeometry* geo, index_t groups, const scalar_t* features,                      \
        const scalar_t* filters, scalar_t* output)                                               \
    {                                                                                            \
        dfn_forward(*geo, groups, features, filters, output);                                    \
    }                                                                                            \
    extern "C" __global__ void lsdfn_dfn_grad_features_##suffix(                                 \
        const LSDFNGeometry* geo, index_t groups, const scalar_t* filters,                       \
        const scalar_t* grad_output, scalar_t* grad_features)                                    \
    {                                                                                            \
        dfn_grad_features(*geo, groups, filters, grad_output, grad_features);                    \
    }                                                                                            \
    extern "C" __global__ void lsdfn_dfn_grad_filters_##suffix(                                  \
        const LSDFNGeometry* geo, index_t groups, const scalar_t* features,                      \
        const scalar_t* grad_output, scalar_t* grad_filters)                                     \
    {                                                                                            \
        dfn_grad_filters(*geo, groups, features, grad_output, grad_filters);                     \
    }

EXPORT_F32_F64(LSDFN_KERNELS)

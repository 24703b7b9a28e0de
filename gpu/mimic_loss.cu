// The R-CNN feature mimic loss of DCNv2 (Zhu et al. 2019, Section 3.3), forward and backward, in
// CUDA C.  RoI r's features f and target g (any trailing shape) are flattened into vectors of
// D = prod(shape[1:]) entries:
//
//     L = sum_r [1 - cos_r],   cos_r = <f, g> / (N(f) N(g)),   N(v) = max(|v|, eps)
//
// Semantics are those of the NumPy reference refdyn/mimic_loss_numpy.py: a zero feature vector
// has norm eps, cosine 0 and loss term 1, never NaN.  As there, each RoI's vectors are divided
// by their largest |entry| s_f, s_g first (f^ = f / s_f), so that no square overflows or
// underflows and the loss stays scale-invariant up to the dtype's range:
//
//     cos = <f^, g^> / n_f / n_g,   n_f = max(|f^|, eps / s_f) = N(f) / s_f.  Every arithmetic step runs in double for
// both dtypes, as the reference does (it computes in float64 and rounds the results to the
// dtype); only the stored results are scalar_t.  Every array is C-contiguous.
//
// The kernels follow the conventions of common.cuh (templates exported as _f32 / _f64,
// grid-stride loops, 64-bit indices), which also says how each compiler builds this file.
//
// Kernels (no floating-point atomics anywhere: the same bits on every run and any grid):
//  (K1) mimic_loss_rows:     one thread per RoI finds s_f and s_g, sums <f^, g^>, |f^|^2 and
//                            |g^|^2 over k = 0 .. D-1 in increasing k and writes the RoI's
//                            statistics (STAT_* below).
//  (K2) mimic_loss_sum:      one thread (the first of the grid) sums the terms 1 - cos_r over
//                            r in increasing r and stores L.
//  (K3) mimic_loss_backward: one thread per element (r, k) writes both gradients, go = dL/dL:
//       dL/df_k = -go (g^_k / N(f) / n_g - [|f^| > eps / s_f] cos / (s_f |f^|) / |f^| f^_k),
//       and symmetrically (N(f) = max(s_f |f^|, eps)).

#include "common.cuh"

// The sizes of one call and its eps: 3 values of 8 bytes, in the order of GEOMETRY_FIELDS in
// mimic_loss_launch.py (eps travels as the bit pattern of its double in an int64 array).  Each kernel
// receives a pointer to it and copies it into its body's by-value parameter.
struct MimicGeometry {
    index_t rois;  // R
    index_t size;  // D, the entries of one RoI's flattened features
    double eps;
};

// The statistics of one RoI (double, STAT_COUNT per RoI, row-major (R, STAT_COUNT)).
enum MimicStat {
    STAT_COS = 0,      // cos_r
    STAT_SCALE_F = 1,  // s_f, the largest |f_k| (1 for a zero vector)
    STAT_SCALE_G = 2,  // s_g
    STAT_LENGTH_F = 3, // |f^|
    STAT_LENGTH_G = 4, // |g^|
    STAT_COUNT = 5
};

__device__ __forceinline__ double larger(double a, double b)
{
    return a > b ? a : b;
}

// The largest |v_k| of a vector of `size` entries, 1 for a zero vector.
template <typename scalar_t>
__device__ double vector_scale(const scalar_t* v, index_t size)
{
    double peak = 0;
    for (index_t k = 0; k < size; ++k) peak = larger(peak, fabs((double)v[k]));
    return peak > 0 ? peak : 1.0;
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

// (K1) One thread per RoI: its dot product and lengths, summed in increasing k, then cos_r.
template <typename scalar_t>
__device__ void rows(const MimicGeometry geo, const scalar_t* features, const scalar_t* target,
                     double* stats)
{
    GRID_STRIDE_LOOP(r, geo.rois) {
        const scalar_t* f = features + r * geo.size;
        const scalar_t* g = target + r * geo.size;
        const double scale_f = vector_scale(f, geo.size), scale_g = vector_scale(g, geo.size);
        double dot = 0, square_f = 0, square_g = 0;
        for (index_t k = 0; k < geo.size; ++k) {
            const double a = (double)f[k] / scale_f, b = (double)g[k] / scale_g;
            dot += a * b;
            square_f += a * a;
            square_g += b * b;
        }
        const double length_f = sqrt(square_f), length_g = sqrt(square_g);
        double* out = stats + r * STAT_COUNT;
        out[STAT_COS] = dot / larger(length_f, geo.eps / scale_f)
                        / larger(length_g, geo.eps / scale_g);
        out[STAT_SCALE_F] = scale_f;
        out[STAT_SCALE_G] = scale_g;
        out[STAT_LENGTH_F] = length_f;
        out[STAT_LENGTH_G] = length_g;
    }
}

// (K2) L = sum_r (1 - cos_r) in increasing r, by the grid's first thread only (index 0 of a
// grid-stride loop over one element).
template <typename scalar_t>
__device__ void sum_terms(const MimicGeometry geo, const double* stats, scalar_t* loss)
{
    GRID_STRIDE_LOOP(idx, 1) {
        double total = 0;
        for (index_t r = 0; r < geo.rois; ++r) total += 1.0 - stats[r * STAT_COUNT + STAT_COS];
        loss[idx] = (scalar_t)total;
    }
}

// ---------------------------------------------------------------------------------------------
// Backward (K3)
// ---------------------------------------------------------------------------------------------

// The gradient of 1 - cos with respect to entry `own` (scaled by s_own) of one vector, `other`
// the matching entry of the other vector (scaled by s_other), times go:
// -go (other^ / N(own) / n_other - [|own^| > eps / s_own] cos / (s_own |own^|) / |own^| own^).
__device__ __forceinline__ double entry_grad(double go, double own, double other, double cos,
                                             double scale, double length, double other_scale,
                                             double other_length, double eps)
{
    const double radial = length > eps / scale ? cos / (scale * length) / length : 0.0;
    return -go * (other / other_scale / larger(scale * length, eps)
                  / larger(other_length, eps / other_scale) - radial * own / scale);
}

// One thread per element (r, k) writes grad_features and grad_target there.
template <typename scalar_t>
__device__ void backward(const MimicGeometry geo, const scalar_t* features, const scalar_t* target,
                         const double* stats, const scalar_t* grad_output,
                         scalar_t* grad_features, scalar_t* grad_target)
{
    const double go = (double)grad_output[0];
    GRID_STRIDE_LOOP(idx, geo.rois * geo.size) {
        const double* stat = stats + idx / geo.size * STAT_COUNT;
        const double f = (double)features[idx], g = (double)target[idx];
        grad_features[idx] = (scalar_t)entry_grad(
            go, f, g, stat[STAT_COS], stat[STAT_SCALE_F], stat[STAT_LENGTH_F],
            stat[STAT_SCALE_G], stat[STAT_LENGTH_G], geo.eps);
        grad_target[idx] = (scalar_t)entry_grad(
            go, g, f, stat[STAT_COS], stat[STAT_SCALE_G], stat[STAT_LENGTH_G],
            stat[STAT_SCALE_F], stat[STAT_LENGTH_F], geo.eps);
    }
}

// ---------------------------------------------------------------------------------------------
// Exported kernels: _f32 / _f64
// ---------------------------------------------------------------------------------------------

#define MIMIC_LOSS_KERNELS(suffix, scalar_t)                                                     \
    extern "C" __global__ void mimic_loss_rows_##suffix(                                         \
        const MimicGeometry* geo, const scalar_t* features, const scalar_t* target,              \
        double* stats)                                                                           \
    {                                                                                            \
        rows(*geo, features, target, stats);                                                     \
    }                                                                                            \
    extern "C" __global__ void mimic_loss_sum_##suffix(                                          \
        const MimicGeometry* geo, const double* stats, scalar_t* loss)                           \
    {                                                                                            \
        sum_terms(*geo, stats, loss);                                                            \
    }                                                                                            \
    extern "C" __global__ void mimic_loss_backward_##suffix(                                     \
        const MimicGeometry* geo, const scalar_t* features, const scalar_t* target,              \
        const double* stats, const scalar_t* grad_output, scalar_t* grad_features,               \
        scalar_t* grad_target)                                                                   \
    {                                                                                            \
        backward(*geo, features, target, stats, grad_output, grad_features, grad_target);        \
    }

EXPORT_F32_F64(MIMIC_LOSS_KERNELS)

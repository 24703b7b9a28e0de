// The RoI pooling family (docs/conventions.md section 3), forward and backward, in CUDA C: torchvision
// roi_align and ps_roi_align and mmcv DeformRoIPool with DCNv2's modulation
// (refdyn/roi_align_numpy.py), DCNv1 Eq. 5-6 deformable RoI pooling and the official DCN
// deformable PS RoI pooling (refdyn/roi_pool_numpy.py).
//
// Every operator averages bilinear samples x(p) (DCNv1 Eq. 3-4) over the bins of a RoI:
//
//     y[r, o, i, j] = dm[r, i, j] sum_{a, b counted} x_ch(y_a + dy, x_b + dx) / max(count, 1)
//
// Bin (i, j) of RoI r holds a separable grid of samples y_a (a < S_y) by x_b (b < S_x), each an
// arithmetic sequence, moved by one shift (dy, dx) per bin; the kinds differ in the sequences,
// the shift, which samples count and the boundary rule:
//   KIND_ALIGN (roi_align, ps_roi_align, deform_roi_align): start = corner * scale - 0.5
//     aligned, size clamped to >= 1 when not aligned, S = sampling_ratio or ceil(size / P);
//     y_a = start + i h/P + (a + 1/2) h/(P S); shift = gamma (h, w) o (offset[r, 1],
//     offset[r, 0]) (x first, mmcv); dm = mask[r, 0, i, j] or 1; roi_align rule.
//   KIND_EQ5 (deform_roi_pool, DCNv1 Eq. 5-6): y_a = y1 scale + floor(i h/P) + a for
//     a < ceil((i + 1) h/P) - floor(i h/P); shift = gamma (h, w) o (offset[r, 0], offset[r, 1]);
//     zeros rule.
//   KIND_OFFICIAL (deform_ps_roi_pool): rounded corners, the -0.5 shift, sizes >= 0.1;
//     y_a = i h/P + start + a h/(P S); shift = trans_std (h, w) o offset[r, 2c + 1 / 2c, cell]
//     for class c of o and the part cell floor(i/P part); samples beyond the -0.5 / H - 0.5 lines
//     are not counted, the others read with the border rule.
// The channel a bin reads is position-sensitive with G_h x G_w score-map groups per output
// channel: ch = (o G_h + g_i) G_w + g_j, g_i = min(floor(i G_h / P_h), G_h - 1).  G = 1 x 1
// gives ch = o (roi_align, deform_roi_align, deform_roi_pool); G = P_h x P_w gives torchvision
// ps_roi_align's (o P_h + i) P_w + j; G = gs x gs the official PS pooling's (o gs + g_i) gs + g_j.
// Whether a sample counts and its weights are products of one factor per axis, so the bin's
// weight on pixel (q_y, q_x) is (sum_a w(q_y, y_a)) (sum_b w(q_x, x_b)): the input gradient is a
// gather with no floating-point atomics, summed in a fixed order.
//
// As in the NumPy reference, sampling points, weights and sums are computed in double whatever
// the arrays' dtype (float or double), and each result is rounded once when it is written.
// The kernels follow the conventions of common.cuh (templates exported as _f32 / _f64,
// grid-stride loops, 64-bit indices), which also says how each compiler builds this file.
//
// Backward, go = dL/d y:
//     dL/d x[n, ch, q]   = sum_{r, o, i, j reading ch} go dm / count sum_{a, b} G(q, p_ab)
//     dL/d shift_(i, j)  = sum_o go dm / count sum_{a, b} d x(p_ab) / d p (right derivatives)
//     dL/d offset        = dL/d shift o gamma (h, w), summed over the bins and classes sharing it
//     dL/d dm            = sum_o go sum_{a, b} x(p_ab) / count                    (DCNv2 Eq. 2)

#include "common.cuh"

// The operator families above (ROI_KINDS in roi_launch.py).
enum RoIKind { KIND_ALIGN = 0, KIND_EQ5 = 1, KIND_OFFICIAL = 2 };

// The sampling rules of docs/conventions.md section 1 each kind uses.
enum SampleRule { RULE_ZEROS = 0, RULE_BORDER = 1, RULE_ROI_ALIGN = 2 };

// The sizes of one call: 17 int64 values (sampling_ratio is sample_per_part for KIND_OFFICIAL), in the order of GEOMETRY_FIELDS in roi_launch.py.
// mmcv_grad (KIND_ALIGN only) selects mmcv DeformRoIPool's offset-gradient rule (bilinear()).
// out_channels is C / (group_h group_w); group_h x group_w the score-map groups of the channel
// mapping (header); classes is 1 except for KIND_OFFICIAL with offsets; cells_h x cells_w is
// the offset grid (P_h x P_w, or part_size x part_size).
struct RoIGeometry {
    index_t batch, channels, height, width, rois, pooled_h, pooled_w, out_channels;
    index_t kind, sampling_ratio, aligned, group_h, group_w, classes, cells_h, cells_w;
    index_t mmcv_grad;

    __device__ index_t pixels() const { return height * width; }
    __device__ index_t bins() const { return pooled_h * pooled_w; }
    __device__ index_t per_class() const { return out_channels / classes; }
};

// The real parameters of one call: spatial_scale and gamma (trans_std for KIND_OFFICIAL).
struct RoIScales {
    double spatial_scale, gamma;
};

// ---------------------------------------------------------------------------------------------
// RoIs, bins and their samples
// ---------------------------------------------------------------------------------------------

// A RoI in feature-map pixels: batch index, top-left corner and size.
struct RoIFrame {
    index_t n;
    double start_h, start_w, h, w;
};

template <typename scalar_t>
__device__ RoIFrame roi_frame(const RoIGeometry& geo, const RoIScales& scales,
                              const scalar_t* rois, index_t r)
{
    const scalar_t* roi = rois + 5 * r;
    const double x1 = roi[1], y1 = roi[2], x2 = roi[3], y2 = roi[4], s = scales.spatial_scale;
    RoIFrame f;
    f.n = (index_t)roi[0];
    if (geo.kind == KIND_ALIGN) {  // torchvision: -0.5 when aligned, else sizes >= 1
        const double half = geo.aligned ? 0.5 : 0.0;
        f.start_w = x1 * s - half;
        f.start_h = y1 * s - half;
        f.w = x2 * s - half - f.start_w;
        f.h = y2 * s - half - f.start_h;
        if (!geo.aligned) {
            f.w = f.w < 1.0 ? 1.0 : f.w;
            f.h = f.h < 1.0 ? 1.0 : f.h;
        }
    } else if (geo.kind == KIND_EQ5) {  // p0 = (y1, x1) scale, size (y2 - y1) scale
        f.start_h = y1 * s;
        f.start_w = x1 * s;
        f.h = (y2 - y1) * s;
        f.w = (x2 - x1) * s;
    } else {  // official: C round (halves away from zero), end pixel included, >= 0.1
        f.start_w = round(x1) * s - 0.5;
        f.start_h = round(y1) * s - 0.5;
        const double end_w = (round(x2) + 1.0) * s - 0.5, end_h = (round(y2) + 1.0) * s - 0.5;
        f.w = end_w - f.start_w < 0.1 ? 0.1 : end_w - f.start_w;
        f.h = end_h - f.start_h < 0.1 ? 0.1 : end_h - f.start_h;
    }
    return f;
}

// The samples of bin i along one axis of a RoI of the given start and size, a < count, in the
// reference's order of operations (the per-kind sequences of the header):
//     KIND_ALIGN     at(a) = (start + i bin) + (a + 1/2) bin / count,   bin = size / P
//     KIND_EQ5       at(a) = start + (floor(i size / P) + a)
//     KIND_OFFICIAL  at(a) = (i bin + start) + a (bin / sample_per_part)
struct Axis {
    double start, base, bin;
    index_t count;
    int kind;

    __device__ double at(index_t a) const
    {
        if (kind == KIND_ALIGN) return base + ((double)a + 0.5) * bin / (double)count;
        if (kind == KIND_EQ5) return start + (base + (double)a);
        return base + (double)a * (bin / (double)count);
    }
};

__device__ Axis make_axis(const RoIGeometry& geo, double start, double size, index_t bins,
                          index_t i)
{
    Axis axis;
    axis.kind = (int)geo.kind;
    axis.start = start;
    axis.bin = size / (double)bins;
    if (geo.kind == KIND_ALIGN) {  // sampling_ratio, or the adaptive ceil(size / P) (>= 0)
        const double adaptive = ceil(size / (double)bins);
        axis.count = geo.sampling_ratio > 0 ? geo.sampling_ratio
                                            : (adaptive > 0.0 ? (index_t)adaptive : 0);
        axis.base = start + (double)i * axis.bin;
    } else if (geo.kind == KIND_EQ5) {  // floor(i size/P) <= p < ceil((i + 1) size/P) (Eq. 5)
        const double low = floor((double)i * size / (double)bins);
        const double high = ceil((double)(i + 1) * size / (double)bins);
        axis.count = high > low ? (index_t)(high - low) : 0;
        axis.base = low;
    } else {  // official: S = sample_per_part samples from the bin's corner
        axis.count = geo.sampling_ratio;
        axis.base = (double)i * axis.bin + start;
    }
    return axis;
}

// The offset cell of bin i: i itself, or floor(i / P part_size) for KIND_OFFICIAL.
__device__ __forceinline__ index_t cell_of(const RoIGeometry& geo, index_t i, index_t bins,
                                           index_t cells)
{
    if (geo.kind != KIND_OFFICIAL) return i;
    return (index_t)floor((double)i / (double)bins * (double)cells);
}

// The position-sensitive group of bin i of `bins` along an axis with `groups` groups:
// min(floor(i groups / bins), groups - 1).
__device__ __forceinline__ index_t group_of(index_t i, index_t bins, index_t groups)
{
    const index_t g = i * groups / bins;
    return g < groups - 1 ? g : groups - 1;
}

// The input channel bin (i, j) of output channel o reads: (o G_h + g_i) G_w + g_j (header).
__device__ __forceinline__ index_t channel_of(const RoIGeometry& geo, index_t o, index_t i,
                                              index_t j)
{
    return (o * geo.group_h + group_of(i, geo.pooled_h, geo.group_h)) * geo.group_w
           + group_of(j, geo.pooled_w, geo.group_w);
}

// Bin (i, j) of output channel o of RoI r: its samples, shift, modulation, input channel, rule.
struct Bin {
    RoIFrame roi;
    Axis ys, xs;
    double shift_y, shift_x, dm;
    index_t channel;
    int rule;
};

template <typename scalar_t>
__device__ Bin make_bin(const RoIGeometry& geo, const RoIScales& scales, const scalar_t* rois,
                        const scalar_t* offset, const scalar_t* mask, index_t r, index_t o,
                        index_t i, index_t j)
{
    Bin bin;
    bin.roi = roi_frame(geo, scales, rois, r);
    bin.ys = make_axis(geo, bin.roi.start_h, bin.roi.h, geo.pooled_h, i);
    bin.xs = make_axis(geo, bin.roi.start_w, bin.roi.w, geo.pooled_w, j);
    bin.dm = mask == nullptr ? 1.0 : (double)mask[(r * geo.pooled_h + i) * geo.pooled_w + j];
    bin.channel = channel_of(geo, o, i, j);
    bin.rule = geo.kind == KIND_ALIGN ? RULE_ROI_ALIGN
                                      : (geo.kind == KIND_EQ5 ? RULE_ZEROS : RULE_BORDER);
    index_t channel_y = 1, channel_x = 0;  // mmcv: channel 0 = x
    if (geo.kind == KIND_EQ5) {
        channel_y = 0;  // refdyn's (y, x) order
        channel_x = 1;
    } else if (geo.kind == KIND_OFFICIAL) {
        const index_t c = o / geo.per_class();
        channel_x = 2 * c;
        channel_y = 2 * c + 1;
    }
    const index_t cell = cell_of(geo, i, geo.pooled_h, geo.cells_h) * geo.cells_w
                         + cell_of(geo, j, geo.pooled_w, geo.cells_w);
    const index_t cells = geo.cells_h * geo.cells_w, offset_channels = 2 * geo.classes;
    // dp = gamma dp^ o (h, w) (DCNv1 Eq. 6; trans_std for the official code)
    bin.shift_y = offset == nullptr ? 0.0
                  : (double)offset[(r * offset_channels + channel_y) * cells + cell] * (scales.gamma * bin.roi.h);
    bin.shift_x = offset == nullptr ? 0.0
                  : (double)offset[(r * offset_channels + channel_x) * cells + cell] * (scales.gamma * bin.roi.w);
    return bin;
}

// Whether a sample coordinate v counts along its axis: KIND_OFFICIAL skips v < -0.5 and
// v > extent - 0.5; every other kind counts every sample.
__device__ __forceinline__ bool counted(const Bin& bin, double v, index_t extent)
{
    return bin.rule != RULE_BORDER || (v >= -0.5 && v <= (double)extent - 0.5);
}

// ---------------------------------------------------------------------------------------------
// Bilinear sampling along one axis (docs/conventions.md section 1), in double
// ---------------------------------------------------------------------------------------------

// One coordinate v of a sample under a rule: whether it may read the image (the roi_align rule
// reads 0 beyond -1 / extent), the lower neighbour v0, the fraction l = v - v0 (of the clamped
// coordinate under the border rules), the two neighbours read (the upper one the edge pixel
// under the border rules) and the right derivative of the clamp.
struct AxisStencil {
    bool inside;
    index_t low, high;
    double frac, slope, unclamped;
};

__device__ AxisStencil axis_stencil(int rule, double v, index_t extent)
{
    AxisStencil s;
    const double last = (double)(extent - 1);
    s.unclamped = v;
    s.inside = rule != RULE_ROI_ALIGN || (v >= -1.0 && v <= (double)extent);
    s.slope = 1.0;
    if (rule == RULE_ZEROS) {  // far points read zeros only; keeps floor() in range
        v = v < -2.0 ? -2.0 : (v > (double)(extent + 1) ? (double)(extent + 1) : v);
    } else {  // clamp into [0, extent - 1]; slope 1 on [0, extent - 1), else 0
        s.slope = v >= 0.0 && v < last ? 1.0 : 0.0;
        v = v < 0.0 ? 0.0 : (v > last ? last : v);
    }
    const double f = floor(v);
    s.low = (index_t)f;
    s.frac = v - f;
    s.high = rule != RULE_ZEROS && s.low + 1 > extent - 1 ? extent - 1 : s.low + 1;
    return s;
}

// The 1-D weight g of neighbour k (0: low, 1: high) and the coordinate it reads.
__device__ __forceinline__ double neighbour_weight(const AxisStencil& s, int k)
{
    return k ? s.frac : 1.0 - s.frac;
}

__device__ __forceinline__ index_t neighbour(const AxisStencil& s, int k)
{
    return k ? s.high : s.low;
}

// The weight the sample coordinate v puts on integer coordinate q along its axis: G's factor
// g(q, v) summed over the neighbours that are q (both are the edge pixel at a clamp).
__device__ double axis_weight(int rule, double v, index_t q, index_t extent)
{
    const AxisStencil s = axis_stencil(rule, v, extent);
    if (!s.inside) return 0.0;
    return (s.low == q ? neighbour_weight(s, 0) : 0.0) + (s.high == q ? neighbour_weight(s, 1) : 0.0);
}

// x(p) and (d x(p)/d p_y, d x(p)/d p_x) (DCNv1 Eq. 3 and Appendix A Eq. 7, right derivatives)
// of one channel image at p = (y, x); neighbours outside the image read 0 (zeros rule).  With
// mmcv_grad the derivatives are mmcv DeformRoIPool's: the slopes between the neighbours read,
// weighted by the unclamped point (refdyn.bilinear_numpy, the roi_align rule).
struct Sample {
    double value, d_y, d_x;
};

template <typename scalar_t>
__device__ Sample bilinear(int rule, bool mmcv_grad, const scalar_t* image, index_t height,
                           index_t width, double y, double x)
{
    const AxisStencil sy = axis_stencil(rule, y, height), sx = axis_stencil(rule, x, width);
    Sample out = {0.0, 0.0, 0.0};
    if (!sy.inside || !sx.inside) return out;
    double v[2][2];
    for (int ky = 0; ky < 2; ++ky) {
        for (int kx = 0; kx < 2; ++kx) {
            const index_t qy = neighbour(sy, ky), qx = neighbour(sx, kx);
            v[ky][kx] = qy >= 0 && qy < height && qx >= 0 && qx < width
                            ? (double)image[qy * width + qx] : 0.0;
            out.value += neighbour_weight(sy, ky) * neighbour_weight(sx, kx) * v[ky][kx];
        }
    }
    if (mmcv_grad) {
        const double high_x = (double)sx.high - sx.unclamped, low_x = sx.unclamped - (double)sx.low;
        const double high_y = (double)sy.high - sy.unclamped, low_y = sy.unclamped - (double)sy.low;
        out.d_y = high_x * (v[1][0] - v[0][0]) + low_x * (v[1][1] - v[0][1]);
        out.d_x = high_y * (v[0][1] - v[0][0]) + low_y * (v[1][1] - v[1][0]);
        return out;
    }
    out.d_y = sy.slope * ((1.0 - sx.frac) * (v[1][0] - v[0][0]) + sx.frac * (v[1][1] - v[0][1]));
    out.d_x = sx.slope * ((1.0 - sy.frac) * (v[0][1] - v[0][0]) + sy.frac * (v[1][1] - v[1][0]));
    return out;
}

// The sums over the counted samples of bin `bin` of x(p), d x/d p_y and d x/d p_x of channel
// image `image`, and the number of counted samples.
struct BinSums {
    Sample sum;
    index_t count;
};

template <typename scalar_t>
__device__ BinSums bin_sums(const RoIGeometry& geo, const Bin& bin, const scalar_t* image)
{
    BinSums out = {{0.0, 0.0, 0.0}, 0};
    for (index_t a = 0; a < bin.ys.count; ++a) {
        const double y = bin.ys.at(a) + bin.shift_y;
        if (!counted(bin, y, geo.height)) continue;
        for (index_t b = 0; b < bin.xs.count; ++b) {
            const double x = bin.xs.at(b) + bin.shift_x;
            if (!counted(bin, x, geo.width)) continue;
            const Sample s = bilinear(bin.rule, geo.mmcv_grad != 0, image, geo.height,
                                      geo.width, y, x);
            out.sum.value += s.value;
            out.sum.d_y += s.d_y;
            out.sum.d_x += s.d_x;
            ++out.count;
        }
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

// y[r, o, i, j] = dm sum x(p) / max(count, 1), one thread per output element.
template <typename scalar_t>
__device__ void forward(const RoIGeometry geo, const RoIScales scales, const scalar_t* input,
                        const scalar_t* rois, const scalar_t* offset, const scalar_t* mask,
                        scalar_t* output)
{
    GRID_STRIDE_LOOP(idx, geo.rois * geo.out_channels * geo.bins()) {
        const index_t j = idx % geo.pooled_w, i = idx / geo.pooled_w % geo.pooled_h;
        const index_t o = idx / geo.bins() % geo.out_channels, r = idx / (geo.bins() * geo.out_channels);
        const Bin bin = make_bin(geo, scales, rois, offset, mask, r, o, i, j);
        const BinSums sums = bin_sums(geo, bin, input + (bin.roi.n * geo.channels + bin.channel) * geo.pixels());
        output[idx] = (scalar_t)(bin.dm * (sums.sum.value / (double)(sums.count > 0 ? sums.count : 1)));
    }
}

// ---------------------------------------------------------------------------------------------
// Backward (the header's equations)
// ---------------------------------------------------------------------------------------------

// dL/d x[n, ch, q_y, q_x], one thread per input element: every bin of every RoI of image n that
// reads channel ch adds go dm / count (sum_a w(q_y, y_a)) (sum_b w(q_x, x_b)) over its counted
// samples.  RoIs, then bins in row-major order.
template <typename scalar_t>
__device__ void grad_input(const RoIGeometry geo, const RoIScales scales, const scalar_t* rois,
                           const scalar_t* offset, const scalar_t* mask,
                           const scalar_t* grad_output, scalar_t* grad_x)
{
    GRID_STRIDE_LOOP(idx, geo.batch * geo.channels * geo.pixels()) {
        const index_t qx = idx % geo.width, qy = idx / geo.width % geo.height;
        const index_t ch = idx / geo.pixels() % geo.channels, n = idx / (geo.pixels() * geo.channels);
        // The output channel whose bins read ch (those of its groups (g_i, g_j)).
        const index_t o = ch / (geo.group_h * geo.group_w);
        double sum = 0.0;
        for (index_t r = 0; r < geo.rois; ++r) {
            if ((index_t)rois[5 * r] != n) continue;
            for (index_t i = 0; i < geo.pooled_h; ++i) {
                for (index_t j = 0; j < geo.pooled_w; ++j) {
                    const Bin bin = make_bin(geo, scales, rois, offset, mask, r, o, i, j);
                    if (bin.channel != ch) continue;
                    double weight_y = 0.0, weight_x = 0.0;
                    index_t count_y = 0, count_x = 0;
                    for (index_t a = 0; a < bin.ys.count; ++a) {
                        const double y = bin.ys.at(a) + bin.shift_y;
                        if (!counted(bin, y, geo.height)) continue;
                        weight_y += axis_weight(bin.rule, y, qy, geo.height);
                        ++count_y;
                    }
                    for (index_t b = 0; b < bin.xs.count; ++b) {
                        const double x = bin.xs.at(b) + bin.shift_x;
                        if (!counted(bin, x, geo.width)) continue;
                        weight_x += axis_weight(bin.rule, x, qx, geo.width);
                        ++count_x;
                    }
                    const index_t count = count_y * count_x;
                    if (count == 0) continue;  // an empty bin pools to 0
                    const double go = grad_output[((r * geo.out_channels + o) * geo.pooled_h + i) * geo.pooled_w + j];
                    sum += go * bin.dm / (double)count * weight_y * weight_x;
                }
            }
        }
        grad_x[idx] = (scalar_t)sum;
    }
}

// dL/d offset and dL/d dm, one thread per (r, class, cell): the bins of the cell (the bin itself
// except for KIND_OFFICIAL) and the output channels of the class (all of them except for
// KIND_OFFICIAL), in increasing order.  grad_offset or grad_mask is null when not wanted;
// grad_mask only for KIND_ALIGN, whose cells are its bins.
template <typename scalar_t>
__device__ void grad_offset_mask(const RoIGeometry geo, const RoIScales scales,
                                 const scalar_t* input, const scalar_t* rois,
                                 const scalar_t* offset, const scalar_t* mask,
                                 const scalar_t* grad_output, scalar_t* grad_offset,
                                 scalar_t* grad_mask)
{
    const index_t cells = geo.cells_h * geo.cells_w, per_class = geo.per_class();
    GRID_STRIDE_LOOP(idx, geo.rois * geo.classes * cells) {
        const index_t cell_j = idx % geo.cells_w, cell_i = idx / geo.cells_w % geo.cells_h;
        const index_t c = idx / cells % geo.classes, r = idx / (cells * geo.classes);
        double shift_y = 0.0, shift_x = 0.0, dm = 0.0;
        for (index_t o = c * per_class; o < (c + 1) * per_class; ++o) {
            for (index_t i = 0; i < geo.pooled_h; ++i) {
                if (cell_of(geo, i, geo.pooled_h, geo.cells_h) != cell_i) continue;
                for (index_t j = 0; j < geo.pooled_w; ++j) {
                    if (cell_of(geo, j, geo.pooled_w, geo.cells_w) != cell_j) continue;
                    const Bin bin = make_bin(geo, scales, rois, offset, mask, r, o, i, j);
                    const BinSums sums = bin_sums(geo, bin, input + (bin.roi.n * geo.channels + bin.channel) * geo.pixels());
                    const double go = grad_output[((r * geo.out_channels + o) * geo.pooled_h + i) * geo.pooled_w + j]
                                      / (double)(sums.count > 0 ? sums.count : 1);
                    shift_y += go * bin.dm * sums.sum.d_y;
                    shift_x += go * bin.dm * sums.sum.d_x;
                    dm += go * sums.sum.value;
                }
            }
        }
        if (grad_offset != nullptr) {  // d shift / d offset = gamma (h, w), shared by the cell's bins
            const RoIFrame roi = roi_frame(geo, scales, rois, r);
            const index_t at = ((r * 2 * geo.classes + 2 * c) * geo.cells_h + cell_i) * geo.cells_w + cell_j;
            const index_t channel_y = geo.kind == KIND_EQ5 ? 0 : 1;  // x first except for Eq. 6
            grad_offset[at + channel_y * cells] = (scalar_t)(shift_y * scales.gamma * roi.h);
            grad_offset[at + (1 - channel_y) * cells] = (scalar_t)(shift_x * scales.gamma * roi.w);
        }
        if (grad_mask != nullptr) grad_mask[idx] = (scalar_t)dm;
    }
}

// ---------------------------------------------------------------------------------------------
// Exported kernels: _f32 / _f64
// ---------------------------------------------------------------------------------------------

#define ROI_KERNELS(suffix, scalar_t)                                                            \
    extern "C" __global__ void roi_forward_##suffix(                                             \
        const RoIGeometry* geo, const RoIScales* scales, const scalar_t* input,                  \
        const scalar_t* rois, const scalar_t* offset, const scalar_t* mask, scalar_t* output)    \
    {                                                                                            \
        forward(*geo, *scales, input, rois, offset, mask, output);                               \
    }                                                                                            \
    extern "C" __global__ void roi_grad_input_##suffix(                                          \
        const RoIGeometry* geo, const RoIScales* scales, const scalar_t* rois,                   \
        const scalar_t* offset, const scalar_t* mask, const scalar_t* grad_output,               \
        scalar_t* grad_x)                                                                        \
    {                                                                                            \
        grad_input(*geo, *scales, rois, offset, mask, grad_output, grad_x);                      \
    }                                                                                            \
    extern "C" __global__ void roi_grad_offset_mask_##suffix(                                    \
        const RoIGeometry* geo, const RoIScales* scales, const scalar_t* input,                  \
        const scalar_t* rois, const scalar_t* offset, const scalar_t* mask,                      \
        const scalar_t* grad_output, scalar_t* grad_offset, scalar_t* grad_mask)                 \
    {                                                                                            \
        grad_offset_mask(*geo, *scales, input, rois, offset, mask, grad_output, grad_offset,     \
                         grad_mask);                                                             \
    }

EXPORT_F32_F64(ROI_KERNELS)

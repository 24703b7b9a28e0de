// Deformable convolution, DCNv1 (Dai et al. 2017, Eq. 2-4, Appendix A) and DCNv2 (Zhu et al.
// 2019, Eq. 1), forward and backward, in CUDA C.
//
//     y(p0) = sum_k w_k * x(p0 + p_k + dp_k) * dm_k     (DCNv2 Eq. 1; dm_k = 1 in DCNv1 Eq. 2)
//
// Layout and semantics are those of the NumPy reference refdyn/deform_conv_numpy.py (torchvision's):
//     input  (N, C_in, H, W)              offset (N, 2 G K, H_out, W_out), (dy, dx) per tap
//     weight (C_out, C_in / groups, kh, kw)  mask (N, G K, H_out, W_out), K = kh kw taps
//     bias   (C_out,)                     output (N, C_out, H_out, W_out)
// Input channel c belongs to group c / (C_in / groups) and to offset group g = c / (C_in / G).
// Every array is C-contiguous; mask and bias may be null (DCNv1, no bias).
// Samples follow the call's boundary rule (docs/conventions.md section 1): zeros (the image is
// zero-padded) or border (the point is clamped to [0, H-1] x [0, W-1] first).
//
// The kernels follow the conventions of common.cuh (templates exported as _f32 / _f64,
// grid-stride loops, 64-bit indices), which also says how each compiler builds this file.
//
// The operator is im2col and a matrix product, as in torchvision's and mmcv's kernels: this file
// samples, the matrix products are the array library's (cuBLAS through CuPy; see deform_conv_launch.py):
//     columns[n, c, k, i, j] = x_c(p_k) dm_k                         (kernel "columns", Eq. 2-3)
//     out[n, o] = bias[o] + sum_{c' k} w[o, c', k] columns[n, c, k]  (a GEMM per group)
// Backward (DCNv1 Appendix A, with DCNv2's modulation), go = dL/d output:
//     col_grad[n, c, k, i, j] = sum_{o in group(c)} w[o, c', k] go[n, o, i, j]   (a GEMM)
//     dL/d x(q)   = sum over samples p of col_grad dm G(q, p)          (scatter, or ordered gather)
//     dL/d dp_k   = sum_{c in offset group} col_grad dm d x_c(p)/d p    (Eq. 7)
//     dL/d dm_k   = sum_{c in offset group} col_grad x_c(p)
//     dL/d w      = sum_{n, i, j} go columns (a GEMM);     dL/d bias = sum_{n, i, j} go

#include "common.cuh"

// The sizes of one call and its boundary rule (a BoundaryRule): 18 int64 values, in the order
// of GEOMETRY_FIELDS in deform_conv_launch.py.  Each kernel receives a pointer to it and copies it into its
// body's by-value parameter.
struct Geometry {
    index_t batch, in_channels, height, width;
    index_t out_channels, kernel_h, kernel_w, groups, offset_groups;
    index_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
    index_t out_h, out_w;
    index_t boundary;

    __device__ index_t taps() const { return kernel_h * kernel_w; }
    __device__ index_t positions() const { return out_h * out_w; }
    __device__ index_t pixels() const { return height * width; }
    __device__ index_t in_per_group() const { return in_channels / groups; }
    __device__ index_t out_per_group() const { return out_channels / groups; }
    __device__ index_t in_per_offset_group() const { return in_channels / offset_groups; }
};

// The boundary rules of bilinear sampling (docs/conventions.md section 1).
enum BoundaryRule { BOUNDARY_ZEROS = 0, BOUNDARY_BORDER = 1 };

// The offset-gradient rule at the edge of the zeros boundary (pytorch/vision issue 6885).
enum CoordGradRule { COORD_GRAD_TORCHVISION = 0, COORD_GRAD_MMCV = 1 };

// A flat index of a (..., H_out, W_out) array split into the output position and the rest.
struct Position {
    index_t rest, i, j, flat;  // flat = i * W_out + j
};

__device__ __forceinline__ Position split_position(const Geometry& geo, index_t idx)
{
    const index_t flat = idx % geo.positions();
    return {idx / geo.positions(), flat / geo.out_w, flat % geo.out_w, flat};
}

// Flat index of offset[n, g 2K + 2k, i, j], the dy of tap k (its dx is H_out W_out further).
__device__ __forceinline__ index_t offset_index(const Geometry& geo, index_t n, index_t g,
                                                index_t k, const Position& pos)
{
    return ((n * geo.offset_groups + g) * 2 * geo.taps() + 2 * k) * geo.positions() + pos.flat;
}

// Flat index of columns[n, c, k, i, j] or col_grad[n, c, k, i, j].
__device__ __forceinline__ index_t column_index(const Geometry& geo, index_t n, index_t c,
                                                index_t k, const Position& pos)
{
    return ((n * geo.in_channels + c) * geo.taps() + k) * geo.positions() + pos.flat;
}

// A flat index of a (N, C_in, K, H_out, W_out) column array split into its image n, channel c,
// the channel's offset group g, tap k and output position: the inverse of column_index.
struct ColumnElement {
    index_t n, c, g, k;
    Position pos;
};

__device__ __forceinline__ ColumnElement split_column(const Geometry& geo, index_t idx)
{
    const Position pos = split_position(geo, idx);
    const index_t k = pos.rest % geo.taps(), c = pos.rest / geo.taps() % geo.in_channels;
    return {pos.rest / (geo.taps() * geo.in_channels), c, c / geo.in_per_offset_group(), k, pos};
}

// ---------------------------------------------------------------------------------------------
// Sampling points and bilinear interpolation (DCNv1 Eq. 2-4)
// ---------------------------------------------------------------------------------------------

// A point (y, x); also used for a gradient (d/dy, d/dx).
template <typename scalar_t>
struct Point {
    scalar_t y, x;
};

// p = p0 + p_k + dp_k for output position (i, j), tap k = a kw + b, offset group g (DCNv1 Eq. 2).
// p0 + p_k is exact in integers; adding the offset rounds once, in scalar_t, like the reference.
template <typename scalar_t>
__device__ __forceinline__ Point<scalar_t> sampling_point(const Geometry& geo,
                                                          const scalar_t* offset, index_t n,
                                                          index_t g, index_t k, const Position& pos)
{
    const index_t a = k / geo.kernel_w, b = k % geo.kernel_w;
    const index_t dy_at = offset_index(geo, n, g, k, pos), dx_at = dy_at + geo.positions();
    return {(scalar_t)(pos.i * geo.stride_h - geo.pad_h + a * geo.dilation_h) + offset[dy_at],
            (scalar_t)(pos.j * geo.stride_w - geo.pad_w + b * geo.dilation_w) + offset[dx_at]};
}

// The modulation scalar dm_k of DCNv2 Eq. 1 (1 without a mask, DCNv1).
template <typename scalar_t>
__device__ __forceinline__ scalar_t modulation(const Geometry& geo, const scalar_t* mask, index_t n,
                                               index_t g, index_t k, const Position& pos)
{
    if (mask == nullptr) return scalar_t(1);
    return mask[((n * geo.offset_groups + g) * geo.taps() + k) * geo.positions() + pos.flat];
}

// The zeros rule: x(p) = 0 unless -1 < p_y < H and -1 < p_x < W (docs/conventions.md section 1).
template <typename scalar_t>
__device__ __forceinline__ bool in_sampling_region(Point<scalar_t> p, index_t height, index_t width)
{
    return p.y > scalar_t(-1) && p.y < (scalar_t)height && p.x > scalar_t(-1)
           && p.x < (scalar_t)width;
}

// Some neighbour of p lies in the image only if -2 < p_y < H + 1 and -2 < p_x < W + 1.  Outside
// this band every value and derivative of the zeros rule is 0, so no far (or huge) coordinate
// reaches floor().
template <typename scalar_t>
__device__ __forceinline__ bool near_image(Point<scalar_t> p, index_t height, index_t width)
{
    return p.y > scalar_t(-2) && p.y < (scalar_t)(height + 1) && p.x > scalar_t(-2)
           && p.x < (scalar_t)(width + 1);
}

// Whether x(p) may be non-zero: always under the border rule (p is clamped into the image),
// only inside the sampling region under the zeros rule.
template <typename scalar_t>
__device__ __forceinline__ bool sample_reads_image(const Geometry& geo, Point<scalar_t> p)
{
    return geo.boundary == BOUNDARY_BORDER || in_sampling_region(p, geo.height, geo.width);
}

// The border rule's clamp of one coordinate into [0, extent - 1].
template <typename scalar_t>
__device__ __forceinline__ scalar_t clamp_coordinate(scalar_t v, index_t extent)
{
    const scalar_t last = (scalar_t)(extent - 1);
    return v < scalar_t(0) ? scalar_t(0) : (v > last ? last : v);
}

// Right derivative of that clamp: 1 for 0 <= v < extent - 1, 0 elsewhere (docs/conventions.md section 1).
template <typename scalar_t>
__device__ __forceinline__ scalar_t clamp_slope(scalar_t v, index_t extent)
{
    return v >= scalar_t(0) && v < (scalar_t)(extent - 1) ? scalar_t(1) : scalar_t(0);
}

// The four integer neighbours q of a point p and their bilinear weights
// G(q, p) = g(q_y, p_y) g(q_x, p_x), g(a, b) = max(0, 1 - |a - b|) (DCNv1 Eq. 3-4), under the
// call's boundary rule.  Corner 0..3 is (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1),
// with y0 = floor(p_y).  Under the border rule p is clamped to [0, H-1] x [0, W-1] first and a
// neighbour beyond the last row or column is the edge pixel; under the zeros rule p must be near
// the image (near_image) and a neighbour outside it reads 0.
template <typename scalar_t>
struct Neighbours {
    index_t y0, x0, height, width;
    scalar_t ly, lx;  // p - floor(p), in [0, 1)
    bool border;

    __device__ Neighbours(const Geometry& geo, Point<scalar_t> p)
        : height(geo.height), width(geo.width), border(geo.boundary == BOUNDARY_BORDER)
    {
        if (border) {
            p.y = clamp_coordinate(p.y, height);
            p.x = clamp_coordinate(p.x, width);
        }
        const scalar_t fy = floor(p.y), fx = floor(p.x);
        y0 = (index_t)fy;
        x0 = (index_t)fx;
        ly = p.y - fy;
        lx = p.x - fx;
    }

    // The pixel the corner reads: beyond the last row or column, the edge under the border rule
    // (y0, x0 >= 0 there); under the zeros rule possibly outside the image (see in_image).
    __device__ index_t row(int corner) const
    {
        const index_t y = y0 + corner / 2;
        return border && y >= height ? height - 1 : y;
    }
    __device__ index_t col(int corner) const
    {
        const index_t x = x0 + corner % 2;
        return border && x >= width ? width - 1 : x;
    }

    __device__ bool in_image(int corner) const
    {
        return row(corner) >= 0 && row(corner) < height && col(corner) >= 0 && col(corner) < width;
    }

    // G(q, p): (1 - ly)(1 - lx), (1 - ly) lx, ly (1 - lx), ly lx.
    __device__ scalar_t weight(int corner) const
    {
        const scalar_t wy = corner / 2 ? ly : scalar_t(1) - ly;
        const scalar_t wx = corner % 2 ? lx : scalar_t(1) - lx;
        return wy * wx;
    }

    // x(q); corners outside the image read 0 (zeros rule; never under the border rule).
    __device__ scalar_t read(const scalar_t* image, int corner) const
    {
        if (!in_image(corner)) return scalar_t(0);
        return image[row(corner) * width + col(corner)];
    }
};

// x(p) = sum_q G(q, p) x(q) under the call's boundary rule (DCNv1 Eq. 3).  image: one (H, W)
// channel.
template <typename scalar_t>
__device__ scalar_t bilinear_sample(const Geometry& geo, const scalar_t* image, Point<scalar_t> p)
{
    if (!sample_reads_image(geo, p)) return scalar_t(0);
    const Neighbours<scalar_t> q(geo, p);
    scalar_t value = 0;
    for (int corner = 0; corner < 4; ++corner) {
        value += q.weight(corner) * q.read(image, corner);
    }
    return value;
}

// The factor of each axis of d x(p)/d p (DCNv1 Appendix A, Eq. 7) under the call's rules, the
// right derivative where a coordinate is an integer.  Border rule: the clamp's right
// derivative (clamp_slope), so 0 along an axis where p lies outside [0, H-1) (or [0, W-1)).
// Zeros rule: 1, except 0 for COORD_GRAD_MMCV outside the sampling region (also the official
// DCNv2 code) and 0 where no neighbour of p is in the image (COORD_GRAD_TORCHVISION applies
// the formula with no early exit, so at p_y = -1 it reads row 0).  Where both factors are 0
// the point is never floor()ed, so far (or huge) coordinates are safe.
template <typename scalar_t>
__device__ Point<scalar_t> coord_grad_slope(const Geometry& geo, Point<scalar_t> p, index_t rule)
{
    if (geo.boundary == BOUNDARY_BORDER) {
        return {clamp_slope(p.y, geo.height), clamp_slope(p.x, geo.width)};
    }
    if ((rule == COORD_GRAD_MMCV && !in_sampling_region(p, geo.height, geo.width))
        || !near_image(p, geo.height, geo.width)) {
        return {scalar_t(0), scalar_t(0)};
    }
    return {scalar_t(1), scalar_t(1)};
}

// x(p) and (d x(p)/d p_y, d x(p)/d p_x) from the four corners v00, v01, v10, v11 of p (corner
// order of Neighbours) read once:
//     x(p)         = sum_q G(q, p) x(q)                                              (Eq. 3)
//     d x(p)/d p_y = (1 - lx)(x[y0+1, x0] - x[y0, x0]) + lx (x[y0+1, x0+1] - x[y0, x0+1])
//     d x(p)/d p_x = (1 - ly)(x[y0, x0+1] - x[y0, x0]) + ly (x[y0+1, x0+1] - x[y0+1, x0])
// each derivative times its factor in ``slope`` (coord_grad_slope).
template <typename scalar_t>
struct SampleAndSlope {
    scalar_t value;
    Point<scalar_t> grad;

    __device__ SampleAndSlope(const Neighbours<scalar_t>& q, const scalar_t* image,
                              Point<scalar_t> slope)
    {
        const scalar_t v00 = q.read(image, 0), v01 = q.read(image, 1);
        const scalar_t v10 = q.read(image, 2), v11 = q.read(image, 3);
        value = q.weight(0) * v00 + q.weight(1) * v01 + q.weight(2) * v10 + q.weight(3) * v11;
        grad = {slope.y * ((scalar_t(1) - q.lx) * (v10 - v00) + q.lx * (v11 - v01)),
                slope.x * ((scalar_t(1) - q.ly) * (v01 - v00) + q.ly * (v11 - v10))};
    }
};

// ---------------------------------------------------------------------------------------------
// Sampled columns, the forward's part that is not a matrix product (DCNv1 Eq. 2, DCNv2 Eq. 1)
// ---------------------------------------------------------------------------------------------

// columns[n, c, k, i, j] = x_c(p_k) dm_k, one thread per element (im2col of the sampled input).
template <typename scalar_t>
__device__ void sampled_columns(const Geometry geo, const scalar_t* input, const scalar_t* offset,
                                const scalar_t* mask, scalar_t* columns)
{
    GRID_STRIDE_LOOP(idx, geo.batch * geo.in_channels * geo.taps() * geo.positions()) {
        const ColumnElement e = split_column(geo, idx);
        const scalar_t* image = input + (e.n * geo.in_channels + e.c) * geo.pixels();
        const Point<scalar_t> p = sampling_point(geo, offset, e.n, e.g, e.k, e.pos);
        columns[idx] = bilinear_sample(geo, image, p) * modulation(geo, mask, e.n, e.g, e.k, e.pos);
    }
}

// ---------------------------------------------------------------------------------------------
// Backward (DCNv1 Appendix A; DCNv2 Eq. 1 for the mask); col_grad comes from a matrix product
// ---------------------------------------------------------------------------------------------

// dL/d dp_k = sum_c col_grad dm_k d x_c(p)/d p (Eq. 7) and dL/d dm_k = sum_c col_grad x_c(p) over
// the channels c of offset group g; one thread per (n, g, k, i, j).  grad_mask is null without
// a mask.
template <typename scalar_t>
__device__ void grad_offset_mask(const Geometry geo, const scalar_t* input, const scalar_t* offset,
                                 const scalar_t* mask, const scalar_t* column_grad, index_t rule,
                                 scalar_t* grad_offset, scalar_t* grad_mask)
{
    const index_t taps = geo.taps(), per_offset_group = geo.in_per_offset_group();
    GRID_STRIDE_LOOP(idx, geo.batch * geo.offset_groups * taps * geo.positions()) {
        const Position pos = split_position(geo, idx);
        const index_t k = pos.rest % taps, g = pos.rest / taps % geo.offset_groups;
        const index_t n = pos.rest / (taps * geo.offset_groups);
        const Point<scalar_t> p = sampling_point(geo, offset, n, g, k, pos);
        const scalar_t m = modulation(geo, mask, n, g, k, pos);
        // The neighbours of p serve every channel.  Where the sample reads nothing and the
        // slope is 0 both gradients are 0; elsewhere x(p) needs no test of its own (outside the
        // sampling region every corner is outside the image or weighs 0).
        const Point<scalar_t> slope = coord_grad_slope(geo, p, rule);
        Point<scalar_t> grad_p = {scalar_t(0), scalar_t(0)};
        scalar_t grad_m = 0;
        if (sample_reads_image(geo, p) || slope.y != scalar_t(0) || slope.x != scalar_t(0)) {
            const Neighbours<scalar_t> q(geo, p);
            for (index_t c = g * per_offset_group; c < (g + 1) * per_offset_group; ++c) {
                const scalar_t* image = input + (n * geo.in_channels + c) * geo.pixels();
                const scalar_t col = column_grad[column_index(geo, n, c, k, pos)];
                const SampleAndSlope<scalar_t> x(q, image, slope);
                grad_p.y += col * m * x.grad.y;
                grad_p.x += col * m * x.grad.x;
                if (grad_mask != nullptr) grad_m += col * x.value;
            }
        }
        const index_t dy_at = offset_index(geo, n, g, k, pos);
        grad_offset[dy_at] = grad_p.y;
        grad_offset[dy_at + geo.positions()] = grad_p.x;
        if (grad_mask != nullptr) grad_mask[idx] = grad_m;
    }
}

// dL/d x(q) += col_grad dm G(q, p) for the neighbours q of every sample p: the adjoint of Eq. 3,
// one thread per (n, c, k, i, j), summed with atomicAdd (the order, and so the last bits, vary).
// Under the border rule a neighbour beyond the edge passes its share to the edge pixel it reads.
// grad_input must hold zeros first.
template <typename scalar_t>
__device__ void grad_input_atomic(const Geometry geo, const scalar_t* offset, const scalar_t* mask,
                                  const scalar_t* column_grad, scalar_t* grad_input)
{
    GRID_STRIDE_LOOP(idx, geo.batch * geo.in_channels * geo.taps() * geo.positions()) {
        const ColumnElement e = split_column(geo, idx);
        const Point<scalar_t> p = sampling_point(geo, offset, e.n, e.g, e.k, e.pos);
        if (!sample_reads_image(geo, p)) continue;  // x(p) = 0 reads no pixel
        const Neighbours<scalar_t> q(geo, p);
        const scalar_t grad_sample = column_grad[idx] * modulation(geo, mask, e.n, e.g, e.k, e.pos);
        scalar_t* grad_image = grad_input + (e.n * geo.in_channels + e.c) * geo.pixels();
        for (int corner = 0; corner < 4; ++corner) {
            if (q.in_image(corner)) {
                atomicAdd(&grad_image[q.row(corner) * geo.width + q.col(corner)],
                          grad_sample * q.weight(corner));
            }
        }
    }
}

// Deterministic dL/d x(q), with no floating-point atomics.  The samples of one (n, offset group g)
// that touch a pixel (the pixel a corner reads, so under the border rule the edge pixel for a
// corner beyond the edge) form that pixel's list of contributions, identified by
//     id = (k * H_out * W_out + i * W_out + j) * 4 + corner.
// Five passes, the lists stored CSR-style (starts = exclusive prefix sum of the sizes):
//   count_contributions:  sizes[n, g, pixel] += 1 per contribution    (integer atomics)
//   fill_contributions:   entries[starts + slot] = id, slots taken with integer atomics
//   sort_contributions:   each list sorted by id (heapsort, in place: O(s log s) for s ids, even
//                         when every sample lands on one pixel and s = 4 K H_out W_out)
//   weigh_contributions:  weights[e] = G(q, p) dm of each entry, once for all the channels
//   grad_input_gather:    per (n, c, pixel) the sum of col_grad weights in list order,
// so every run adds the same terms in the same order.

// Calls visit(list, id) for each contribution of sample (n, g, k, i, j); idx is that sample's
// flat index and list = (n * G + g) * H * W + pixel.
template <typename scalar_t, typename Visit>
__device__ __forceinline__ void for_each_contribution(const Geometry& geo, const scalar_t* offset,
                                                      index_t idx, Visit visit)
{
    const index_t taps = geo.taps();
    const Position pos = split_position(geo, idx);
    const index_t k = pos.rest % taps, g = pos.rest / taps % geo.offset_groups;
    const index_t n = pos.rest / (taps * geo.offset_groups);
    const Point<scalar_t> p = sampling_point(geo, offset, n, g, k, pos);
    if (!sample_reads_image(geo, p)) return;
    const Neighbours<scalar_t> q(geo, p);
    const index_t first_list = (n * geo.offset_groups + g) * geo.pixels();
    for (int corner = 0; corner < 4; ++corner) {
        if (q.in_image(corner)) {
            visit(first_list + q.row(corner) * geo.width + q.col(corner),
                  (k * geo.positions() + pos.flat) * 4 + corner);
        }
    }
}

// sizes[n, g, pixel] = number of contributions to the pixel; one thread per (n, g, k, i, j).
// sizes must hold zeros first.
template <typename scalar_t>
__device__ void count_contributions(const Geometry geo, const scalar_t* offset,
                                    unsigned long long* sizes)
{
    GRID_STRIDE_LOOP(idx, geo.batch * geo.offset_groups * geo.taps() * geo.positions()) {
        for_each_contribution(geo, offset, idx, [&](index_t list, index_t) {
            atomicAdd(&sizes[list], 1ULL);
        });
    }
}

// entries[starts[list] + slot] = id, in whatever order the threads arrive; filled must hold zeros.
template <typename scalar_t>
__device__ void fill_contributions(const Geometry geo, const scalar_t* offset,
                                   const index_t* starts, unsigned long long* filled,
                                   index_t* entries)
{
    GRID_STRIDE_LOOP(idx, geo.batch * geo.offset_groups * geo.taps() * geo.positions()) {
        for_each_contribution(geo, offset, idx, [&](index_t list, index_t id) {
            const index_t slot = (index_t)atomicAdd(&filled[list], 1ULL);
            entries[starts[list] + slot] = id;
        });
    }
}

// Sift-down of heapsort: ids[0, size) is a max-heap (ids[e] >= ids[2e + 1], ids[2e + 2]) except
// perhaps at ids[root]; moves that id down, each step lifting its larger child into its place,
// until neither child is larger.  O(log size) steps.
__device__ __forceinline__ void sift_down(index_t* ids, index_t root, index_t size)
{
    const index_t id = ids[root];
    for (index_t child = 2 * root + 1; child < size; child = 2 * root + 1) {
        if (child + 1 < size && ids[child + 1] > ids[child]) ++child;
        if (ids[child] <= id) break;
        ids[root] = ids[child];
        root = child;
    }
    ids[root] = id;
}

// Sorts each list by contribution id, in place; one thread per (n, g, pixel).  Heapsort: the
// list is made a max-heap (sift-down from the last parent to the root, O(s)), then s - 1 times
// the largest id left is swapped to the end of the unsorted part and the root sifted down again:
// O(s log s) for a list of s ids whatever order fill_contributions left it in, no scratch memory.
// The ids of a list are distinct, so the order is unique (stability does not matter).
__device__ void sort_contributions(const Geometry geo, const index_t* starts,
                                   const unsigned long long* sizes, index_t* entries)
{
    GRID_STRIDE_LOOP(list, geo.batch * geo.offset_groups * geo.pixels()) {
        index_t* ids = entries + starts[list];
        const index_t size = (index_t)sizes[list];
        for (index_t root = size / 2 - 1; root >= 0; --root) sift_down(ids, root, size);
        for (index_t end = size - 1; end > 0; --end) {
            const index_t largest = ids[0];
            ids[0] = ids[end];
            ids[end] = largest;
            sift_down(ids, 0, end);
        }
    }
}

// weights[e] = G(q, p) dm of entry e (corner q of sample p) of every list; one thread per
// (n, g, pixel).
template <typename scalar_t>
__device__ void weigh_contributions(const Geometry geo, const scalar_t* offset,
                                    const scalar_t* mask, const index_t* starts,
                                    const unsigned long long* sizes, const index_t* entries,
                                    scalar_t* weights)
{
    GRID_STRIDE_LOOP(list, geo.batch * geo.offset_groups * geo.pixels()) {
        const index_t g = list / geo.pixels() % geo.offset_groups;
        const index_t n = list / (geo.pixels() * geo.offset_groups);
        for (index_t e = starts[list]; e < starts[list] + (index_t)sizes[list]; ++e) {
            const Position pos = split_position(geo, entries[e] / 4);
            const index_t k = pos.rest;
            const Neighbours<scalar_t> q(geo, sampling_point(geo, offset, n, g, k, pos));
            weights[e] = q.weight((int)(entries[e] % 4)) * modulation(geo, mask, n, g, k, pos);
        }
    }
}

// grad_input[n, c, pixel] = sum over the sorted list of (n, g(c), pixel) of col_grad G(q, p) dm.
template <typename scalar_t>
__device__ void grad_input_gather(const Geometry geo, const scalar_t* column_grad,
                                  const index_t* starts, const unsigned long long* sizes,
                                  const index_t* entries, const scalar_t* weights,
                                  scalar_t* grad_input)
{
    GRID_STRIDE_LOOP(idx, geo.batch * geo.in_channels * geo.pixels()) {
        const index_t pixel = idx % geo.pixels(), c = idx / geo.pixels() % geo.in_channels;
        const index_t n = idx / (geo.pixels() * geo.in_channels);
        const index_t g = c / geo.in_per_offset_group();
        const index_t list = (n * geo.offset_groups + g) * geo.pixels() + pixel;
        const scalar_t* channel_grad = column_grad + (n * geo.in_channels + c) * geo.taps()
                                                     * geo.positions();
        scalar_t sum = 0;
        // entries[e] / 4 = k H_out W_out + i W_out + j, the sample's place in its channel's rows
        for (index_t e = starts[list]; e < starts[list] + (index_t)sizes[list]; ++e) {
            sum += channel_grad[entries[e] / 4] * weights[e];
        }
        grad_input[idx] = sum;
    }
}

// ---------------------------------------------------------------------------------------------
// Exported kernels: deform_conv_<name>_f32 / _f64 (and the dtype-free sort)
// ---------------------------------------------------------------------------------------------

extern "C" __global__ void deform_conv_sort_contributions(const Geometry* geo,
                                                          const index_t* starts,
                                                          const unsigned long long* sizes,
                                                          index_t* entries)
{
    sort_contributions(*geo, starts, sizes, entries);
}

#define DEFORM_CONV_KERNELS(suffix, scalar_t)                                                     \
    extern "C" __global__ void deform_conv_columns_##suffix(                                      \
        const Geometry* geo, const scalar_t* input, const scalar_t* offset, const scalar_t* mask, \
        scalar_t* columns)                                                                        \
    {                                                                                             \
        sampled_columns(*geo, input, offset, mask, columns);                                      \
    }                                                                                             \
    extern "C" __global__ void deform_conv_grad_offset_mask_##suffix(                             \
        const Geometry* geo, const scalar_t* input, const scalar_t* offset, const scalar_t* mask, \
        const scalar_t* column_grad, index_t rule, scalar_t* grad_offset, scalar_t* grad_mask)    \
    {                                                                                             \
        grad_offset_mask(*geo, input, offset, mask, column_grad, rule, grad_offset, grad_mask);   \
    }                                                                                             \
    extern "C" __global__ void deform_conv_grad_input_atomic_##suffix(                            \
        const Geometry* geo, const scalar_t* offset, const scalar_t* mask,                        \
        const scalar_t* column_grad, scalar_t* grad_input)                                        \
    {                                                                                             \
        grad_input_atomic(*geo, offset, mask, column_grad, grad_input);                           \
    }                                                                                             \
    extern "C" __global__ void deform_conv_count_contributions_##suffix(                          \
        const Geometry* geo, const scalar_t* offset, unsigned long long* sizes)                   \
    {                                                                                             \
        count_contributions(*geo, offset, sizes);                                                 \
    }                                                                                             \
    extern "C" __global__ void deform_conv_fill_contributions_##suffix(                           \
        const Geometry* geo, const scalar_t* offset, const index_t* starts,                       \
        unsigned long long* filled, index_t* entries)                                             \
    {                                                                                             \
        fill_contributions(*geo, offset, starts, filled, entries);                                \
    }                                                                                             \
    extern "C" __global__ void deform_conv_weigh_contributions_##suffix(                          \
        const Geometry* geo, const scalar_t* offset, const scalar_t* mask, const index_t* starts,  \
        const unsigned long long* sizes, const index_t* entries, scalar_t* weights)               \
    {                                                                                             \
        weigh_contributions(*geo, offset, mask, starts, sizes, entries, weights);                 \
    }                                                                                             \
    extern "C" __global__ void deform_conv_grad_input_gather_##suffix(                            \
        const Geometry* geo, const scalar_t* column_grad, const index_t* starts,                  \
        const unsigned long long* sizes, const index_t* entries, const scalar_t* weights,         \
        scalar_t* grad_input)                                                                     \
    {                                                                                             \
        grad_input_gather(*geo, column_grad, starts, sizes, entries, weights, grad_input);        \
    }

EXPORT_F32_F64(DEFORM_CONV_KERNELS)

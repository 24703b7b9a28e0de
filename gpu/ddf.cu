// The DDF operation of DDF (Zhou et al., CVPR 2021; decoupled dynamic filters), forward and
// backward, in CUDA C.  With K = k k taps, tap t = ky k + kx, head h(c) of channel c:
//
//     out[n, c, i] = sum_t combine(Dsp[n, h(c) K + t, i], Dch[n, c, t]) X[n, c, j(i, t)]
//     combine(Dsp, Dch) = Dsp Dch ("mul", the paper's DDF operation) or Dsp + Dch ("add")
//
// Layout and semantics are those of the NumPy reference refdyn/ddf_numpy.py
// (argument rules in refdyn/ddf_args.py, docs/conventions.md section 6):
//     features X (N, C, H, W)      channel_filter Dch (N, C, k, k)
//     spatial_filter Dsp (N, head K, H_out, W_out)   output (N, C, H_out, W_out)
//     H_out = H / stride, W_out = W / stride, r = (k - 1) / 2, h(c) = c / (C / head)
// Output pixel i = (ph, pw) reads, at tap t, the input pixel (a cross-correlation, no flip)
//     j(i, t) = (ph stride + (ky - r) dilation, pw stride + (kx - r) dilation)
// and zero where j(i, t) lies outside the image.  Every array is C-contiguous.
//
// The kernels follow the conventions of common.cuh (templates exported as _f32 / _f64,
// grid-stride loops, 64-bit indices), which also says how each compiler builds this file.
//
// Backward (ddf_backward of the reference), go = dL/d out; every gradient is a gather, one
// thread per element it writes, summed in a fixed order (no atomics: the same bits on every run):
//  (B1) dL/dX[n, c, q]         = sum_{(i, t): j(i, t) = q} go[n, c, i] combine(Dsp, Dch)
//  (B2) dL/dDsp[n, h K + t, i] = sum_{c in head h} go[n, c, i] X[n, c, j(i, t)] dcombine/dDsp
//  (B3) dL/dDch[n, c, t]       = sum_i go[n, c, i] X[n, c, j(i, t)] dcombine/dDch
// with dcombine/dDsp = Dch, dcombine/dDch = Dsp for "mul", and 1 for "add".

#include "common.cuh"

// The rules of ddf's kernel_combine argument (KERNEL_COMBINES in ddf_launch.py).
enum KernelCombine { COMBINE_MUL = 0, COMBINE_ADD = 1 };

// The sizes of one call and its combine rule: 11 int64 values, in the order of GEOMETRY_FIELDS in
// ddf_launch.py.  Each kernel receives a pointer to it and copies it into its body's by-value
// parameter.
struct DDFGeometry {
    index_t batch, channels, height, width;
    index_t kernel_size, dilation, stride, head;
    index_t out_h, out_w;
    index_t combine;  // a KernelCombine

    __device__ index_t taps() const { return kernel_size * kernel_size; }
    __device__ index_t radius() const { return (kernel_size - 1) / 2; }
    __device__ index_t positions() const { return out_h * out_w; }
    __device__ index_t pixels() const { return height * width; }
    __device__ index_t channels_per_head() const { return channels / head; }

    // The offset of tap row ky (or column kx) from the window centre: (ky - r) dilation.
    __device__ index_t tap_offset(index_t k) const { return (k - radius()) * dilation; }
};

// combine(Dsp, Dch) of one tap: Dsp Dch ("mul") or Dsp + Dch ("add").
template <typename scalar_t>
__device__ __forceinline__ scalar_t combine(const DDFGeometry& geo, scalar_t spatial,
                                            scalar_t channel)
{
    return geo.combine == COMBINE_MUL ? spatial * channel : spatial + channel;
}

// The derivative of combine with respect to one filter, given the other filter's value:
// the other filter ("mul") or 1 ("add").
template <typename scalar_t>
__device__ __forceinline__ scalar_t combine_partial(const DDFGeometry& geo, scalar_t other)
{
    return geo.combine == COMBINE_MUL ? other : scalar_t(1);
}

// Flat index, within one (H, W) channel, of the input pixel j(i, t) that tap t of output pixel
// i = (ph, pw) reads; -1 when it lies outside the image (the zero padding).
__device__ __forceinline__ index_t tap_pixel(const DDFGeometry& geo, index_t ph, index_t pw,
                                             index_t t)
{
    const index_t y = ph * geo.stride + geo.tap_offset(t / geo.kernel_size);
    const index_t x = pw * geo.stride + geo.tap_offset(t % geo.kernel_size);
    if (y < 0 || y >= geo.height || x < 0 || x >= geo.width) return -1;
    return y * geo.width + x;
}

// The output coordinate o (row or column) whose tap at offset `offset` reads input coordinate v:
// o stride + offset = v, so o = (v - offset) / stride when that is an integer in [0, extent);
// -1 when no output reaches v through this tap.
__device__ __forceinline__ index_t reaching_output(index_t v, index_t offset, index_t stride,
                                                   index_t extent)
{
    const index_t centre = v - offset;
    if (centre < 0 || centre % stride != 0 || centre / stride >= extent) return -1;
    return centre / stride;
}

// Flat index of Dsp[n, h K + t, i] (i a flat output pixel).
__device__ __forceinline__ index_t spatial_index(const DDFGeometry& geo, index_t n, index_t h,
                                                 index_t t, index_t i)
{
    return ((n * geo.head + h) * geo.taps() + t) * geo.positions() + i;
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

// out[n, c, i] = sum_t combine(Dsp, Dch) X[n, c, j(i, t)], one thread per output element, taps
// in increasing t (the reference's order); taps outside the image add nothing.
template <typename scalar_t>
__device__ void forward(const DDFGeometry geo, const scalar_t* features,
                        const scalar_t* channel_filter, const scalar_t* spatial_filter,
                        scalar_t* output)
{
    const index_t taps = geo.taps(), positions = geo.positions();
    GRID_STRIDE_LOOP(idx, geo.batch * geo.channels * positions) {
        const index_t i = idx % positions, nc = idx / positions;  // nc = n C + c
        const index_t n = nc / geo.channels, h = nc % geo.channels / geo.channels_per_head();
        const scalar_t* image = features + nc * geo.pixels();
        scalar_t sum = 0;
        for (index_t t = 0; t < taps; ++t) {
            const index_t pixel = tap_pixel(geo, i / geo.out_w, i % geo.out_w, t);
            if (pixel < 0) continue;
            sum += combine(geo, spatial_filter[spatial_index(geo, n, h, t, i)],
                           channel_filter[nc * taps + t])
                   * image[pixel];
        }
        output[idx] = sum;
    }
}

// ---------------------------------------------------------------------------------------------
// Backward (Eq. B1-B3 above)
// ---------------------------------------------------------------------------------------------

// Eq. B1: one thread per input element (n, c, y, x).  Through tap t, at most one output pixel
// reads (y, x): (y - (ky - r) d, x - (kx - r) d) / stride, where both are integers in range.
// Taps in increasing t, as the reference accumulates them.
template <typename scalar_t>
__device__ void grad_features(const DDFGeometry geo, const scalar_t* channel_filter,
                              const scalar_t* spatial_filter, const scalar_t* grad_output,
                              scalar_t* grad_x)
{
    const index_t taps = geo.taps(), positions = geo.positions();
    GRID_STRIDE_LOOP(idx, geo.batch * geo.channels * geo.pixels()) {
        const index_t pixel = idx % geo.pixels(), nc = idx / geo.pixels();
        const index_t n = nc / geo.channels, h = nc % geo.channels / geo.channels_per_head();
        const index_t y = pixel / geo.width, x = pixel % geo.width;
        scalar_t sum = 0;
        for (index_t t = 0; t < taps; ++t) {
            const index_t ph = reaching_output(y, geo.tap_offset(t / geo.kernel_size),
                                               geo.stride, geo.out_h);
            const index_t pw = reaching_output(x, geo.tap_offset(t % geo.kernel_size),
                                               geo.stride, geo.out_w);
            if (ph < 0 || pw < 0) continue;
            const index_t i = ph * geo.out_w + pw;
            sum += grad_output[nc * positions + i]
                   * combine(geo, spatial_filter[spatial_index(geo, n, h, t, i)],
                             channel_filter[nc * taps + t]);
        }
        grad_x[idx] = sum;
    }
}

// Eq. B2: one thread per spatial-filter element (n, h, t, i), summing over the channels of head
// h; 0 where tap t of pixel i lies outside the image.
template <typename scalar_t>
__device__ void grad_spatial_filter(const DDFGeometry geo, const scalar_t* features,
                                    const scalar_t* channel_filter, const scalar_t* grad_output,
                                    scalar_t* grad_spatial)
{
    const index_t taps = geo.taps(), positions = geo.positions();
    const index_t per_head = geo.channels_per_head();
    GRID_STRIDE_LOOP(idx, geo.batch * geo.head * taps * positions) {
        const index_t i = idx % positions, t = idx / positions % taps;
        const index_t nh = idx / (positions * taps);  // nh = n head + h
        const index_t pixel = tap_pixel(geo, i / geo.out_w, i % geo.out_w, t);
        scalar_t sum = 0;
        if (pixel >= 0) {
            // Channels n C + h (C / head) ... of head h: nh (C / head) onwards.
            for (index_t nc = nh * per_head; nc < (nh + 1) * per_head; ++nc) {
                sum += grad_output[nc * positions + i] * features[nc * geo.pixels() + pixel]
                       * combine_partial(geo, channel_filter[nc * taps + t]);
            }
        }
        grad_spatial[idx] = sum;
    }
}

// Eq. B3: one thread per channel-filter element (n, c, t), summing over the output pixels in
// row-major order.
template <typename scalar_t>
__device__ void grad_channel_filter(const DDFGeometry geo, const scalar_t* features,
                                    const scalar_t* spatial_filter, const scalar_t* grad_output,
                                    scalar_t* grad_channel)
{
    const index_t taps = geo.taps(), positions = geo.positions();
    GRID_STRIDE_LOOP(idx, geo.batch * geo.channels * taps) {
        const index_t t = idx % taps, nc = idx / taps;
        const index_t n = nc / geo.channels, h = nc % geo.channels / geo.channels_per_head();
        scalar_t sum = 0;
        for (index_t i = 0; i < positions; ++i) {
            const index_t pixel = tap_pixel(geo, i / geo.out_w, i % geo.out_w, t);
            if (pixel < 0) continue;
            sum += grad_output[nc * positions + i] * features[nc * geo.pixels() + pixel]
                   * combine_partial(geo, spatial_filter[spatial_index(geo, n, h, t, i)]);
        }
        grad_channel[idx] = sum;
    }
}

// ---------------------------------------------------------------------------------------------
// Exported kernels: _f32 / _f64
// ---------------------------------------------------------------------------------------------

#define DDF_KERNELS(suffix, scalar_t)                                                            \
    extern "C" __global__ void ddf_forward_##suffix(                                             \
        const DDFGeometry* geo, const scalar_t* features, const scalar_t* channel_filter,        \
        const scalar_t* spatial_filter, scalar_t* output)                                        \
    {                                                                                            \
        forward(*geo, features, channel_filter, spatial_filter, output);                         \
    }                                                                                            \
    extern "C" __global__ void ddf_grad_features_##suffix(                                       \
        const DDFGeometry* geo, const scalar_t* channel_filter, const scalar_t* spatial_filter,  \
        const scalar_t* grad_output, scalar_t* grad_x)                                           \
    {                                                                                            \
        grad_features(*geo, channel_filter, spatial_filter, grad_output, grad_x);                \
    }                                                                                            \
    extern "C" __global__ void ddf_grad_spatial_filter_##suffix(                                 \
        const DDFGeometry* geo, const scalar_t* features, const scalar_t* channel_filter,        \
        const scalar_t* grad_output, scalar_t* grad_spatial)                                     \
    {                                                                                            \
        grad_spatial_filter(*geo, features, channel_filter, grad_output, grad_spatial);          \
    }                                                                                            \
    extern "C" __global__ void ddf_grad_channel_filter_##suffix(                                 \
        const DDFGeometry* geo, const scalar_t* features, const scalar_t* spatial_filter,        \
        const scalar_t* grad_output, scalar_t* grad_channel)                                     \
    {                                                                                            \
        grad_channel_filter(*geo, features, spatial_filter, grad_output, grad_channel);          \
    }

EXPORT_F32_F64(DDF_KERNELS)

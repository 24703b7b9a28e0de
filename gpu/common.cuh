// What every CUDA C file of this folder shares; each includes it first, as #include "common.cuh".
//
// The conventions of every kernel: a template over scalar_t (float, double), exported at the end
// of its file as extern "C" functions with an _f32 / _f64 suffix (EXPORT_F32_F64); it walks its
// elements with a grid-stride loop (GRID_STRIDE_LOOP), so it is correct for any launch
// configuration, and indexes with 64-bit integers (index_t).
//
// Every file, and this header with it, is compiled three ways, so the header includes nothing
// and uses only what CUDA C and cuda_host_compat.h both provide:
//   - by NVRTC through CuPy (refdyn.gpu.cupy), which compiles a file's text and so finds this
//     header on its include path (-I<this folder> in NVRTC_OPTIONS);
//   - by nvcc, which finds it beside the file that includes it;
//   - by the host C++ compiler (refdyn.gpu.host), after the force-included cuda_host_compat.h,
//     with this folder on the include path (-I), and the header's content in the build's cache key.
// Each file stays a translation unit of its own, with its own geometry struct and enums.
#pragma once

typedef long long index_t;

// for idx in this thread's elements of [0, total): its global thread index, then strides of the
// whole grid.  The products are 64-bit, so no index wraps however large the arrays.
#define GRID_STRIDE_LOOP(idx, total)                                                    \
    for (index_t idx = blockIdx.x * (index_t)blockDim.x + threadIdx.x; idx < (total); \
         idx += (index_t)blockDim.x * gridDim.x)

// Exports a file's kernels for both dtypes.  KERNELS(suffix, scalar_t) declares them as
// extern "C" __global__ void <stem>_<name>_##suffix(...), the form refdyn.gpu.cuda_c reads the
// kernel names from; its KERNEL_SUFFIX pairs each suffix with its NumPy dtype.
#define EXPORT_F32_F64(KERNELS) \
    KERNELS(f32, float)         \
    KERNELS(f64, double)

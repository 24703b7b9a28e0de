// Lets the host C++ compiler build a CUDA C file for the CPU, unchanged:
//
//     g++ -std=c++17 -shared -fPIC -x c++ -include cuda_host_compat.h deform_conv.cu -o lib.so
//
// Being force-included, it comes before everything in the file, common.cuh included, so the
// blockIdx/blockDim/gridDim/threadIdx of common.cuh's grid-stride loop are the ones below.
// Each __global__ kernel becomes a plain extern "C" function.  The harness (refdyn.gpu.host)
// plays the GPU: for every block and thread of a small grid it sets blockIdx/threadIdx with
// refdyn_host_set_thread() and calls the kernel once, one call after the other.  Because the
// calls never overlap, atomicAdd can be a plain read-add-write.  The index variables are
// thread_local, so two host threads may run kernels at the same time.
#pragma once

#include <cmath>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

using std::ceil;
using std::exp;
using std::floor;
using std::round;

struct dim3 {
    unsigned int x, y, z;
};

inline thread_local dim3 blockIdx = {0, 0, 0};
inline thread_local dim3 threadIdx = {0, 0, 0};
inline thread_local dim3 blockDim = {1, 1, 1};
inline thread_local dim3 gridDim = {1, 1, 1};

// Make the next kernel call behave as thread `thread` of block `block` in a one-dimensional
// launch of `grid_size` blocks of `block_size` threads.
extern "C" void refdyn_host_set_thread(unsigned int block, unsigned int thread,
                                       unsigned int grid_size, unsigned int block_size)
{
    blockIdx = {block, 0, 0};
    threadIdx = {thread, 0, 0};
    gridDim = {grid_size, 1, 1};
    blockDim = {block_size, 1, 1};
}

// CUDA's atomicAdd: adds `value` to *address and returns the old value.
template <typename T>
inline T atomicAdd(T* address, T value)
{
    const T old = *address;
    *address = old + value;
    return old;
}

// Shared pieces of the CUDA kernels: bf16 <-> fp32 load/store helpers (storage in bf16 or f32,
// math always in fp32), warp and block reductions with a fixed order (so every kernel is
// deterministic), grid sizing, and the act-dtype dispatch. Device code: include from .cu only.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
#include "core/error.h"
#include "model/cuda/check.h"

// BT_LAUNCH(grid, block, smem, stream, kernel)(args...) is kernel<<<grid, block, smem, stream>>>(args...);
// in the SIMT emulator build (simt/) it runs the kernel on the CPU.
// BT_EXTERN_SHARED(float, smem) declares the dynamic shared memory of a kernel, 128-byte aligned
// (WMMA pointers must be 32-byte aligned).
#ifdef BT_SIMT
#define BT_LAUNCH(grid, block, smem, stream, ...) ::bt::simt::make_launch(grid, block, smem, stream, __VA_ARGS__)
#define BT_EXTERN_SHARED(T, name) T* name = static_cast<T*>(::bt::simt::dynamic_shared())
#else
#define BT_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define BT_EXTERN_SHARED(T, name) extern __shared__ __align__(128) T name[]
#endif

namespace bt::cuda {

using bf16 = __nv_bfloat16;

constexpr int kWarp = 32;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid for a grid-stride elementwise kernel over n items: enough blocks to fill the GPU, a
// bound that depends only on n (results never depend on the device).
inline unsigned elementwise_grid(size_t n, int threads = 256) {
  const size_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65536 ? (blocks == 0 ? 1 : blocks) : 65536);
}

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
template <class T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }

// The two ways backward ops write an input gradient (model/backend.h, Grad): add v to it, or
// overwrite it with v (never reading the old contents). Overwriting gives the bits that adding
// to a zeroed buffer gives.
template <class T>
__device__ __forceinline__ void put_grad(T& dst, float v, bool overwrite) {
  dst = from_f<T>(overwrite ? v : to_f(dst) + v);
}

// Butterfly reductions: every lane ends with the same value, combined in a fixed order.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `shared` holds 32 values. Fixed order: warps reduce, then warp 0 reduces the warp sums.
template <class T>
__device__ __forceinline__ T block_sum(T v, T* shared) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  v = warp_sum(v);
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  T r = lane < warps ? shared[lane] : T(0);
  r = warp_sum(r);
  return r;
}

}  // namespace bt::cuda

// BT_DISPATCH_ACT(dtype, T, body): runs body with T = float or bf16 (the activation storage types).
#define BT_DISPATCH_ACT(dtype, T, ...)                                                          \
  do {                                                                                          \
    switch (dtype) {                                                                            \
      case ::bt::DType::f32: {                                                                  \
        using T = float;                                                                        \
        __VA_ARGS__;                                                                            \
        break;                                                                                  \
      }                                                                                         \
      case ::bt::DType::bf16: {                                                                 \
        using T = ::bt::cuda::bf16;                                                             \
        __VA_ARGS__;                                                                            \
        break;                                                                                  \
      }                                                                                         \
      default:                                                                                  \
        BT_FAIL("cuda: tensors of dtype ", ::bt::dtype_name(dtype), " are not supported here (f32 or bf16)"); \
    }                                                                                           \
  } while (0)

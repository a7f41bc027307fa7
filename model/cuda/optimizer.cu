// Optimizer-side kernels: the sum of squares for the global gradient norm, scaling (clipping,
// averaging) and the AdamW step with fp32 master weights.
//
// sum_squares is deterministic: a grid whose size depends only on n (at most 1024 blocks of
// 256) accumulates in double per thread in a fixed stride order, reduces each block in a fixed
// tree, and a single block adds the block partials in order. AdamW is elementwise in fp32:
// moments and master in f32, the bf16 parameter rounded from the master (round to nearest even).
#include <algorithm>

#include "model/cuda/arena.h"
#include "model/cuda/common.cuh"
#include "model/cuda/kernels.h"

namespace bt::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;

template <class T>
__global__ void sum_squares_partial_kernel(double* part, const T* g, size_t n) {
  __shared__ double red[kWarp];
  double s = 0;
  for (size_t i = blockIdx.x * size_t(kThreads) + threadIdx.x; i < n; i += size_t(gridDim.x) * kThreads) {
    const double x = to_f(g[i]);
    s += x * x;
  }
  s = block_sum(s, red);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

__global__ void sum_squares_final_kernel(double* out, const double* part, int blocks) {
  __shared__ double red[kWarp];
  double s = 0;
  for (int i = threadIdx.x; i < blocks; i += kThreads) s += part[i];
  s = block_sum(s, red);
  if (threadIdx.x == 0) *out = s;
}

template <class T>
__global__ void scale_kernel(T* x, size_t n, float s) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    x[i] = from_f<T>(to_f(x[i]) * s);
}

template <class T>
__global__ void adamw_kernel(T* param, float* master, const float* grad, float* m, float* v, size_t n, AdamWArgs a) {
  // param [n] (T), master [n] f32 or null (then param is f32 and the master), grad, m, v [n] f32
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float g = grad[i];
    const float mi = a.beta1 * m[i] + (1.f - a.beta1) * g;
    const float vi = a.beta2 * v[i] + (1.f - a.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float mhat = mi * a.inv_c1, vhat = vi * a.inv_c2;
    float* w = master ? master + i : reinterpret_cast<float*>(param + i);
    const float wi = *w;
    const float upd = wi - a.lr * (mhat / (sqrtf(vhat) + a.eps) + a.weight_decay * wi);
    *w = upd;
    if (master) param[i] = from_f<T>(upd);
  }
}

}  // namespace

double sum_squares(const void* g, size_t n, DType t, Scratch& scratch, cudaStream_t stream) {
  if (n == 0) return 0.0;
  const int blocks = int(std::min<int64_t>(kMaxBlocks, ceil_div(int64_t(n), kThreads)));
  Carver cv(scratch.get(Carver::round(sizeof(double) * blocks) + Carver::round(sizeof(double)), stream));
  double* part = cv.take<double>(blocks);  // [blocks]
  double* out = cv.take<double>(1);
  BT_DISPATCH_ACT(t, T,
                  BT_LAUNCH(blocks, kThreads, 0, stream, sum_squares_partial_kernel<T>)(part, static_cast<const T*>(g), n));
  BT_KERNEL_CHECK("sum_squares_partial_kernel");
  BT_LAUNCH(1, kThreads, 0, stream, sum_squares_final_kernel)(out, part, blocks);
  BT_KERNEL_CHECK("sum_squares_final_kernel");
  double host = 0;
  BT_CUDA_CHECK(cudaMemcpyAsync(&host, out, sizeof(double), cudaMemcpyDeviceToHost, stream));
  BT_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

void scale(void* x, size_t n, float s, DType t, cudaStream_t stream) {
  if (n == 0) return;
  BT_DISPATCH_ACT(t, T, BT_LAUNCH(elementwise_grid(n), 256, 0, stream, scale_kernel<T>)(static_cast<T*>(x), n, s));
  BT_KERNEL_CHECK("scale_kernel");
}

void adamw_update(void* param, DType param_t, float* master, const float* grad, float* m, float* v, size_t n,
                  const AdamWArgs& a, cudaStream_t stream) {
  if (n == 0) return;
  BT_CHECK(master || param_t == DType::f32, "adamw_update: a ", dtype_name(param_t),
           " parameter needs an f32 master copy");
  BT_DISPATCH_ACT(param_t, T,
                  BT_LAUNCH(elementwise_grid(n), 256, 0, stream, adamw_kernel<T>)(static_cast<T*>(param), master, grad, m,
                                                                          v, n, a));
  BT_KERNEL_CHECK("adamw_kernel");
}

}  // namespace bt::cuda

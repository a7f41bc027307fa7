// Pointwise ops: exact (erf) GELU forward and backward, the parallel-residual add and dst += src.
// Grid-stride loops, fp32 math; each element is read and written by one thread.
#include "model/cuda/common.cuh"
#include "model/cuda/kernels.h"

namespace bt::cuda {

namespace {

#define BT_GRID_STRIDE(i, n) \
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < (n); i += size_t(gridDim.x) * blockDim.x)

template <class T>
__global__ void gelu_forward_kernel(T* out, const T* x, size_t n) {
  BT_GRID_STRIDE(i, n) {
    const float xi = to_f(x[i]);
    out[i] = from_f<T>(0.5f * xi * (1.f + erff(xi * 0.70710678118654752f)));
  }
}

template <class T>
__global__ void gelu_backward_kernel(T* dx, const T* dout, const T* x, size_t n, bool overwrite) {
  BT_GRID_STRIDE(i, n) {
    const float xi = to_f(x[i]);
    const float cdf = 0.5f * (1.f + erff(xi * 0.70710678118654752f));
    const float pdf = 0.39894228040143268f * expf(-0.5f * xi * xi);  // 1/sqrt(2 pi) exp(-x^2/2)
    put_grad(dx[i], to_f(dout[i]) * (cdf + xi * pdf), overwrite);
  }
}

template <class T>
__global__ void add_kernel(T* out, const T* a, const T* b, const T* c, size_t n) {
  if (c) {
    BT_GRID_STRIDE(i, n) out[i] = from_f<T>(to_f(a[i]) + to_f(b[i]) + to_f(c[i]));
  } else {
    BT_GRID_STRIDE(i, n) out[i] = from_f<T>(to_f(a[i]) + to_f(b[i]));
  }
}

template <class D, class S>
__global__ void accumulate_kernel(D* dst, const S* src, size_t n) {
  BT_GRID_STRIDE(i, n) dst[i] = from_f<D>(to_f(dst[i]) + to_f(src[i]));
}

#undef BT_GRID_STRIDE

}  // namespace

void gelu_forward(void* out, const void* x, size_t n, DType t, cudaStream_t stream) {
  if (n == 0) return;
  BT_DISPATCH_ACT(t, T,
                  BT_LAUNCH(elementwise_grid(n), 256, 0, stream, gelu_forward_kernel<T>)(static_cast<T*>(out),
                                                                                 static_cast<const T*>(x), n));
  BT_KERNEL_CHECK("gelu_forward_kernel");
}

void gelu_backward(void* dx, const void* dout, const void* x, size_t n, DType t, bool overwrite, cudaStream_t stream) {
  if (n == 0 || !dx) return;
  BT_DISPATCH_ACT(t, T,
                  BT_LAUNCH(elementwise_grid(n), 256, 0, stream, gelu_backward_kernel<T>)(
                      static_cast<T*>(dx), static_cast<const T*>(dout), static_cast<const T*>(x), n, overwrite));
  BT_KERNEL_CHECK("gelu_backward_kernel");
}

void add_forward(void* out, const void* a, const void* b, const void* c, size_t n, DType t, cudaStream_t stream) {
  if (n == 0) return;
  BT_DISPATCH_ACT(t, T,
                  BT_LAUNCH(elementwise_grid(n), 256, 0, stream, add_kernel<T>)(static_cast<T*>(out),
                                                                        static_cast<const T*>(a),
                                                                        static_cast<const T*>(b),
                                                                        static_cast<const T*>(c), n));
  BT_KERNEL_CHECK("add_kernel");
}

void accumulate(void* dst, DType dst_t, const void* src, DType src_t, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  BT_DISPATCH_ACT(dst_t, D, BT_DISPATCH_ACT(src_t, S,
                                            BT_LAUNCH(elementwise_grid(n), 256, 0, stream, accumulate_kernel<D, S>)(
                                                static_cast<D*>(dst), static_cast<const S*>(src), n)));
  BT_KERNEL_CHECK("accumulate_kernel");
}

}  // namespace bt::cuda

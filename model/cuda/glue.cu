// Block Transformer glue (docs/design.md §2.2): assembling the token-decoder rows
// [P_1..P_R, e(t_1)..e(t_{L_B-1})], selecting the positions R-1 .. S-1 that predict tokens, and the
// projection_layer embedder's transpose. Index maps, one thread per output element; each source
// element lands in at most one place, so the backward is a scatter with one += per element and no
// atomics.
#include "model/cuda/common.cuh"
#include "model/cuda/kernels.h"

namespace bt::cuda {

namespace {

struct GlueDims {
  int B, N, R, LB, D;
};

template <class T>
__global__ void td_assemble_forward_kernel(T* out, const T* prefix, const T* tok, GlueDims g) {
  // out [B, N-1, S, D]; prefix [B, N, R, D]; tok [B, N*LB, D]
  const int S = g.R + g.LB - 1;
  const size_t total = size_t(g.B) * (g.N - 1) * S * g.D;
  for (size_t e = blockIdx.x * size_t(blockDim.x) + threadIdx.x; e < total; e += size_t(gridDim.x) * blockDim.x) {
    const int d = int(e % g.D);
    const size_t rs = e / g.D;  // (row, s)
    const int s = int(rs % S);
    const size_t row = rs / S;
    const size_t b = row / (g.N - 1), i = row % (g.N - 1);
    if (s < g.R) out[e] = prefix[((b * g.N + i) * g.R + s) * g.D + d];
    else out[e] = tok[(b * g.N * g.LB + (i + 1) * g.LB + (s - g.R)) * g.D + d];
  }
}

template <class T>
__global__ void td_assemble_backward_kernel(T* dprefix, T* dtok, const T* dout, GlueDims g) {
  const int S = g.R + g.LB - 1;
  const size_t total = size_t(g.B) * (g.N - 1) * S * g.D;
  for (size_t e = blockIdx.x * size_t(blockDim.x) + threadIdx.x; e < total; e += size_t(gridDim.x) * blockDim.x) {
    const int d = int(e % g.D);
    const size_t rs = e / g.D;
    const int s = int(rs % S);
    const size_t row = rs / S;
    const size_t b = row / (g.N - 1), i = row % (g.N - 1);
    if (s < g.R) {
      if (dprefix) {
        T& o = dprefix[((b * g.N + i) * g.R + s) * g.D + d];
        o = from_f<T>(to_f(o) + to_f(dout[e]));
      }
    } else if (dtok) {
      T& o = dtok[(b * g.N * g.LB + (i + 1) * g.LB + (s - g.R)) * g.D + d];
      o = from_f<T>(to_f(o) + to_f(dout[e]));
    }
  }
}

template <class T>
__global__ void td_select_forward_kernel(T* out, const T* h, size_t rows, int R, int LB, int D) {
  // out [rows, LB, D]; h [rows, S, D]
  const int S = R + LB - 1;
  const size_t total = rows * LB * D;
  for (size_t e = blockIdx.x * size_t(blockDim.x) + threadIdx.x; e < total; e += size_t(gridDim.x) * blockDim.x) {
    const size_t row = e / (size_t(LB) * D), within = e % (size_t(LB) * D);
    out[e] = h[(row * S + (R - 1)) * D + within];
  }
}

template <class T>
__global__ void td_select_backward_kernel(T* dh, const T* dout, size_t rows, int R, int LB, int D) {
  const int S = R + LB - 1;
  const size_t total = rows * LB * D;
  for (size_t e = blockIdx.x * size_t(blockDim.x) + threadIdx.x; e < total; e += size_t(gridDim.x) * blockDim.x) {
    const size_t row = e / (size_t(LB) * D), within = e % (size_t(LB) * D);
    T& o = dh[(row * S + (R - 1)) * D + within];
    o = from_f<T>(to_f(o) + to_f(dout[e]));
  }
}

template <class T>
__global__ void transpose_forward_kernel(T* out, const T* in, size_t n, int A, int C) {
  // out [n, C, A] (element e = (i, c, a)); in [n, A, C]
  const size_t total = n * A * C;
  for (size_t e = blockIdx.x * size_t(blockDim.x) + threadIdx.x; e < total; e += size_t(gridDim.x) * blockDim.x) {
    const int a = int(e % A);
    const size_t ic = e / A;
    const int c = int(ic % C);
    const size_t i = ic / C;
    out[e] = in[(i * A + a) * C + c];
  }
}

template <class T>
__global__ void transpose_backward_kernel(T* din, const T* dout, size_t n, int A, int C) {
  // din [n, A, C] (element e = (i, a, c)) += dout [n, C, A]
  const size_t total = n * A * C;
  for (size_t e = blockIdx.x * size_t(blockDim.x) + threadIdx.x; e < total; e += size_t(gridDim.x) * blockDim.x) {
    const int c = int(e % C);
    const size_t ia = e / C;
    const int a = int(ia % A);
    const size_t i = ia / A;
    din[e] = from_f<T>(to_f(din[e]) + to_f(dout[(i * C + c) * A + a]));
  }
}

}  // namespace

void transpose_forward(void* out, const void* in, size_t n, int A, int C, DType t, cudaStream_t stream) {
  const size_t total = n * A * C;
  if (total == 0) return;
  BT_DISPATCH_ACT(t, T,
                  BT_LAUNCH(elementwise_grid(total), 256, 0, stream, transpose_forward_kernel<T>)(
                      static_cast<T*>(out), static_cast<const T*>(in), n, A, C));
  BT_KERNEL_CHECK("transpose_forward_kernel");
}

void transpose_backward(void* din, const void* dout, size_t n, int A, int C, DType t, cudaStream_t stream) {
  const size_t total = n * A * C;
  if (total == 0 || !din) return;
  BT_DISPATCH_ACT(t, T,
                  BT_LAUNCH(elementwise_grid(total), 256, 0, stream, transpose_backward_kernel<T>)(
                      static_cast<T*>(din), static_cast<const T*>(dout), n, A, C));
  BT_KERNEL_CHECK("transpose_backward_kernel");
}

void td_assemble_forward(void* out, const void* prefix, const void* tok, int B, int N, int R, int LB, int D, DType t,
                         cudaStream_t stream) {
  const size_t total = size_t(B) * (N - 1) * (R + LB - 1) * D;
  if (N < 2 || total == 0) return;
  const GlueDims g{B, N, R, LB, D};
  BT_DISPATCH_ACT(t, T,
                  BT_LAUNCH(elementwise_grid(total), 256, 0, stream, td_assemble_forward_kernel<T>)(
                      static_cast<T*>(out), static_cast<const T*>(prefix), static_cast<const T*>(tok), g));
  BT_KERNEL_CHECK("td_assemble_forward_kernel");
}

void td_assemble_backward(void* dprefix, void* dtok, const void* dout, int B, int N, int R, int LB, int D, DType t,
                          cudaStream_t stream) {
  const size_t total = size_t(B) * (N - 1) * (R + LB - 1) * D;
  if (N < 2 || total == 0 || (!dprefix && !dtok)) return;
  const GlueDims g{B, N, R, LB, D};
  BT_DISPATCH_ACT(t, T,
                  BT_LAUNCH(elementwise_grid(total), 256, 0, stream, td_assemble_backward_kernel<T>)(
                      static_cast<T*>(dprefix), static_cast<T*>(dtok), static_cast<const T*>(dout), g));
  BT_KERNEL_CHECK("td_assemble_backward_kernel");
}

void td_select_forward(void* out, const void* h, size_t rows, int R, int LB, int D, DType t, cudaStream_t stream) {
  const size_t total = rows * LB * D;
  if (total == 0) return;
  BT_DISPATCH_ACT(t, T,
                  BT_LAUNCH(elementwise_grid(total), 256, 0, stream, td_select_forward_kernel<T>)(
                      static_cast<T*>(out), static_cast<const T*>(h), rows, R, LB, D));
  BT_KERNEL_CHECK("td_select_forward_kernel");
}

void td_select_backward(void* dh, const void* dout, size_t rows, int R, int LB, int D, DType t, cudaStream_t stream) {
  const size_t total = rows * LB * D;
  if (total == 0 || !dh) return;
  BT_DISPATCH_ACT(t, T,
                  BT_LAUNCH(elementwise_grid(total), 256, 0, stream, td_select_backward_kernel<T>)(
                      static_cast<T*>(dh), static_cast<const T*>(dout), rows, R, LB, D));
  BT_KERNEL_CHECK("td_select_backward_kernel");
}

}  // namespace bt::cuda

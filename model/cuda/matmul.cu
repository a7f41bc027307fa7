// The Linear layer on the GPU: out = inp @ W^T + bias and its backward, as cuBLASLt GEMMs
// (cublaslt.h) in cuBLAS's column-major terms, plus a deterministic column reduction for the
// bias gradient.
//
// A row-major [r, c] matrix is a column-major [c, r] matrix with the same memory, so with
// W [OC, IC], inp [n, IC], dout [n, OC]:
//   forward  out^T [OC, n]  = W     @ inp^T        : m=OC, n=n,  k=IC, A=W (T),   B=inp (N), bias epilogue
//   dinp     dinp^T [IC, n] = W^T   @ dout^T       : m=IC, n=n,  k=OC, A=W (N),   B=dout (N), beta 1
//   dW       dW^T [IC, OC]  = inp^T @ dout         : m=IC, n=OC, k=n,  A=inp (N), B=dout (T), beta 1, D f32
// The bias gradient is not fused (CUBLASLT_EPILOGUE_BGRADB overwrites the vector, our
// contract accumulates, and the column sum costs one read of dout): blocks of 256 columns x
// 64 rows write partials [P, OC], one thread per column adds them in order.
#include <algorithm>

#include "model/cuda/arena.h"
#include "model/cuda/common.cuh"
#include "model/cuda/cublaslt.h"
#include "model/cuda/kernels.h"

namespace bt::cuda {

namespace {

struct BiasGradTraits {
  static constexpr int kColThreads = 256;
  static constexpr int kRowsPerChunk = 64;
};

template <class T>
__global__ void bias_grad_partial_kernel(float* part, const T* dout, size_t n, int OC, int rows_per_chunk) {
  // part [P, OC]; dout [n, OC]
  const int c = blockIdx.x * BiasGradTraits::kColThreads + threadIdx.x;
  if (c >= OC) return;
  const size_t r0 = size_t(blockIdx.y) * rows_per_chunk;
  const size_t r1 = r0 + rows_per_chunk < n ? r0 + rows_per_chunk : n;
  float s = 0.f;
  for (size_t r = r0; r < r1; ++r) s += to_f(dout[r * OC + c]);
  part[size_t(blockIdx.y) * OC + c] = s;
}

__global__ void bias_grad_reduce_kernel(float* dbias, const float* part, int P, int OC) {
  // dbias [OC] += sum of the P partials, in order
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= OC) return;
  float s = 0.f;
  for (int p = 0; p < P; ++p) s += part[size_t(p) * OC + c];
  dbias[c] += s;
}

int checked_int(size_t v, const char* what) {
  BT_CHECK(v <= size_t(0x7fffffff), "matmul: ", what, " = ", v, " exceeds the 32-bit GEMM limits of cuBLASLt");
  return int(v);
}

}  // namespace

void matmul_forward(Gemm& gemm, void* out, const void* inp, const void* W, const void* bias, size_t n, int IC, int OC,
                    DType t, cudaStream_t stream) {
  GemmDesc g;
  g.ta = true;
  g.tb = false;
  g.m = OC;
  g.n = checked_int(n, "rows");
  g.k = IC;
  g.A = W;
  g.lda = IC;
  g.B = inp;
  g.ldb = IC;
  g.D = out;
  g.ldd = OC;
  g.ab = t;
  g.d = t;
  g.beta = 0.f;
  g.bias = bias;
  gemm.run(g, stream);
}

void matmul_backward(Gemm& gemm, void* dinp, float* dW, float* dbias, const void* dout, const void* inp,
                     const void* W, size_t n, int IC, int OC, DType t, bool overwrite_dinp, Scratch& scratch,
                     cudaStream_t stream) {
  if (n == 0) return;
  const int rows = checked_int(n, "rows");
  if (dinp) {
    GemmDesc g;
    g.ta = false;
    g.tb = false;
    g.m = IC;
    g.n = rows;
    g.k = OC;
    g.A = W;
    g.lda = IC;
    g.B = dout;
    g.ldb = OC;
    g.D = dinp;
    g.ldd = IC;
    g.ab = t;
    g.d = t;
    g.beta = overwrite_dinp ? 0.f : 1.f;  // beta 0 never reads dinp
    gemm.run(g, stream);
  }
  if (dW) {
    GemmDesc g;
    g.ta = false;
    g.tb = true;
    g.m = IC;
    g.n = OC;
    g.k = rows;
    g.A = inp;
    g.lda = IC;
    g.B = dout;
    g.ldb = OC;
    g.D = dW;
    g.ldd = IC;
    g.ab = t;
    g.d = DType::f32;
    g.beta = 1.f;
    gemm.run(g, stream);
  }
  if (dbias) {
    const int rows_per_chunk = std::max<int>(BiasGradTraits::kRowsPerChunk, int(ceil_div(int64_t(n), 65535)));
    const int P = int(ceil_div(int64_t(n), rows_per_chunk));
    float* part = static_cast<float*>(scratch.get(size_t(P) * OC * sizeof(float), stream));  // [P, OC]
    const dim3 grid(unsigned(ceil_div(OC, BiasGradTraits::kColThreads)), unsigned(P));
    BT_DISPATCH_ACT(t, T,
                    BT_LAUNCH(grid, BiasGradTraits::kColThreads, 0, stream, bias_grad_partial_kernel<T>)(
                        part, static_cast<const T*>(dout), n, OC, rows_per_chunk));
    BT_KERNEL_CHECK("bias_grad_partial_kernel");
    BT_LAUNCH(unsigned(ceil_div(OC, 256)), 256, 0, stream, bias_grad_reduce_kernel)(dbias, part, P, OC);
    BT_KERNEL_CHECK("bias_grad_reduce_kernel");
  }
}

}  // namespace bt::cuda

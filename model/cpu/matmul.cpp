// Linear layer: out = inp @ W^T + bias, and its backward, with the GEMMs in OpenBLAS.
//
// Row-major throughout; W is [OC, IC] (PyTorch's Linear layout). The backward GEMMs use
// beta = 1 so they accumulate into dinp and dW.
//
// Threading: every GEMM is cut into output tiles (at most kTileM x kTileN, the height chosen
// from the shape) spread over OpenMP threads, each tile one single-threaded cblas call over the
// full K. Why not OpenBLAS's own threads: the Debian build is the pthreads one, whose workers
// busy-wait for a while after each call and fight the OpenMP workers of the next op for the
// cores (on 2 cores, a bias reduction right after a GEMM went from 0.26 ms to 4-9 ms). So
// OpenBLAS is set to one thread (process-wide, on first use) and all parallelism is OpenMP's;
// this also made the D -> 3D GEMMs of the tiny model about 1.6x faster. The tiling never depends
// on the thread count and each output element is one tile's full-K product, so the results are
// the same for any thread count.
//
// The bias gradient is a column reduction done with the column block outer, so it does not
// depend on the thread count either.
#include <cblas.h>

#include <algorithm>

#include "model/cpu/cpu_backend.h"
#include "model/cpu/ops.h"

namespace bt::cpu {

constexpr int kTileM = 256;  // output rows per GEMM task (halved down to 32 for small outputs)

namespace {

constexpr int kTileN = 256;    // output columns per GEMM task
constexpr int kMinTiles = 8;   // enough tasks to balance a few threads
constexpr int kColBlock = 64;  // columns per thread-owned block of the dbias reduction

void blas_single_threaded() {
  static const bool done = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)done;
}

// C[M, N] = alpha * op(A) @ op(B) + beta * C, row-major, one thread.
inline void gemm1(bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb, float beta,
                  float* C, int ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A, lda, B,
              ldb, beta, C, ldc);
}
inline void gemm1(bool ta, bool tb, int M, int N, int K, const double* A, int lda, const double* B, int ldb,
                  double beta, double* C, int ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0, A, lda, B,
              ldb, beta, C, ldc);
}

// The same GEMM cut into fixed output tiles run in parallel. op(A) is [M, K], op(B) is [K, N].
template <class T>
void gemm(bool ta, bool tb, int M, int N, int K, const T* A, int lda, const T* B, int ldb, T beta, T* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  blas_single_threaded();
  // The tile height depends on the shape only (never on the thread count): results are
  // reproducible bit for bit across thread counts.
  const int tn = (N + kTileN - 1) / kTileN;
  int tile_m = kTileM;
  while (tile_m > 32 && ((M + tile_m - 1) / tile_m) * tn < kMinTiles) tile_m /= 2;
  const int tm = (M + tile_m - 1) / tile_m;
  const int tiles = tm * tn;
#pragma omp parallel for schedule(dynamic, 1) if (tiles > 1)
  for (int tile = 0; tile < tiles; ++tile) {
    const int m0 = (tile / tn) * tile_m, n0 = (tile % tn) * kTileN;
    const int m = std::min(tile_m, M - m0), n = std::min(kTileN, N - n0);
    // Row m0 of op(A): A + m0 * lda untransposed, A + m0 (column m0) transposed; likewise B.
    const T* a = ta ? A + m0 : A + static_cast<size_t>(m0) * lda;
    const T* b = tb ? B + static_cast<size_t>(n0) * ldb : B + n0;
    gemm1(ta, tb, m, n, K, a, lda, b, ldb, beta, C + static_cast<size_t>(m0) * ldc + n0, ldc);
  }
}

}  // namespace

template <class T>
void matmul_forward(T* out, const T* inp, const T* W, const T* bias, size_t n, int IC, int OC) {
  // out [n, OC], inp [n, IC], W [OC, IC], bias [OC] or null
  if (n == 0) return;
  if (bias) {
#pragma omp parallel for schedule(static) if (n * static_cast<size_t>(OC) >= (1u << 15))
    for (size_t i = 0; i < n; ++i) std::copy(bias, bias + OC, out + i * OC);
  }
  gemm(false, true, static_cast<int>(n), OC, IC, inp, IC, W, IC, bias ? T(1) : T(0), out, OC);
}

template <class T>
void matmul_backward(T* dinp, T* dW, T* dbias, const T* dout, const T* inp, const T* W, size_t n, int IC, int OC) {
  // dinp [n, IC], dW [OC, IC], dbias [OC], dout [n, OC], inp [n, IC], W [OC, IC]
  if (n == 0) return;
  const int rows = static_cast<int>(n);
  if (dinp) gemm(false, false, rows, IC, OC, dout, OC, W, IC, T(1), dinp, IC);
  if (dW) gemm(true, false, OC, IC, rows, dout, OC, inp, IC, T(1), dW, IC);
  if (dbias) {
    const int blocks = (OC + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (n * static_cast<size_t>(OC) >= (1u << 15))
    for (int blk = 0; blk < blocks; ++blk) {
      const int c0 = blk * kColBlock, c1 = std::min(OC, c0 + kColBlock), w = c1 - c0;
      double acc[kColBlock] = {};  // double: sums over many rows
      for (size_t i = 0; i < n; ++i) {
        const T* r = dout + i * OC + c0;
        for (int c = 0; c < w; ++c) acc[c] += r[c];
      }
      for (int c = 0; c < w; ++c) dbias[c0 + c] += static_cast<T>(acc[c]);
    }
  }
}

template void matmul_forward<float>(float*, const float*, const float*, const float*, size_t, int, int);
template void matmul_forward<double>(double*, const double*, const double*, const double*, size_t, int, int);
template void matmul_backward<float>(float*, float*, float*, const float*, const float*, const float*, size_t, int,
                                     int);
template void matmul_backward<double>(double*, double*, double*, const double*, const double*, const double*, size_t,
                                      int, int);

}  // namespace bt::cpu

namespace bt {

// The row tiles of gemm are 32, 64, 128 or 256 high (kTileM halved): each either holds all of
// such a batch or divides it.
int64_t cpu_uniform_batch(int64_t n) {
  static_assert(cpu::kTileM == 256, "cpu_uniform_batch assumes row tiles of 32 .. 256 (powers of two)");
  if (n <= 32) return std::max<int64_t>(1, n);
  if (n <= cpu::kTileM) {
    int64_t p = 64;
    while (p < n) p *= 2;
    return p;
  }
  return (n + cpu::kTileM - 1) / cpu::kTileM * cpu::kTileM;
}

}  // namespace bt

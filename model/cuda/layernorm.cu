// LayerNorm over the last dim, forward and backward, fp32 math on bf16 or f32 storage.
//
// Forward: one warp per row; two passes over the row (mean, then the centered variance, as
// the CPU reference does) and a third that writes the output. mean and rstd are stored in the
// dtype of their buffers (the model allocates them in the activation dtype).
// Backward: one warp per row computes dx (+=) and writes the row's fp32 mean and rstd to
// scratch; dw and db, reductions over rows, are done deterministically in two kernels: blocks
// of 256 columns x 64 rows write partial sums [P, C], then one thread per column adds its P
// partials in order and adds the total to dw/db once.
#include <algorithm>

#include "model/cuda/arena.h"
#include "model/cuda/common.cuh"
#include "model/cuda/kernels.h"

namespace bt::cuda {

namespace {

struct LnTraits {
  static constexpr int kRowsPerBlock = 4;   // warps per block, one row each
  static constexpr int kColThreads = 256;   // columns per block of the dw/db partials
  static constexpr int kRowsPerChunk = 64;  // rows per block of the dw/db partials
};

__device__ __forceinline__ float load_stat(const void* p, bool bf, size_t i) {
  return bf ? __bfloat162float(static_cast<const bf16*>(p)[i]) : static_cast<const float*>(p)[i];
}
__device__ __forceinline__ void store_stat(void* p, bool bf, size_t i, float v) {
  if (!p) return;
  if (bf) static_cast<bf16*>(p)[i] = __float2bfloat16_rn(v);
  else static_cast<float*>(p)[i] = v;
}

template <class T>
__global__ void layernorm_forward_kernel(T* out, void* mean, void* rstd, const T* x, const T* w, const T* b,
                                         size_t n, int C, float eps, bool stats_bf16) {
  // out [n, C], mean [n], rstd [n], x [n, C], w [C], b [C]
  const size_t row = blockIdx.x * size_t(LnTraits::kRowsPerBlock) + threadIdx.x / kWarp;
  if (row >= n) return;  // the whole warp leaves together
  const int lane = threadIdx.x % kWarp;
  const T* xr = x + row * C;
  float s = 0.f;
  for (int c = lane; c < C; c += kWarp) s += to_f(xr[c]);
  const float m = warp_sum(s) / C;
  float v = 0.f;
  for (int c = lane; c < C; c += kWarp) {
    const float d = to_f(xr[c]) - m;
    v += d * d;
  }
  const float rs = 1.0f / sqrtf(warp_sum(v) / C + eps);
  T* o = out + row * C;
  for (int c = lane; c < C; c += kWarp) o[c] = from_f<T>((to_f(xr[c]) - m) * rs * to_f(w[c]) + to_f(b[c]));
  if (lane == 0) {
    store_stat(mean, stats_bf16, row, m);
    store_stat(rstd, stats_bf16, row, rs);
  }
}

// The residual add of a layer fused with the LayerNorms that read its result: one warp per row,
// the same arithmetic as add_kernel (pointwise.cu) and layernorm_forward_kernel, so the results
// are bit-identical to the separate kernels, with one read of a, b, c and the row cached.
template <class T>
__global__ void residual_layernorm_kernel(T* out, const T* a, const T* b, const T* c, T* ln1, void* mean1,
                                          void* rstd1, const T* w1, const T* b1, T* ln2, void* mean2, void* rstd2,
                                          const T* w2, const T* b2, size_t n, int C, float eps, bool stats_bf16) {
  // out, a, b, c, ln1, ln2 [n, C]; mean*, rstd* [n]; w*, b* [C]
  const size_t row = blockIdx.x * size_t(LnTraits::kRowsPerBlock) + threadIdx.x / kWarp;
  if (row >= n) return;
  const int lane = threadIdx.x % kWarp;
  const size_t base = row * C;
  T* o = out + base;
  float s = 0.f;
  for (int j = lane; j < C; j += kWarp) {
    const size_t i = base + j;
    const T x = c ? from_f<T>(to_f(a[i]) + to_f(b[i]) + to_f(c[i])) : from_f<T>(to_f(a[i]) + to_f(b[i]));
    o[j] = x;
    s += to_f(x);
  }
  const float m = warp_sum(s) / C;
  float v = 0.f;
  for (int j = lane; j < C; j += kWarp) {  // each lane reads back only what it wrote
    const float d = to_f(o[j]) - m;
    v += d * d;
  }
  const float rs = 1.0f / sqrtf(warp_sum(v) / C + eps);
  for (int j = lane; j < C; j += kWarp) {
    const float xh = to_f(o[j]) - m;
    ln1[base + j] = from_f<T>(xh * rs * to_f(w1[j]) + to_f(b1[j]));
    if (ln2) ln2[base + j] = from_f<T>(xh * rs * to_f(w2[j]) + to_f(b2[j]));
  }
  if (lane == 0) {
    store_stat(mean1, stats_bf16, row, m);
    store_stat(rstd1, stats_bf16, row, rs);
    store_stat(mean2, stats_bf16, row, m);
    store_stat(rstd2, stats_bf16, row, rs);
  }
}

template <class T>
__global__ void layernorm_backward_dx_kernel(T* dx, float* row_mean, float* row_rstd, const T* dout, const T* x,
                                             const T* w, const void* mean, const void* rstd, size_t n, int C,
                                             bool stats_bf16) {
  // dx [n, C] (may be null), row_mean/row_rstd [n] f32 scratch, dout [n, C], x [n, C], w [C]
  const size_t row = blockIdx.x * size_t(LnTraits::kRowsPerBlock) + threadIdx.x / kWarp;
  if (row >= n) return;
  const int lane = threadIdx.x % kWarp;
  const T* xr = x + row * C;
  const T* gr = dout + row * C;
  float m;
  if (stats_bf16) {  // the stored bf16 mean is too coarse: recompute it (it needs no eps)
    float s = 0.f;
    for (int c = lane; c < C; c += kWarp) s += to_f(xr[c]);
    m = warp_sum(s) / C;
  } else {
    m = load_stat(mean, false, row);
  }
  const float rs = load_stat(rstd, stats_bf16, row);
  if (lane == 0) {
    row_mean[row] = m;
    row_rstd[row] = rs;
  }
  if (!dx) return;
  float sg = 0.f, sgx = 0.f;  // sum(dout * w), sum(dout * w * xhat)
  for (int c = lane; c < C; c += kWarp) {
    const float g = to_f(gr[c]) * to_f(w[c]);
    sg += g;
    sgx += g * ((to_f(xr[c]) - m) * rs);
  }
  sg = warp_sum(sg) / C;
  sgx = warp_sum(sgx) / C;
  T* o = dx + row * C;
  for (int c = lane; c < C; c += kWarp) {
    const float g = to_f(gr[c]) * to_f(w[c]);
    const float xh = (to_f(xr[c]) - m) * rs;
    o[c] = from_f<T>(to_f(o[c]) + rs * (g - sg - xh * sgx));
  }
}

template <class T>
__global__ void layernorm_params_partial_kernel(float* pw, float* pb, const T* dout, const T* x,
                                                const float* row_mean, const float* row_rstd, size_t n, int C,
                                                int rows_per_chunk) {
  // pw, pb [P, C] partial sums of dout * xhat and dout over chunk blockIdx.y of the rows
  const int c = blockIdx.x * LnTraits::kColThreads + threadIdx.x;
  if (c >= C) return;
  const size_t r0 = size_t(blockIdx.y) * rows_per_chunk;
  const size_t r1 = r0 + rows_per_chunk < n ? r0 + rows_per_chunk : n;
  float aw = 0.f, ab = 0.f;
  for (size_t r = r0; r < r1; ++r) {
    const float g = to_f(dout[r * C + c]);
    aw += g * ((to_f(x[r * C + c]) - row_mean[r]) * row_rstd[r]);
    ab += g;
  }
  pw[size_t(blockIdx.y) * C + c] = aw;
  pb[size_t(blockIdx.y) * C + c] = ab;
}

__global__ void layernorm_params_reduce_kernel(float* dw, float* db, const float* pw, const float* pb, int P, int C) {
  // dw, db [C] += sum over the P partials, in order
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float sw = 0.f, sb = 0.f;
  for (int p = 0; p < P; ++p) {
    sw += pw[size_t(p) * C + c];
    sb += pb[size_t(p) * C + c];
  }
  if (dw) dw[c] += sw;
  if (db) db[c] += sb;
}

bool stats_is_bf16(DType stats_t) {
  BT_CHECK(stats_t == DType::f32 || stats_t == DType::bf16, "layernorm: mean/rstd must be f32 or bf16, not ",
           dtype_name(stats_t));
  return stats_t == DType::bf16;
}

}  // namespace

void layernorm_forward(void* out, void* mean, void* rstd, const void* x, const void* w, const void* b, size_t n,
                       int C, float eps, DType t, DType stats_t, cudaStream_t stream) {
  if (n == 0) return;
  const bool sbf = stats_is_bf16(stats_t);
  const unsigned grid = unsigned(ceil_div(int64_t(n), LnTraits::kRowsPerBlock));
  BT_DISPATCH_ACT(t, T,
                  BT_LAUNCH(grid, LnTraits::kRowsPerBlock * kWarp, 0, stream, layernorm_forward_kernel<T>)(
                      static_cast<T*>(out), mean, rstd, static_cast<const T*>(x), static_cast<const T*>(w),
                      static_cast<const T*>(b), n, C, eps, sbf));
  BT_KERNEL_CHECK("layernorm_forward_kernel");
}

void residual_layernorm_forward(void* out, const void* a, const void* b, const void* c, void* ln1, void* mean1,
                                void* rstd1, const void* w1, const void* b1, void* ln2, void* mean2, void* rstd2,
                                const void* w2, const void* b2, size_t n, int C, float eps, DType t, DType stats_t,
                                cudaStream_t stream) {
  if (n == 0) return;
  const bool sbf = stats_is_bf16(stats_t);
  const unsigned grid = unsigned(ceil_div(int64_t(n), LnTraits::kRowsPerBlock));
  BT_DISPATCH_ACT(t, T,
                  BT_LAUNCH(grid, LnTraits::kRowsPerBlock * kWarp, 0, stream, residual_layernorm_kernel<T>)(
                      static_cast<T*>(out), static_cast<const T*>(a), static_cast<const T*>(b),
                      static_cast<const T*>(c), static_cast<T*>(ln1), mean1, rstd1, static_cast<const T*>(w1),
                      static_cast<const T*>(b1), static_cast<T*>(ln2), mean2, rstd2, static_cast<const T*>(w2),
                      static_cast<const T*>(b2), n, C, eps, sbf));
  BT_KERNEL_CHECK("residual_layernorm_kernel");
}

void layernorm_backward(void* dx, float* dw, float* db, const void* dout, const void* x, const void* w,
                        const void* mean, const void* rstd, size_t n, int C, DType t, DType stats_t, Scratch& scratch,
                        cudaStream_t stream) {
  if (n == 0 || (!dx && !dw && !db)) return;
  const bool sbf = stats_is_bf16(stats_t);
  const int rows_per_chunk =
      std::max<int>(LnTraits::kRowsPerChunk, int(ceil_div(int64_t(n), 65535)));  // grid.y <= 65535
  const int P = int(ceil_div(int64_t(n), rows_per_chunk));
  const bool params = dw || db;
  const size_t bytes = 2 * Carver::round(n * sizeof(float)) + (params ? 2 * Carver::round(size_t(P) * C * 4) : 0);
  Carver cv(scratch.get(bytes, stream));
  float* row_mean = cv.take<float>(n);  // [n]
  float* row_rstd = cv.take<float>(n);  // [n]
  const unsigned grid = unsigned(ceil_div(int64_t(n), LnTraits::kRowsPerBlock));
  BT_DISPATCH_ACT(t, T, {
    BT_LAUNCH(grid, LnTraits::kRowsPerBlock * kWarp, 0, stream, layernorm_backward_dx_kernel<T>)(
        static_cast<T*>(dx), row_mean, row_rstd, static_cast<const T*>(dout), static_cast<const T*>(x),
        static_cast<const T*>(w), mean, rstd, n, C, sbf);
    BT_KERNEL_CHECK("layernorm_backward_dx_kernel");
    if (params) {
      float* pw = cv.take<float>(size_t(P) * C);  // [P, C]
      float* pb = cv.take<float>(size_t(P) * C);  // [P, C]
      const dim3 pgrid(unsigned(ceil_div(C, LnTraits::kColThreads)), unsigned(P));
      BT_LAUNCH(pgrid, LnTraits::kColThreads, 0, stream, layernorm_params_partial_kernel<T>)(
          pw, pb, static_cast<const T*>(dout), static_cast<const T*>(x), row_mean, row_rstd, n, C, rows_per_chunk);
      BT_KERNEL_CHECK("layernorm_params_partial_kernel");
      BT_LAUNCH(unsigned(ceil_div(C, 256)), 256, 0, stream, layernorm_params_reduce_kernel)(dw, db, pw, pb, P, C);
      BT_KERNEL_CHECK("layernorm_params_reduce_kernel");
    }
  });
}

}  // namespace bt::cuda

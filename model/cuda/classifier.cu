// Fused softmax + cross-entropy + dlogits over the vocabulary, never storing probabilities.
//
// One block of 256 threads per row. Pass 1: each thread keeps an online (max, sum of exp)
// over its strided slice of the row; the pairs are merged by a butterfly within each warp,
// then warp 0 merges the 8 warp results in order: lse = max + log(sum), loss = lse - logit[t].
// Pass 2 (when dlogits is wanted): dlogits[j] = dscale * (exp(logit[j] - lse) - [j == t]),
// written by the thread that read logit[j], so dlogits may alias logits (the target logit is
// read before any write). Ignored rows (target -1) get loss 0 and a zero row; a target outside
// the vocabulary gets a NaN loss (the CPU backend throws; a kernel cannot).
#include <cmath>

#include "model/cuda/common.cuh"
#include "model/cuda/kernels.h"

namespace bt::cuda {

namespace {

constexpr int kThreads = 256;

// Merge (m, s) with (mo, so): the sum of exp relative to the larger max.
__device__ __forceinline__ void merge(float& m, float& s, float mo, float so) {
  const float mn = fmaxf(m, mo);
  if (mn == -INFINITY) return;  // both empty
  s = (m == -INFINITY ? 0.f : s * expf(m - mn)) + (mo == -INFINITY ? 0.f : so * expf(mo - mn));
  m = mn;
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_kernel(float* losses, T* dlogits, const T* logits, const int32_t* targets, int V, float dscale) {
  // losses [n]; dlogits [n, V] or null; logits [n, V]; targets [n]
  __shared__ float wm[kThreads / kWarp], ws[kThreads / kWarp];
  __shared__ float s_lse, s_xt;
  const size_t row = blockIdx.x;
  const T* l = logits + row * V;
  T* d = dlogits ? dlogits + row * V : nullptr;
  const int tgt = targets[row];
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  if (tgt < 0 || tgt >= V) {
    if (tid == 0) losses[row] = tgt == -1 ? 0.f : NAN;
    if (d)
      for (int j = tid; j < V; j += kThreads) d[j] = from_f<T>(0.f);
    return;
  }
  if (tid == 0) s_xt = to_f(l[tgt]);  // before pass 2 may overwrite it (aliasing)
  float m = -INFINITY, s = 0.f;
  for (int j = tid; j < V; j += kThreads) {
    const float x = to_f(l[j]);
    if (x > m) {
      s = (m == -INFINITY ? 0.f : s * expf(m - x)) + 1.f;
      m = x;
    } else {
      s += expf(x - m);
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float mo = __shfl_xor_sync(0xffffffffu, m, o), so = __shfl_xor_sync(0xffffffffu, s, o);
    merge(m, s, mo, so);
  }
  if (lane == 0) {
    wm[warp] = m;
    ws[warp] = s;
  }
  __syncthreads();
  if (tid == 0) {
    float M = wm[0], S = ws[0];
    for (int w = 1; w < kThreads / kWarp; ++w) merge(M, S, wm[w], ws[w]);
    s_lse = M + logf(S);
    losses[row] = s_lse - s_xt;
  }
  __syncthreads();
  if (!d) return;
  const float lse = s_lse;
  for (int j = tid; j < V; j += kThreads) {
    const float p = expf(to_f(l[j]) - lse);
    d[j] = from_f<T>(dscale * (j == tgt ? p - 1.f : p));
  }
}

}  // namespace

void cross_entropy(float* losses, void* dlogits, const void* logits, const int32_t* targets, size_t n, int V,
                   float dscale, DType t, cudaStream_t stream) {
  if (n == 0) return;
  BT_CHECK(n <= 0x7fffffffu, "cross_entropy: ", n, " rows exceed one launch");
  BT_DISPATCH_ACT(t, T,
                  BT_LAUNCH(unsigned(n), kThreads, 0, stream, cross_entropy_kernel<T>)(
                      losses, static_cast<T*>(dlogits), static_cast<const T*>(logits), targets, V, dscale));
  BT_KERNEL_CHECK("cross_entropy_kernel");
}

}  // namespace bt::cuda

// Causal attention for short rows (T <= 32: the token decoder, whose rows are R + L_B - 1
// long). One warp per (b, h) holds q, k, v (and dout) of the whole row in shared memory and
// the T x T probabilities in shared memory, lane j owning key j: no tiling, no rescaling, one
// launch for all B * H rows. Any head dim (the loops over it are strided by lane).
//
// Forward: per query i, lane j <= i scores key j (a hidden key of the optional key mask scores
// -inf, or 0 in a row with no visible key: model/backend.h AttnMask); warp max and sum give p
// and lse; then each lane computes output dims d = lane, lane + 32, ... Backward: p from q, k
// and lse, dp = dO_i . v_j, D_i = sum_j p dp (the softmax-backward term, from the recomputed p
// so it needs no `out`), ds = p (dp - D_i) / sqrt(hd) (0 for a hidden key); dq, dk, dv by dims
// per lane, summed in a fixed order. Deterministic, no atomics. Each kernel exists with and
// without the key mask (KeyMask<kMasked>), so unpadded batches run the unmasked code.
#include <algorithm>

#include "model/cuda/attention.cuh"
#include "model/cuda/common.cuh"

namespace bt::cuda {

namespace {

constexpr int kMaxWarps = 4;
int g_max_smem = 48 * 1024;  // raised by small_attention_setup to the device's opt-in limit

__host__ __device__ inline size_t fwd_floats_per_warp(int T, int hd) { return size_t(3) * T * (hd + 1) + size_t(T) * kWarp; }
__host__ __device__ inline size_t bwd_floats_per_warp(int T, int hd) { return size_t(4) * T * (hd + 1) + size_t(2) * T * kWarp; }

template <class T>
__device__ __forceinline__ void load_rows(float* dst, const T* src, int Tn, int hd, int lane) {
  // dst [Tn][hd + 1] <- src [Tn, hd]
  for (int e = lane; e < Tn * hd; e += kWarp) dst[(e / hd) * (hd + 1) + e % hd] = to_f(src[e]);
}

template <class T>
__device__ __forceinline__ void load_dout_rows(float* dst, const T* dout, int b, int h, int Tn, int H, int hd,
                                               int lane) {
  // dst [Tn][hd + 1] <- dout [b, :, h, :] of [B, T, H * hd]
  for (int e = lane; e < Tn * hd; e += kWarp) {
    const int t = e / hd, d = e % hd;
    dst[t * (hd + 1) + d] = to_f(dout[((size_t(b) * Tn + t) * H + h) * hd + d]);
  }
}

// dst [Tn, hd] (+)= W^T rows for causal weights W [Tn][32] (row i, key j <= i) and rows
// [Tn][hd + 1]: dst[j, d] = sum over i >= j of W[i][j] rows[i][d] (dk from dS and q, dv from P
// and dout).
template <class T>
__device__ __forceinline__ void causal_weights_t_times(T* dst, const float* w, const float* rows, int Tn, int hd,
                                                       int lane, bool overwrite) {
  for (int e = lane; e < Tn * hd; e += kWarp) {
    const int j = e / hd, d = e % hd;
    float s = 0.f;
    for (int i = j; i < Tn; ++i) s += w[i * kWarp + j] * rows[i * (hd + 1) + d];
    put_grad(dst[e], s, overwrite);
  }
}

__device__ __forceinline__ float dot_rows(const float* a, const float* b, int hd) {
  float s = 0.f;
  for (int d = 0; d < hd; ++d) s += a[d] * b[d];
  return s;
}

template <class T, bool kMasked>
__global__ void small_attention_forward_kernel(AttnArgs a, int warps) {
  BT_EXTERN_SHARED(float, smem);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const size_t bh = size_t(blockIdx.x) * warps + warp;
  if (bh >= size_t(a.B) * a.H) return;  // no block-level sync below: a warp may leave
  const int Tn = a.T, hd = a.hd, H = a.H, st = hd + 1;
  const int b = int(bh / H), h = int(bh % H);
  const KeyMask<kMasked> mask(a, b);
  float* qs = smem + warp * fwd_floats_per_warp(Tn, hd);  // [T][hd+1]
  float* ks = qs + Tn * st;                               // [T][hd+1]
  float* vs = ks + Tn * st;                               // [T][hd+1]
  float* ps = vs + Tn * st;                               // [T][32] probabilities
  const size_t head = bh * Tn * hd;
  load_rows(qs, static_cast<const T*>(a.q) + head, Tn, hd, lane);
  load_rows(ks, static_cast<const T*>(a.k) + head, Tn, hd, lane);
  load_rows(vs, static_cast<const T*>(a.v) + head, Tn, hd, lane);
  __syncwarp();
  for (int i = 0; i < Tn; ++i) {
    const bool ok = lane <= i;
    const float s = ok ? mask.score(dot_rows(qs + i * st, ks + lane * st, hd) * a.scale, lane, i) : -INFINITY;
    const float mx = warp_max(s);
    const float e = ok ? expf(s - mx) : 0.f;
    const float sum = warp_sum(e);
    ps[i * kWarp + lane] = e / sum;
    if (lane == 0) a.lse[bh * Tn + i] = mx + logf(sum);
  }
  __syncwarp();
  T* out = static_cast<T*>(a.out);
  for (int e = lane; e < Tn * hd; e += kWarp) {
    const int i = e / hd, d = e % hd;
    float o = 0.f;
    for (int j = 0; j <= i; ++j) o += ps[i * kWarp + j] * vs[j * st + d];
    out[((size_t(b) * Tn + i) * H + h) * hd + d] = from_f<T>(o);
  }
}

template <class T, bool kMasked>
__global__ void small_attention_backward_kernel(AttnArgs a, int warps) {
  BT_EXTERN_SHARED(float, smem);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const size_t bh = size_t(blockIdx.x) * warps + warp;
  if (bh >= size_t(a.B) * a.H) return;
  const int Tn = a.T, hd = a.hd, H = a.H, st = hd + 1;
  const int b = int(bh / H), h = int(bh % H);
  const KeyMask<kMasked> mask(a, b);
  float* qs = smem + warp * bwd_floats_per_warp(Tn, hd);  // [T][hd+1]
  float* ks = qs + Tn * st;                               // [T][hd+1]
  float* vs = ks + Tn * st;                               // [T][hd+1]
  float* gs = vs + Tn * st;                               // [T][hd+1] dout
  float* ps = gs + Tn * st;                               // [T][32] p
  float* dss = ps + Tn * kWarp;                           // [T][32] ds
  const size_t head = bh * Tn * hd;
  load_rows(qs, static_cast<const T*>(a.q) + head, Tn, hd, lane);
  load_rows(ks, static_cast<const T*>(a.k) + head, Tn, hd, lane);
  load_rows(vs, static_cast<const T*>(a.v) + head, Tn, hd, lane);
  load_dout_rows(gs, static_cast<const T*>(a.dout), b, h, Tn, H, hd, lane);
  __syncwarp();
  for (int i = 0; i < Tn; ++i) {
    const bool ok = lane <= i;
    float p = 0.f, dp = 0.f;
    if (ok) {
      p = expf(mask.score(dot_rows(qs + i * st, ks + lane * st, hd) * a.scale, lane, i) - a.lse[bh * Tn + i]);
      dp = dot_rows(gs + i * st, vs + lane * st, hd);
    }
    const float Di = warp_sum(p * dp);
    ps[i * kWarp + lane] = p;
    dss[i * kWarp + lane] = (kMasked && !(ok && mask.visible(lane))) ? 0.f : p * (dp - Di) * a.scale;
  }
  __syncwarp();
  if (a.dq) {
    T* dq = static_cast<T*>(a.dq) + head;
    for (int e = lane; e < Tn * hd; e += kWarp) {
      const int i = e / hd, d = e % hd;
      float s = 0.f;
      for (int j = 0; j <= i; ++j) s += dss[i * kWarp + j] * ks[j * st + d];
      put_grad(dq[e], s, a.overwrite);
    }
  }
  if (a.dk) causal_weights_t_times(static_cast<T*>(a.dk) + head, dss, qs, Tn, hd, lane, a.overwrite);
  if (a.dv) causal_weights_t_times(static_cast<T*>(a.dv) + head, ps, gs, Tn, hd, lane, a.overwrite);
}

// Warps per block that fit the shared-memory limit (at least one, or an error).
int warps_for(size_t floats_per_warp, const AttnArgs& a) {
  const size_t bytes = floats_per_warp * sizeof(float);
  BT_CHECK(bytes <= size_t(g_max_smem), "attention: a row of T = ", a.T, " with head dim ", a.hd, " needs ", bytes,
           " bytes of shared memory, more than this GPU's ", g_max_smem, " (use a smaller head dim)");
  return int(std::max<size_t>(1, std::min<size_t>(kMaxWarps, size_t(g_max_smem) / bytes)));
}

}  // namespace

void small_attention_setup(int max_smem_optin) {
  g_max_smem = max_smem_optin;
  for (const void* fn : {reinterpret_cast<const void*>(&small_attention_forward_kernel<float, false>),
                         reinterpret_cast<const void*>(&small_attention_forward_kernel<bf16, false>),
                         reinterpret_cast<const void*>(&small_attention_backward_kernel<float, false>),
                         reinterpret_cast<const void*>(&small_attention_backward_kernel<bf16, false>),
                         reinterpret_cast<const void*>(&small_attention_forward_kernel<float, true>),
                         reinterpret_cast<const void*>(&small_attention_forward_kernel<bf16, true>),
                         reinterpret_cast<const void*>(&small_attention_backward_kernel<float, true>),
                         reinterpret_cast<const void*>(&small_attention_backward_kernel<bf16, true>)})
    BT_CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem_optin));
}

void small_attention_forward(const AttnArgs& a, DType t, cudaStream_t stream) {
  const size_t per_warp = fwd_floats_per_warp(a.T, a.hd);
  const int warps = warps_for(per_warp, a);
  const unsigned grid = unsigned(ceil_div(int64_t(a.B) * a.H, warps));
  const size_t smem = per_warp * warps * sizeof(float);
  BT_DISPATCH_ACT(t, X,
                  BT_DISPATCH_MASK(a.keys, M,
                                   BT_LAUNCH(grid, warps * kWarp, smem, stream,
                                             small_attention_forward_kernel<X, M>)(a, warps)));
  BT_KERNEL_CHECK("small_attention_forward_kernel");
}

void small_attention_backward(const AttnArgs& a, DType t, cudaStream_t stream) {
  const size_t per_warp = bwd_floats_per_warp(a.T, a.hd);
  const int warps = warps_for(per_warp, a);
  const unsigned grid = unsigned(ceil_div(int64_t(a.B) * a.H, warps));
  const size_t smem = per_warp * warps * sizeof(float);
  BT_DISPATCH_ACT(t, X,
                  BT_DISPATCH_MASK(a.keys, M,
                                   BT_LAUNCH(grid, warps * kWarp, smem, stream,
                                             small_attention_backward_kernel<X, M>)(a, warps)));
  BT_KERNEL_CHECK("small_attention_backward_kernel");
}

}  // namespace bt::cuda

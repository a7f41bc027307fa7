// Causal attention for long rows as a tiled online softmax (the FlashAttention-2 algorithm,
// in plain fp32 CUDA-core arithmetic on bf16 or f32 storage). Never stores the T x T matrix:
// the forward keeps only the log-sum-exp per query; the backward recomputes probabilities
// from q, k and lse. Included by one .cu per head-dim bound (attention_flash_hd*.cu).
//
// Parallelization, per (b, h) = blockIdx.x, row tile = blockIdx.y, 4 warps per block:
// - forward: a block owns kRows = 16 queries (4 per warp). It walks the key tiles of 32 up to
//   its last query (causal), staging K and V in shared memory. Lane j scores key j against the
//   warp's 4 queries; running max / sum / output (each lane owns hd/32 output dims) are
//   rescaled per tile. lse = m + log(l). Keys hidden by the optional key mask (model/backend.h
//   AttnMask; the kernels exist with and without it, KeyMask<kMasked>) score -inf, or 0 in a row
//   with no visible key.
// - backward dK, dV: a block owns 16 keys, walks the query tiles of 32 from its first key to T,
//   lane i takes query i: p = exp(s - lse_i), dp = dO_i . v_j, ds = p (dp - D_i) / sqrt(hd)
//   (0 for a hidden key),
//   dV_j += p dO_i, dK_j += ds q_i, the sums over the 32 queries by shuffles in lane order.
// - backward dQ: a block owns 16 queries and walks the key tiles like the forward:
//   dQ_i += ds k_j.
// dK/dV and dQ are separate kernels (each recomputes the scores) so that no two blocks ever
// add into the same element: no atomics, deterministic results.
#pragma once
#include <cmath>
#include <type_traits>

#include "model/cuda/attention.cuh"
#include "model/cuda/common.cuh"

namespace bt::cuda {

template <int HD>
struct FlashTraits {
  static_assert(HD % kWarp == 0, "head dim bound must be a multiple of 32");
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * kWarp;
  static constexpr int kRowsPerWarp = 4;
  static constexpr int kRows = kWarps * kRowsPerWarp;  // queries (fwd, dQ) or keys (dK/dV) per block
  static constexpr int kTile = kWarp;                  // keys (fwd, dQ) or queries (dK/dV) per step, one per lane
  static constexpr int kPad = HD + 1;                  // stride of tiles read one row per lane (no bank conflicts)
  static constexpr int kPerLane = HD / kWarp;          // accumulator dims per lane
  static constexpr size_t kFwdSmem = sizeof(float) * (kRows * HD + kTile * kPad + kTile * HD);
  static constexpr size_t kBwdSmem = sizeof(float) * (2 * kRows * HD + 2 * kTile * kPad + 2 * kTile);
};

template <class T, int HD, bool kMasked>
__global__ void __launch_bounds__(FlashTraits<HD>::kThreads) flash_forward_kernel(AttnArgs a) {
  using Tr = FlashTraits<HD>;
  BT_EXTERN_SHARED(float, smem);
  float* Qs = smem;                      // [kRows][HD]
  float* Ks = Qs + Tr::kRows * HD;       // [kTile][kPad]
  float* Vs = Ks + Tr::kTile * Tr::kPad;  // [kTile][HD]
  const AttnHead<T> ah(a);
  const KeyMask<kMasked> mask(a, ah.b);
  const int Tn = ah.Tn, hd = ah.hd, H = ah.H, bh = ah.bh, b = ah.b, h = ah.h;
  const int q0 = blockIdx.y * Tr::kRows;
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const T *q = ah.q, *k = ah.k, *v = ah.v;

  for (int e = tid; e < Tr::kRows * HD; e += Tr::kThreads) {
    const int r = e / HD, d = e % HD, t = q0 + r;
    Qs[e] = (t < Tn && d < hd) ? to_f(q[size_t(t) * hd + d]) : 0.f;
  }
  float m[Tr::kRowsPerWarp], l[Tr::kRowsPerWarp], acc[Tr::kRowsPerWarp][Tr::kPerLane];
#pragma unroll
  for (int r = 0; r < Tr::kRowsPerWarp; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
#pragma unroll
    for (int i = 0; i < Tr::kPerLane; ++i) acc[r][i] = 0.f;
  }
  const int q_last = min(Tn - 1, q0 + Tr::kRows - 1);
  for (int k0 = 0; k0 <= q_last; k0 += Tr::kTile) {
    __syncthreads();  // the previous tile is consumed (and Qs is visible on the first pass)
    for (int e = tid; e < Tr::kTile * HD; e += Tr::kThreads) {
      const int j = e / HD, d = e % HD, t = k0 + j;
      const bool ok = t < Tn && d < hd;
      Ks[j * Tr::kPad + d] = ok ? to_f(k[size_t(t) * hd + d]) : 0.f;
      Vs[j * HD + d] = ok ? to_f(v[size_t(t) * hd + d]) : 0.f;
    }
    __syncthreads();
    float s[Tr::kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < Tr::kRowsPerWarp; ++r) s[r] = 0.f;
    const float* Qw = Qs + warp * Tr::kRowsPerWarp * HD;
#pragma unroll 8
    for (int d = 0; d < HD; ++d) {
      const float kd = Ks[lane * Tr::kPad + d];
#pragma unroll
      for (int r = 0; r < Tr::kRowsPerWarp; ++r) s[r] += Qw[r * HD + d] * kd;
    }
    const int key = k0 + lane;
#pragma unroll
    for (int r = 0; r < Tr::kRowsPerWarp; ++r) {
      const int qi = q0 + warp * Tr::kRowsPerWarp + r;
      const float sv = (key <= qi && key < Tn) ? mask.score(s[r] * a.scale, key, qi) : -INFINITY;
      const float mnew = fmaxf(m[r], warp_max(sv));  // -inf while a row has seen only hidden keys
      const float p = sv == -INFINITY ? 0.f : expf(sv - mnew);
      const float corr = m[r] == -INFINITY ? 0.f : expf(m[r] - mnew);
      l[r] = l[r] * corr + warp_sum(p);
      m[r] = mnew;
#pragma unroll
      for (int i = 0; i < Tr::kPerLane; ++i) acc[r][i] *= corr;
      s[r] = p;
    }
    for (int j = 0; j < Tr::kTile; ++j) {
      float vj[Tr::kPerLane];
#pragma unroll
      for (int i = 0; i < Tr::kPerLane; ++i) vj[i] = Vs[j * HD + lane + kWarp * i];
#pragma unroll
      for (int r = 0; r < Tr::kRowsPerWarp; ++r) {
        const float pj = __shfl_sync(0xffffffffu, s[r], j);
#pragma unroll
        for (int i = 0; i < Tr::kPerLane; ++i) acc[r][i] += pj * vj[i];
      }
    }
  }
  T* out = static_cast<T*>(a.out);
#pragma unroll
  for (int r = 0; r < Tr::kRowsPerWarp; ++r) {
    const int qi = q0 + warp * Tr::kRowsPerWarp + r;
    if (qi >= Tn) continue;
    const float inv = 1.f / l[r];
    T* o = out + ((size_t(b) * Tn + qi) * H + h) * hd;
#pragma unroll
    for (int i = 0; i < Tr::kPerLane; ++i) {
      const int d = lane + kWarp * i;
      if (d < hd) o[d] = from_f<T>(acc[r][i] * inv);
    }
    if (lane == 0) a.lse[size_t(bh) * Tn + qi] = m[r] + logf(l[r]);
  }
}

template <class T, int HD, bool kMasked>
__global__ void __launch_bounds__(FlashTraits<HD>::kThreads) flash_backward_dkdv_kernel(AttnArgs a) {
  using Tr = FlashTraits<HD>;
  BT_EXTERN_SHARED(float, smem);
  float* Ks = smem;                         // [kRows][HD] this block's keys
  float* Vs = Ks + Tr::kRows * HD;          // [kRows][HD]
  float* Qs = Vs + Tr::kRows * HD;          // [kTile][kPad] one query tile
  float* dOs = Qs + Tr::kTile * Tr::kPad;   // [kTile][kPad]
  float* lse_s = dOs + Tr::kTile * Tr::kPad;  // [kTile]
  float* D_s = lse_s + Tr::kTile;           // [kTile]
  const AttnHead<T> ah(a);
  const KeyMask<kMasked> mask(a, ah.b);
  const int Tn = ah.Tn, hd = ah.hd, H = ah.H, bh = ah.bh;
  const int k0 = blockIdx.y * Tr::kRows;
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const size_t head = ah.head;
  const T *q = ah.q, *k = ah.k, *v = ah.v, *dout = ah.dout;  // dout row t at t * H * hd

  for (int e = tid; e < Tr::kRows * HD; e += Tr::kThreads) {
    const int r = e / HD, d = e % HD, t = k0 + r;
    const bool ok = t < Tn && d < hd;
    Ks[e] = ok ? to_f(k[size_t(t) * hd + d]) : 0.f;
    Vs[e] = ok ? to_f(v[size_t(t) * hd + d]) : 0.f;
  }
  float dk[Tr::kRowsPerWarp][Tr::kPerLane], dv[Tr::kRowsPerWarp][Tr::kPerLane];
#pragma unroll
  for (int r = 0; r < Tr::kRowsPerWarp; ++r)
#pragma unroll
    for (int i = 0; i < Tr::kPerLane; ++i) dk[r][i] = dv[r][i] = 0.f;
  const float* Kw = Ks + warp * Tr::kRowsPerWarp * HD;
  const float* Vw = Vs + warp * Tr::kRowsPerWarp * HD;
  for (int qs = (k0 / Tr::kTile) * Tr::kTile; qs < Tn; qs += Tr::kTile) {
    __syncthreads();
    for (int e = tid; e < Tr::kTile * HD; e += Tr::kThreads) {
      const int j = e / HD, d = e % HD, t = qs + j;
      const bool ok = t < Tn && d < hd;
      Qs[j * Tr::kPad + d] = ok ? to_f(q[size_t(t) * hd + d]) : 0.f;
      dOs[j * Tr::kPad + d] = ok ? to_f(dout[size_t(t) * H * hd + d]) : 0.f;
    }
    if (tid < Tr::kTile) {
      const int t = qs + tid;
      lse_s[tid] = t < Tn ? a.lse[size_t(bh) * Tn + t] : 0.f;
      D_s[tid] = t < Tn ? a.Dv[size_t(bh) * Tn + t] : 0.f;
    }
    __syncthreads();
    float p[Tr::kRowsPerWarp], ds[Tr::kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < Tr::kRowsPerWarp; ++r) p[r] = ds[r] = 0.f;
#pragma unroll 8
    for (int d = 0; d < HD; ++d) {
      const float qd = Qs[lane * Tr::kPad + d], gd = dOs[lane * Tr::kPad + d];
#pragma unroll
      for (int r = 0; r < Tr::kRowsPerWarp; ++r) {
        p[r] += qd * Kw[r * HD + d];   // score
        ds[r] += gd * Vw[r * HD + d];  // dp
      }
    }
    const int qi = qs + lane;
#pragma unroll
    for (int r = 0; r < Tr::kRowsPerWarp; ++r) {
      const int key = k0 + warp * Tr::kRowsPerWarp + r;
      const bool ok = qi < Tn && key <= qi;
      const float pr = ok ? expf(mask.score(p[r] * a.scale, key, qi) - lse_s[lane]) : 0.f;
      ds[r] = (kMasked && !(ok && mask.visible(key))) ? 0.f : pr * (ds[r] - D_s[lane]) * a.scale;
      p[r] = pr;
    }
    for (int j = 0; j < Tr::kTile; ++j) {
      float qv[Tr::kPerLane], gv[Tr::kPerLane];
#pragma unroll
      for (int i = 0; i < Tr::kPerLane; ++i) {
        qv[i] = Qs[j * Tr::kPad + lane + kWarp * i];
        gv[i] = dOs[j * Tr::kPad + lane + kWarp * i];
      }
#pragma unroll
      for (int r = 0; r < Tr::kRowsPerWarp; ++r) {
        const float pj = __shfl_sync(0xffffffffu, p[r], j);
        const float dsj = __shfl_sync(0xffffffffu, ds[r], j);
#pragma unroll
        for (int i = 0; i < Tr::kPerLane; ++i) {
          dv[r][i] += pj * gv[i];
          dk[r][i] += dsj * qv[i];
        }
      }
    }
  }
  T* dK = static_cast<T*>(a.dk);
  T* dV = static_cast<T*>(a.dv);
#pragma unroll
  for (int r = 0; r < Tr::kRowsPerWarp; ++r) {
    const int key = k0 + warp * Tr::kRowsPerWarp + r;
    if (key >= Tn) continue;
    const size_t row = head + size_t(key) * hd;
#pragma unroll
    for (int i = 0; i < Tr::kPerLane; ++i) {
      const int d = lane + kWarp * i;
      if (d >= hd) continue;
      if (dK) put_grad(dK[row + d], dk[r][i], a.overwrite);
      if (dV) put_grad(dV[row + d], dv[r][i], a.overwrite);
    }
  }
}

template <class T, int HD, bool kMasked>
__global__ void __launch_bounds__(FlashTraits<HD>::kThreads) flash_backward_dq_kernel(AttnArgs a) {
  using Tr = FlashTraits<HD>;
  BT_EXTERN_SHARED(float, smem);
  float* Qs = smem;                        // [kRows][HD] this block's queries
  float* dOs = Qs + Tr::kRows * HD;        // [kRows][HD]
  float* Ks = dOs + Tr::kRows * HD;        // [kTile][kPad] one key tile
  float* Vs = Ks + Tr::kTile * Tr::kPad;   // [kTile][kPad]
  const AttnHead<T> ah(a);
  const KeyMask<kMasked> mask(a, ah.b);
  const int Tn = ah.Tn, hd = ah.hd, H = ah.H, bh = ah.bh;
  const int q0 = blockIdx.y * Tr::kRows;
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const size_t head = ah.head;
  const T *q = ah.q, *k = ah.k, *v = ah.v, *dout = ah.dout;  // dout row t at t * H * hd

  for (int e = tid; e < Tr::kRows * HD; e += Tr::kThreads) {
    const int r = e / HD, d = e % HD, t = q0 + r;
    const bool ok = t < Tn && d < hd;
    Qs[e] = ok ? to_f(q[size_t(t) * hd + d]) : 0.f;
    dOs[e] = ok ? to_f(dout[size_t(t) * H * hd + d]) : 0.f;
  }
  float lse_r[Tr::kRowsPerWarp], D_r[Tr::kRowsPerWarp], dq[Tr::kRowsPerWarp][Tr::kPerLane];
#pragma unroll
  for (int r = 0; r < Tr::kRowsPerWarp; ++r) {
    const int qi = q0 + warp * Tr::kRowsPerWarp + r;
    lse_r[r] = qi < Tn ? a.lse[size_t(bh) * Tn + qi] : 0.f;
    D_r[r] = qi < Tn ? a.Dv[size_t(bh) * Tn + qi] : 0.f;
#pragma unroll
    for (int i = 0; i < Tr::kPerLane; ++i) dq[r][i] = 0.f;
  }
  const float* Qw = Qs + warp * Tr::kRowsPerWarp * HD;
  const float* dOw = dOs + warp * Tr::kRowsPerWarp * HD;
  const int q_last = min(Tn - 1, q0 + Tr::kRows - 1);
  for (int k0 = 0; k0 <= q_last; k0 += Tr::kTile) {
    __syncthreads();
    for (int e = tid; e < Tr::kTile * HD; e += Tr::kThreads) {
      const int j = e / HD, d = e % HD, t = k0 + j;
      const bool ok = t < Tn && d < hd;
      Ks[j * Tr::kPad + d] = ok ? to_f(k[size_t(t) * hd + d]) : 0.f;
      Vs[j * Tr::kPad + d] = ok ? to_f(v[size_t(t) * hd + d]) : 0.f;
    }
    __syncthreads();
    float s[Tr::kRowsPerWarp], dp[Tr::kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < Tr::kRowsPerWarp; ++r) s[r] = dp[r] = 0.f;
#pragma unroll 8
    for (int d = 0; d < HD; ++d) {
      const float kd = Ks[lane * Tr::kPad + d], vd = Vs[lane * Tr::kPad + d];
#pragma unroll
      for (int r = 0; r < Tr::kRowsPerWarp; ++r) {
        s[r] += Qw[r * HD + d] * kd;
        dp[r] += dOw[r * HD + d] * vd;
      }
    }
    const int key = k0 + lane;
#pragma unroll
    for (int r = 0; r < Tr::kRowsPerWarp; ++r) {
      const int qi = q0 + warp * Tr::kRowsPerWarp + r;
      const bool ok = qi < Tn && key <= qi;
      const float p = ok ? expf(mask.score(s[r] * a.scale, key, qi) - lse_r[r]) : 0.f;
      s[r] = (kMasked && !(ok && mask.visible(key))) ? 0.f : p * (dp[r] - D_r[r]) * a.scale;  // ds
    }
    for (int j = 0; j < Tr::kTile; ++j) {
      float kv[Tr::kPerLane];
#pragma unroll
      for (int i = 0; i < Tr::kPerLane; ++i) kv[i] = Ks[j * Tr::kPad + lane + kWarp * i];
#pragma unroll
      for (int r = 0; r < Tr::kRowsPerWarp; ++r) {
        const float dsj = __shfl_sync(0xffffffffu, s[r], j);
#pragma unroll
        for (int i = 0; i < Tr::kPerLane; ++i) dq[r][i] += dsj * kv[i];
      }
    }
  }
  T* dQ = static_cast<T*>(a.dq);
#pragma unroll
  for (int r = 0; r < Tr::kRowsPerWarp; ++r) {
    const int qi = q0 + warp * Tr::kRowsPerWarp + r;
    if (qi >= Tn) continue;
    const size_t row = head + size_t(qi) * hd;
#pragma unroll
    for (int i = 0; i < Tr::kPerLane; ++i) {
      const int d = lane + kWarp * i;
      if (d < hd) put_grad(dQ[row + d], dq[r][i], a.overwrite);
    }
  }
}

template <int HD>
void flash_attention_forward(const AttnArgs& a, DType t, cudaStream_t stream) {
  using Tr = FlashTraits<HD>;
  BT_CHECK(ceil_div(a.T, Tr::kRows) <= 65535, "attention: T = ", a.T, " is too long for one launch");
  const dim3 grid(unsigned(a.B * a.H), unsigned(ceil_div(a.T, Tr::kRows)));
  BT_DISPATCH_ACT(
      t, X,
      BT_DISPATCH_MASK(a.keys, M, BT_LAUNCH(grid, Tr::kThreads, Tr::kFwdSmem, stream, flash_forward_kernel<X, HD, M>)(a)));
  BT_KERNEL_CHECK("flash_forward_kernel");
}

template <int HD>
void flash_attention_backward(const AttnArgs& a, DType t, cudaStream_t stream) {
  using Tr = FlashTraits<HD>;
  BT_CHECK(ceil_div(a.T, Tr::kRows) <= 65535, "attention: T = ", a.T, " is too long for one launch");
  const dim3 grid(unsigned(a.B * a.H), unsigned(ceil_div(a.T, Tr::kRows)));
  BT_DISPATCH_ACT(t, X, {
    if (a.dk || a.dv) {
      BT_DISPATCH_MASK(a.keys, M,
                       BT_LAUNCH(grid, Tr::kThreads, Tr::kBwdSmem, stream, flash_backward_dkdv_kernel<X, HD, M>)(a));
      BT_KERNEL_CHECK("flash_backward_dkdv_kernel");
    }
    if (a.dq) {
      BT_DISPATCH_MASK(a.keys, M,
                       BT_LAUNCH(grid, Tr::kThreads, Tr::kBwdSmem, stream, flash_backward_dq_kernel<X, HD, M>)(a));
      BT_KERNEL_CHECK("flash_backward_dq_kernel");
    }
  });
}

template <int HD>
void flash_attention_setup() {
  using Tr = FlashTraits<HD>;
  auto raise = [](const void* fn, size_t bytes) {
    if (bytes > 48 * 1024)
      BT_CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  };
  auto both = [&](auto masked) {
    constexpr bool M = decltype(masked)::value;
    raise(reinterpret_cast<const void*>(&flash_forward_kernel<float, HD, M>), Tr::kFwdSmem);
    raise(reinterpret_cast<const void*>(&flash_forward_kernel<bf16, HD, M>), Tr::kFwdSmem);
    raise(reinterpret_cast<const void*>(&flash_backward_dkdv_kernel<float, HD, M>), Tr::kBwdSmem);
    raise(reinterpret_cast<const void*>(&flash_backward_dkdv_kernel<bf16, HD, M>), Tr::kBwdSmem);
    raise(reinterpret_cast<const void*>(&flash_backward_dq_kernel<float, HD, M>), Tr::kBwdSmem);
    raise(reinterpret_cast<const void*>(&flash_backward_dq_kernel<bf16, HD, M>), Tr::kBwdSmem);
  };
  both(std::false_type{});
  both(std::true_type{});
}

}  // namespace bt::cuda

// Internal interface of the attention kernels: the argument block they all take and the
// per-variant launchers that attention.cu dispatches to (small rows, or flash by head dim).
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace bt::cuda {

struct AttnArgs {
  // forward: q, k, v [B, H, T, hd] -> out [B, T, H * hd], lse [B, H, T] f32
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;
  // backward: dout [B, T, H * hd], Dv [B, H, T] f32 = rowsum(dout * out) (flash only),
  // dq, dk, dv [B, H, T, hd] accumulated (+=) or overwritten, any may be null
  const void* dout = nullptr;
  const float* Dv = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  // key mask (model/backend.h AttnMask), both null when every key is visible:
  // keys [B, T] i32 (1 = visible), first [B] i32 (the first visible key of each sequence)
  const int32_t* keys = nullptr;
  const int32_t* first = nullptr;
  int B = 0, H = 0, T = 0, hd = 0;
  float scale = 1.f;       // 1 / sqrt(hd)
  bool overwrite = false;  // backward: dq, dk, dv = ... instead of +=
};

// The key mask of one sequence (model/backend.h AttnMask). The kernels take it as a template
// parameter: KeyMask<false> (no mask given) has no data and no loads, so the unmasked kernels are
// the ones that ran before masks existed; KeyMask<true> reads km [T] and the first visible key.
// Device code only.
template <bool kMasked>
struct KeyMask {
  __device__ KeyMask(const AttnArgs&, int) {}
  __device__ bool visible(int) const { return true; }
  __device__ float score(float scaled, int, int) const { return scaled; }
};
template <>
struct KeyMask<true> {
  const int32_t* km;
  int first;
  __device__ KeyMask(const AttnArgs& a, int b) : km(a.keys + size_t(b) * a.T), first(a.first[b]) {}
  __device__ bool visible(int key) const { return km[key] != 0; }
  // The score of a causal pair key <= query: the scaled score of a visible key; for a hidden
  // key 0 when the query has no visible key (equal weights over its keys), else -inf.
  __device__ float score(float scaled, int key, int query) const {
    if (visible(key)) return scaled;
    return query < first ? 0.f : -INFINITY;
  }
};

// BT_DISPATCH_MASK(masked, M, body): runs body with the compile-time bool M = masked (the
// kernels' KeyMask<M>).
#define BT_DISPATCH_MASK(masked, M, ...) \
  do {                                   \
    if (masked) {                        \
      constexpr bool M = true;           \
      __VA_ARGS__;                       \
    } else {                             \
      constexpr bool M = false;          \
      __VA_ARGS__;                       \
    }                                    \
  } while (0)

// One (b, h) of the arguments, for the kernels with blockIdx.x = b * H + h: q, k, v rows of this
// head at t * hd, dout rows at t * H * hd (dout null in the forward). Device code only.
template <class T>
struct AttnHead {
  int Tn, hd, H, bh, b, h;
  size_t head;
  const T *q, *k, *v, *dout;
  __device__ explicit AttnHead(const AttnArgs& a)
      : Tn(a.T), hd(a.hd), H(a.H), bh(int(blockIdx.x)), b(bh / H), h(bh % H), head(size_t(bh) * Tn * hd),
        q(static_cast<const T*>(a.q) + head), k(static_cast<const T*>(a.k) + head),
        v(static_cast<const T*>(a.v) + head),
        dout(a.dout ? static_cast<const T*>(a.dout) + (size_t(b) * Tn * H + h) * hd : nullptr) {}
};

// T <= kSmallMaxT: one warp per (b, h) (attention_small.cu).
constexpr int kSmallMaxT = 32;
void small_attention_forward(const AttnArgs& a, DType t, cudaStream_t stream);
void small_attention_backward(const AttnArgs& a, DType t, cudaStream_t stream);
void small_attention_setup(int max_smem_optin);

// Longer rows: flash kernels for head dims up to HD (attention_flash_hd{32,64,128}.cu), in
// fp32 arithmetic on the CUDA cores (f32 or bf16 storage).
template <int HD> void flash_attention_forward(const AttnArgs& a, DType t, cudaStream_t stream);
template <int HD> void flash_attention_backward(const AttnArgs& a, DType t, cudaStream_t stream);
template <int HD> void flash_attention_setup();
// The same on the tensor cores, bf16 only (attention_flash_tc.cuh).
template <int HD> void flash_tc_forward(const AttnArgs& a, cudaStream_t stream);
template <int HD> void flash_tc_backward(const AttnArgs& a, cudaStream_t stream);
template <int HD> void flash_tc_setup();

}  // namespace bt::cuda

// The QKV split with partial rotary embedding (GPT-NeoX rotate-half on the first rd dims of
// each head, dim i paired with i + rd/2), forward, backward, and the KV-cache variant.
//
// One thread per output element (b, t, h, d): reads of qkv and writes of q/k/v are coalesced
// along d. cos/sin come from tables [positions, rd/2] that the backend computes on the host in
// double (as the CPU reference does) and keeps per (rd, base), so both backends rotate by the
// same fp32 numbers.
#include "model/cuda/common.cuh"
#include "model/cuda/kernels.h"

namespace bt::cuda {

namespace {

struct RopeDims {
  int B, T, H, hd, rd;
};

// The rotated value of element d of x (one head's q or k, hd long) at table row `pos`.
template <class T>
__device__ __forceinline__ float rotate(const T* x, int d, int half, int rd, const float* cos_t, const float* sin_t,
                                        int64_t pos) {
  if (d < half) {
    const float c = cos_t[pos * half + d], s = sin_t[pos * half + d];
    return to_f(x[d]) * c - to_f(x[d + half]) * s;
  }
  if (d < rd) {
    const int i = d - half;
    const float c = cos_t[pos * half + i], s = sin_t[pos * half + i];
    return to_f(x[d]) * c + to_f(x[i]) * s;
  }
  return to_f(x[d]);
}

// The transpose of the rotation (rotation by -angle), applied to the gradient g.
template <class T>
__device__ __forceinline__ float unrotate(const T* g, int d, int half, int rd, const float* cos_t, const float* sin_t,
                                          int64_t pos) {
  if (d < half) {
    const float c = cos_t[pos * half + d], s = sin_t[pos * half + d];
    return to_f(g[d]) * c + to_f(g[d + half]) * s;
  }
  if (d < rd) {
    const int i = d - half;
    const float c = cos_t[pos * half + i], s = sin_t[pos * half + i];
    return to_f(g[d]) * c - to_f(g[i]) * s;
  }
  return to_f(g[d]);
}

template <class T>
__global__ void qkv_rotary_forward_kernel(T* q, T* k, T* v, const T* qkv, RopeDims p, const float* cos_t,
                                          const float* sin_t) {
  // q, k, v [B, H, T, hd]; qkv [B, T, H, 3, hd]
  const size_t total = size_t(p.B) * p.T * p.H * p.hd;
  const int half = p.rd / 2;
  for (size_t e = blockIdx.x * size_t(blockDim.x) + threadIdx.x; e < total; e += size_t(gridDim.x) * blockDim.x) {
    const int d = int(e % p.hd);
    const size_t r = e / p.hd;  // (b, t, h)
    const int h = int(r % p.H);
    const size_t bt = r / p.H;
    const int t = int(bt % p.T);
    const size_t b = bt / p.T;
    const T* src = qkv + r * 3 * p.hd;
    const size_t dst = ((b * p.H + h) * p.T + t) * p.hd + d;
    q[dst] = from_f<T>(rotate(src, d, half, p.rd, cos_t, sin_t, t));
    k[dst] = from_f<T>(rotate(src + p.hd, d, half, p.rd, cos_t, sin_t, t));
    v[dst] = src[2 * p.hd + d];
  }
}

template <class T>
__global__ void qkv_rotary_backward_kernel(T* dqkv, const T* dq, const T* dk, const T* dv, RopeDims p,
                                           const float* cos_t, const float* sin_t, bool overwrite) {
  // dqkv [B, T, H, 3, hd] += (or =) ...; dq, dk, dv [B, H, T, hd] (null: no contribution)
  const size_t total = size_t(p.B) * p.T * p.H * p.hd;
  const int half = p.rd / 2;
  for (size_t e = blockIdx.x * size_t(blockDim.x) + threadIdx.x; e < total; e += size_t(gridDim.x) * blockDim.x) {
    const int d = int(e % p.hd);
    const size_t r = e / p.hd;
    const int h = int(r % p.H);
    const size_t bt = r / p.H;
    const int t = int(bt % p.T);
    const size_t b = bt / p.T;
    T* dst = dqkv + r * 3 * p.hd;
    const size_t head = ((b * p.H + h) * p.T + t) * p.hd;  // start of the (b, h, t) row
    if (dq || overwrite) put_grad(dst[d], dq ? unrotate(dq + head, d, half, p.rd, cos_t, sin_t, t) : 0.f, overwrite);
    if (dk || overwrite)
      put_grad(dst[p.hd + d], dk ? unrotate(dk + head, d, half, p.rd, cos_t, sin_t, t) : 0.f, overwrite);
    if (dv || overwrite) put_grad(dst[2 * p.hd + d], dv ? to_f(dv[head + d]) : 0.f, overwrite);
  }
}

template <class T>
__global__ void qkv_rotary_cache_kernel(T* q, T* kc, T* vc, const T* qkv, RopeDims p, int64_t pos0,
                                        const int32_t* dpos, int dpos_stride, int64_t Tmax, const float* cos_t,
                                        const float* sin_t) {
  // q [B, H, T, hd]; kc, vc [B, H, Tmax, hd]; qkv [B, T, H, 3, hd]; positions pos0 (+ dpos[b * stride]) + t
  const size_t total = size_t(p.B) * p.T * p.H * p.hd;
  const int half = p.rd / 2;
  for (size_t e = blockIdx.x * size_t(blockDim.x) + threadIdx.x; e < total; e += size_t(gridDim.x) * blockDim.x) {
    const int d = int(e % p.hd);
    const size_t r = e / p.hd;
    const int h = int(r % p.H);
    const size_t bt = r / p.H;
    const int t = int(bt % p.T);
    const size_t b = bt / p.T;
    const int64_t pos = pos0 + (dpos ? int64_t(dpos[b * dpos_stride]) : int64_t(0)) + t;
    if (pos < 0 || pos >= Tmax) continue;  // a device position past the cache (the host checks its own)
    const T* src = qkv + r * 3 * p.hd;
    q[((b * p.H + h) * p.T + t) * p.hd + d] = from_f<T>(rotate(src, d, half, p.rd, cos_t, sin_t, pos));
    const size_t c = ((b * p.H + h) * size_t(Tmax) + size_t(pos)) * p.hd + d;
    kc[c] = from_f<T>(rotate(src + p.hd, d, half, p.rd, cos_t, sin_t, pos));
    vc[c] = src[2 * p.hd + d];
  }
}

}  // namespace

void qkv_rotary_forward(void* q, void* k, void* v, const void* qkv, int B, int T, int H, int hd, int rd,
                        const float* cos_t, const float* sin_t, DType t, cudaStream_t stream) {
  const size_t total = size_t(B) * T * H * hd;
  if (total == 0) return;
  const RopeDims p{B, T, H, hd, rd};
  BT_DISPATCH_ACT(t, X,
                  BT_LAUNCH(elementwise_grid(total), 256, 0, stream, qkv_rotary_forward_kernel<X>)(
                      static_cast<X*>(q), static_cast<X*>(k), static_cast<X*>(v), static_cast<const X*>(qkv), p,
                      cos_t, sin_t));
  BT_KERNEL_CHECK("qkv_rotary_forward_kernel");
}

void qkv_rotary_backward(void* dqkv, const void* dq, const void* dk, const void* dv, int B, int T, int H, int hd,
                         int rd, const float* cos_t, const float* sin_t, DType t, bool overwrite,
                         cudaStream_t stream) {
  const size_t total = size_t(B) * T * H * hd;
  if (total == 0 || !dqkv) return;
  const RopeDims p{B, T, H, hd, rd};
  BT_DISPATCH_ACT(t, X,
                  BT_LAUNCH(elementwise_grid(total), 256, 0, stream, qkv_rotary_backward_kernel<X>)(
                      static_cast<X*>(dqkv), static_cast<const X*>(dq), static_cast<const X*>(dk),
                      static_cast<const X*>(dv), p, cos_t, sin_t, overwrite));
  BT_KERNEL_CHECK("qkv_rotary_backward_kernel");
}

void qkv_rotary_cache(void* q, void* kc, void* vc, const void* qkv, int B, int T, int H, int hd, int rd,
                      int64_t pos0, int64_t Tmax, const float* cos_t, const float* sin_t, DType t,
                      cudaStream_t stream, const int32_t* dpos, int dpos_stride) {
  const size_t total = size_t(B) * T * H * hd;
  if (total == 0) return;
  const RopeDims p{B, T, H, hd, rd};
  BT_DISPATCH_ACT(t, X,
                  BT_LAUNCH(elementwise_grid(total), 256, 0, stream, qkv_rotary_cache_kernel<X>)(
                      static_cast<X*>(q), static_cast<X*>(kc), static_cast<X*>(vc), static_cast<const X*>(qkv), p,
                      pos0, dpos, dpos_stride, Tmax, cos_t, sin_t));
  BT_KERNEL_CHECK("qkv_rotary_cache_kernel");
}

}  // namespace bt::cuda

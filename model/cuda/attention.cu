// Attention entry points: dispatch between the short-row kernel (T <= 32) and the flash
// kernels (by head-dim bound 32 / 64 / 128), the D = rowsum(dout * out) pre-pass of the flash
// backward, and the simple KV-cache attention used for decoding.
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "model/cuda/arena.h"
#include "model/cuda/attention.cuh"
#include "model/cuda/common.cuh"
#include "model/cuda/kernels.h"

namespace bt::cuda {

namespace {

template <class T>
__global__ void attention_rowdot_kernel(float* Dv, const T* dout, const T* out, int B, int H, int Tn, int hd) {
  // Dv [B, H, T] = sum_d dout * out; dout, out [B, T, H * hd]. One warp per (b, t, h).
  const size_t row = blockIdx.x * size_t(blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (row >= size_t(B) * Tn * H) return;
  const int lane = threadIdx.x % kWarp;
  const T* g = dout + row * hd;
  const T* o = out + row * hd;
  float s = 0.f;
  for (int d = lane; d < hd; d += kWarp) s += to_f(g[d]) * to_f(o[d]);
  s = warp_sum(s);
  if (lane == 0) {
    const int h = int(row % H);
    const size_t bt = row / H;
    const int t = int(bt % Tn);
    const size_t b = bt / Tn;
    Dv[(b * H + h) * Tn + t] = s;
  }
}

__device__ __forceinline__ float block_max(float v, float* shared) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float r = lane < warps ? shared[lane] : -INFINITY;
  return warp_max(r);
}

template <class T>
__global__ void attention_cached_kernel(T* out, const T* q, const T* kc, const T* vc, const int32_t* start, int H,
                                        int Tn, int hd, int64_t pos0, const int32_t* dpos, int dpos_stride,
                                        int64_t Tmax, float scale) {
  // out [B, T, H * hd]; q [B, H, T, hd]; kc, vc [B, H, Tmax, hd]. One block per (b, h, t).
  // Query t is at position pos0 (+ dpos[b * dpos_stride] when dpos is given) + t.
  BT_EXTERN_SHARED(float, smem);
  __shared__ float red[kWarp];
  const size_t idx = blockIdx.x;
  const int t = int(idx % Tn);
  const size_t bh = idx / Tn;
  const int b = int(bh / H), h = int(bh % H);
  float* qs = smem;        // [hd]
  float* sc = smem + hd;   // [keys] scores, then probabilities
  // keys first .. last; a negative start means no padding (as on the CPU: max(0, start[b]))
  const int64_t first = start ? max(int64_t(0), int64_t(start[b])) : int64_t(0),
                last = min(Tmax - 1, pos0 + (dpos ? int64_t(dpos[size_t(b) * dpos_stride]) : int64_t(0)) + t);
  const int64_t nk = last >= first ? last - first + 1 : 0;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = to_f(q[(bh * Tn + t) * hd + d]);
  __syncthreads();
  const T* K = kc + bh * size_t(Tmax) * hd;
  const T* V = vc + bh * size_t(Tmax) * hd;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < nk; j += blockDim.x) {
    const T* kr = K + size_t(first + j) * hd;
    float s = 0.f;
    for (int d = 0; d < hd; ++d) s += qs[d] * to_f(kr[d]);
    s *= scale;
    sc[j] = s;
    mx = fmaxf(mx, s);
  }
  mx = block_max(mx, red);
  float sum = 0.f;
  for (int64_t j = threadIdx.x; j < nk; j += blockDim.x) {
    const float e = expf(sc[j] - mx);
    sc[j] = e;
    sum += e;
  }
  sum = block_sum(sum, red);
  __syncthreads();  // every probability written before any thread reads them all
  const float inv = nk > 0 ? 1.f / sum : 0.f;
  T* o = out + ((size_t(b) * Tn + t) * H + h) * hd;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc = 0.f;
    for (int64_t j = 0; j < nk; ++j) acc += sc[j] * to_f(V[size_t(first + j) * hd + d]);
    o[d] = from_f<T>(acc * inv);
  }
}

int g_max_smem_optin = 48 * 1024;

// bf16 rows longer than kSmallMaxT go to the tensor cores unless BT_CUDA_ATTENTION=cuda-cores.
bool use_tensor_cores(DType t) {
  if (t != DType::bf16) return false;
  const char* e = std::getenv("BT_CUDA_ATTENTION");
  return !(e && std::strcmp(e, "cuda-cores") == 0);
}

}  // namespace

void attention_setup(int device) {
  int optin = 0;
  BT_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  small_attention_setup(optin);
  flash_attention_setup<32>();
  flash_attention_setup<64>();
  flash_attention_setup<128>();
  flash_tc_setup<32>();
  flash_tc_setup<64>();
  flash_tc_setup<128>();
  // Dynamic + static shared memory must stay within the opt-in limit.
  cudaFuncAttributes attr{};
  BT_CUDA_CHECK(cudaFuncGetAttributes(&attr, reinterpret_cast<const void*>(&attention_cached_kernel<float>)));
  g_max_smem_optin = optin - int(attr.sharedSizeBytes);
  for (const void* fn : {reinterpret_cast<const void*>(&attention_cached_kernel<float>),
                         reinterpret_cast<const void*>(&attention_cached_kernel<bf16>)})
    BT_CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, g_max_smem_optin));
}

void attention_forward(void* out, float* lse, const void* q, const void* k, const void* v, int B, int H, int T,
                       int hd, DType t, const int32_t* keys, const int32_t* first, cudaStream_t stream) {
  if (size_t(B) * H * T * hd == 0) return;
  AttnArgs a;
  a.keys = keys;
  a.first = first;
  a.q = q;
  a.k = k;
  a.v = v;
  a.out = out;
  a.lse = lse;
  a.B = B;
  a.H = H;
  a.T = T;
  a.hd = hd;
  a.scale = float(1.0 / std::sqrt(double(hd)));
  const bool tc = use_tensor_cores(t);
  if (T <= kSmallMaxT) small_attention_forward(a, t, stream);
  else if (tc && hd <= 32) flash_tc_forward<32>(a, stream);
  else if (tc && hd <= 64) flash_tc_forward<64>(a, stream);
  else if (tc && hd <= 128) flash_tc_forward<128>(a, stream);
  else if (hd <= 32) flash_attention_forward<32>(a, t, stream);
  else if (hd <= 64) flash_attention_forward<64>(a, t, stream);
  else if (hd <= 128) flash_attention_forward<128>(a, t, stream);
  else BT_FAIL("attention: head dim ", hd, " > 128 is not supported by the CUDA kernels for sequences longer than ",
               kSmallMaxT, " (docs/design.md §2.1 head dims are 32, 64 or 128)");
}

void attention_backward(void* dq, void* dk, void* dv, const void* dout, const void* out, const float* lse,
                        const void* q, const void* k, const void* v, int B, int H, int T, int hd, DType t,
                        const int32_t* keys, const int32_t* first, bool overwrite, Scratch& scratch,
                        cudaStream_t stream) {
  if (size_t(B) * H * T * hd == 0 || (!dq && !dk && !dv)) return;
  AttnArgs a;
  a.keys = keys;
  a.first = first;
  a.q = q;
  a.k = k;
  a.v = v;
  a.lse = const_cast<float*>(lse);  // only read by the backward kernels
  a.dout = dout;
  a.dq = dq;
  a.dk = dk;
  a.dv = dv;
  a.B = B;
  a.H = H;
  a.T = T;
  a.hd = hd;
  a.scale = float(1.0 / std::sqrt(double(hd)));
  a.overwrite = overwrite;
  if (T <= kSmallMaxT) {
    small_attention_backward(a, t, stream);
    return;
  }
  BT_CHECK(hd <= 128, "attention: head dim ", hd, " > 128 is not supported by the CUDA kernels");
  const size_t rows = size_t(B) * H * T;
  float* Dv = static_cast<float*>(scratch.get(rows * sizeof(float), stream));  // [B, H, T]
  constexpr int kWarpsPerBlock = 8;
  BT_DISPATCH_ACT(t, X,
                  BT_LAUNCH(unsigned(ceil_div(int64_t(rows), kWarpsPerBlock)),
                                               kWarpsPerBlock * kWarp, 0, stream, attention_rowdot_kernel<X>)(
                      Dv, static_cast<const X*>(dout), static_cast<const X*>(out), B, H, T, hd));
  BT_KERNEL_CHECK("attention_rowdot_kernel");
  a.Dv = Dv;
  const bool tc = use_tensor_cores(t);
  if (tc && hd <= 32) flash_tc_backward<32>(a, stream);
  else if (tc && hd <= 64) flash_tc_backward<64>(a, stream);
  else if (tc) flash_tc_backward<128>(a, stream);
  else if (hd <= 32) flash_attention_backward<32>(a, t, stream);
  else if (hd <= 64) flash_attention_backward<64>(a, t, stream);
  else flash_attention_backward<128>(a, t, stream);
}

void attention_cached(void* out, const void* q, const void* kc, const void* vc, const int32_t* start, int B, int H,
                      int T, int hd, int64_t pos0, int64_t Tmax, DType t, cudaStream_t stream, const int32_t* dpos,
                      int dpos_stride) {
  if (size_t(B) * H * T * hd == 0) return;
  const int64_t keys = dpos ? Tmax : pos0 + T;  // a position on the device may be anywhere in the cache
  const size_t smem = (size_t(hd) + size_t(keys)) * sizeof(float);
  BT_CHECK(smem <= size_t(g_max_smem_optin), "attention_cached: ", keys,
           " cached positions do not fit in shared memory (", g_max_smem_optin, " bytes); shorten the context");
  const float scale = float(1.0 / std::sqrt(double(hd)));
  const unsigned grid = unsigned(size_t(B) * H * T);
  BT_DISPATCH_ACT(t, X,
                  BT_LAUNCH(grid, 128, smem, stream, attention_cached_kernel<X>)(
                      static_cast<X*>(out), static_cast<const X*>(q), static_cast<const X*>(kc),
                      static_cast<const X*>(vc), start, H, T, hd, pos0, dpos, dpos_stride, Tmax, scale));
  BT_KERNEL_CHECK("attention_cached_kernel");
}

}  // namespace bt::cuda

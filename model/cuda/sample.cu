// Decoding on the device: the sampling rule of model/sampling.h for a batch of rows of logits
// (one block per row: 512 threads for a large vocabulary, fewer for a small one) and the decode
// counters (add_i32).
//
// Per row: the largest key with the lowest index (greedy ends here); the top-k threshold by an
// 8-bit radix selection over the keys with counts, the top-p threshold by the same selection
// with the integer weights of model/sampling.h; then the draw, a scan over contiguous
// per-thread chunks in index order. All sums are of integers, so the reduction order (atomics
// in the histograms included) cannot change a result: the kernel computes the same token as the
// CPU reference (sample_row) from the same logits.
#include <algorithm>

#include "core/philox.h"
#include "model/cuda/common.cuh"
#include "model/cuda/kernels.h"
#include "model/sampling.h"

namespace bt::cuda {

namespace {

constexpr int kMaxThreads = 512;
constexpr int kMaxWarps = kMaxThreads / kWarp;
constexpr unsigned kFull = 0xffffffffu;
using u64 = unsigned long long;

struct SampleArgs {
  int V, W;
  double temperature, top_p;
  int top_k, eos_id, shift;
  bool greedy;
  uint64_t seed;
};

// Exclusive prefix sum of v over the block's threads in thread order; *total gets the sum.
// `warp_tot` holds one value per warp.
template <class U>
__device__ U block_exclusive_scan(U v, U* warp_tot, U* total) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  U x = v;
#pragma unroll
  for (int o = 1; o < kWarp; o <<= 1) {
    const U y = __shfl_up_sync(kFull, x, o);
    if (lane >= o) x += y;
  }
  __syncthreads();  // warp_tot may still be read by a previous scan
  if (lane == kWarp - 1) warp_tot[warp] = x;
  __syncthreads();
  U before = 0, all = 0;
  for (int w = 0; w < int(blockDim.x) / kWarp; ++w) {
    if (w < warp) before += warp_tot[w];
    all += warp_tot[w];
  }
  *total = all;
  return before + x - v;
}

// One digit of a radix selection, run by warp 0 over the 256 bins `hist` (digit d counts or
// weighs the elements whose key has digit d here and the chosen digits above): the largest d
// with above + sum_{d' >= d} hist[d'] >= target. Writes that digit and the new `above` (the
// amount in the bins above d) to *digit and *new_above. Warp 0 only; the target is reachable.
template <class U>
__device__ void radix_choose(const U* hist, U above, U target, uint32_t* digit, U* new_above) {
  const int lane = threadIdx.x;
  U chunk = 0;  // bins 8 lane .. 8 lane + 7
  for (int d = 0; d < 8; ++d) chunk += hist[8 * lane + d];
  U suffix = chunk;  // sum over lanes >= lane
#pragma unroll
  for (int o = 1; o < kWarp; o <<= 1) {
    const U y = __shfl_down_sync(kFull, suffix, o);
    if (lane + o < kWarp) suffix += y;
  }
  const U next = __shfl_down_sync(kFull, suffix, 1);  // sum over lanes > lane
  const bool reach = above + suffix >= target;
  const bool next_reach = lane + 1 < kWarp && above + next >= target;
  if (reach && !next_reach) {
    U acc = above + (suffix - chunk);
    for (int d = 8 * lane + 7; d >= 8 * lane; --d) {
      if (acc + hist[d] >= target || d == 8 * lane) {
        *digit = uint32_t(d);
        *new_above = acc;
        break;
      }
      acc += hist[d];
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kMaxThreads)
    sample_kernel(const T* logits, SampleArgs args, int32_t* ids, int32_t* hist, int32_t* done, const int32_t* seq,
                  const int32_t* step, int step_stride, const int32_t* params) {
  __shared__ u64 hmass[256];
  __shared__ unsigned hcount[256];
  __shared__ u64 scan64[kMaxWarps];
  __shared__ unsigned scan32[kMaxWarps];
  __shared__ uint32_t red_key[kMaxWarps];
  __shared__ int red_idx[kMaxWarps];
  __shared__ uint32_t s_digit;
  __shared__ u64 s_above64;
  __shared__ unsigned s_above32;
  __shared__ int s_chosen;

  // The result does not depend on the number of threads: every sum is of integers and the draw
  // scans in index order.
  const int b = blockIdx.x, tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const int nthreads = blockDim.x, nwarps = nthreads / kWarp;
  SampleArgs a = args;
  if (params) {  // this row's own parameters (model/sampling.h, pack_sample_params)
    const int32_t* w = params + size_t(b) * kSampleParamWords;
    a.top_k = w[kSpTopK];
    a.eos_id = w[kSpEos];
    a.seed = sample_param_u64(w, kSpSeed);
    a.temperature = sample_param_f64(w, kSpTemperature);
    a.top_p = sample_param_f64(w, kSpTopP);
    a.greedy = w[kSpGreedy] != 0 || a.temperature <= 0;
  }
  const int V = a.V;
  const int32_t s = step[size_t(b) * step_stride];
  const T* x = logits + size_t(b) * V;
  auto finish = [&](int32_t id) {
    ids[b] = id;
    if (hist) hist[size_t(b) * a.W + s % a.W] = id;
    if (done && a.eos_id >= 0 && id == a.eos_id) done[b] = 1;
  };
  if (done && done[b]) {  // the whole block leaves together
    if (tid == 0) {
      ids[b] = a.eos_id;
      if (hist) hist[size_t(b) * a.W + s % a.W] = a.eos_id;
    }
    return;
  }

  // The largest key, lowest index among equals.
  uint32_t bk = 0;
  int bi = 0x7fffffff;
  for (int i = tid; i < V; i += nthreads) {
    const uint32_t k = sample_key(to_f(x[i]));
    if (k > bk || (k == bk && i < bi)) {
      bk = k;
      bi = i;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const uint32_t ok = __shfl_xor_sync(kFull, bk, o);
    const int oi = __shfl_xor_sync(kFull, bi, o);
    if (ok > bk || (ok == bk && oi < bi)) {
      bk = ok;
      bi = oi;
    }
  }
  if (lane == 0) {
    red_key[warp] = bk;
    red_idx[warp] = bi;
  }
  __syncthreads();
  bk = red_key[0];
  bi = red_idx[0];
  for (int w = 1; w < nwarps; ++w)
    if (red_key[w] > bk || (red_key[w] == bk && red_idx[w] < bi)) {
      bk = red_key[w];
      bi = red_idx[w];
    }
  if (a.greedy) {
    if (tid == 0) finish(bi);
    return;
  }

  const float m = sample_key_value(bk);
  auto weight = [&](float v) { return u64(sample_weight(v, m, a.temperature, a.shift)); };

  // top-k: the k-th largest key tau; n_tie of the tokens equal to it are kept.
  bool all = true;
  uint32_t tau = 0;
  u64 n_tie = 0;
  if (a.top_k > 0 && a.top_k < V) {
    uint32_t prefix = 0;
    unsigned above = 0;
    for (int pass = 0; pass < 4; ++pass) {
      const int sh = 24 - 8 * pass;
      for (int d = tid; d < 256; d += nthreads) hcount[d] = 0;
      __syncthreads();
      for (int i = tid; i < V; i += nthreads) {
        const uint32_t k = sample_key(to_f(x[i]));
        if (pass == 0 || (k >> (sh + 8)) == prefix) atomicAdd(&hcount[(k >> sh) & 255u], 1u);
      }
      __syncthreads();
      if (warp == 0) radix_choose<unsigned>(hcount, above, unsigned(a.top_k), &s_digit, &s_above32);
      __syncthreads();
      prefix = (prefix << 8) | s_digit;
      above = s_above32;
      __syncthreads();  // s_digit, s_above32 read by all before the next pass writes them
    }
    tau = prefix;
    n_tie = u64(a.top_k) - above;
    all = false;
  }
  const u64 w_tau = all ? 0 : weight(sample_key_value(tau));
  auto in_k = [&](uint32_t k) { return all || k > tau; };  // the tie group at tau is added as a whole

  u64 S = 0;
  if (a.top_p < 1.0) {
    // top-p over the kept set: the largest key tau_p whose weight from the top reaches M.
    uint32_t prefix = 0;
    u64 above = 0, M = 0;
    for (int pass = 0; pass < 4; ++pass) {
      const int sh = 24 - 8 * pass;
      for (int d = tid; d < 256; d += nthreads) hmass[d] = 0;
      __syncthreads();
      for (int i = tid; i < V; i += nthreads) {
        const float v = to_f(x[i]);
        const uint32_t k = sample_key(v);
        if (in_k(k) && (pass == 0 || (k >> (sh + 8)) == prefix)) atomicAdd(&hmass[(k >> sh) & 255u], weight(v));
      }
      if (tid == 0 && !all && (pass == 0 || (tau >> (sh + 8)) == prefix))
        atomicAdd(&hmass[(tau >> sh) & 255u], n_tie * w_tau);
      __syncthreads();
      if (pass == 0) {  // the kept weight S and the target M
        u64 tot = 0;
        for (int d = 0; d < 256; ++d) tot += hmass[d];
        S = tot;
        M = sample_top_p_mass(a.top_p, S);
      }
      if (warp == 0) radix_choose<u64>(hmass, above, M, &s_digit, &s_above64);
      __syncthreads();
      prefix = (prefix << 8) | s_digit;
      above = s_above64;
      __syncthreads();
    }
    const u64 wp = weight(sample_key_value(prefix));  // > 0: that key's group holds weight
    tau = prefix;
    n_tie = (M - above + wp - 1) / wp;
    S = above + n_tie * wp;
    all = false;
  } else {
    u64 part = 0;
    for (int i = tid; i < V; i += nthreads) {
      const float v = to_f(x[i]);
      if (in_k(sample_key(v))) part += weight(v);
    }
    u64 tot = 0;
    block_exclusive_scan<u64>(part, scan64, &tot);
    S = tot + (all ? 0 : n_tie * w_tau);
  }

  // The draw, in index order over contiguous chunks: tie ranks, then kept weights, then the
  // thread whose range holds t finds the token.
  const u64 t = mulhi64(philox_draw(a.seed, uint32_t(seq[b]), uint32_t(s)), S);
  const int chunk = (V + nthreads - 1) / nthreads;
  const int i0 = min(V, tid * chunk), i1 = min(V, i0 + chunk);
  unsigned rank0 = 0;
  if (!all) {
    unsigned ties = 0;
    for (int i = i0; i < i1; ++i) ties += sample_key(to_f(x[i])) == tau ? 1u : 0u;
    unsigned tot = 0;
    rank0 = block_exclusive_scan<unsigned>(ties, scan32, &tot);
  }
  auto kept = [&](uint32_t k, unsigned& rank) {
    if (all || k > tau) return true;
    if (k != tau) return false;
    return u64(rank++) < n_tie;
  };
  u64 mass = 0;
  {
    unsigned rank = rank0;
    for (int i = i0; i < i1; ++i) {
      const float v = to_f(x[i]);
      if (kept(sample_key(v), rank)) mass += weight(v);
    }
  }
  if (tid == 0) s_chosen = bi;
  u64 tot = 0;
  const u64 start = block_exclusive_scan<u64>(mass, scan64, &tot);
  if (start <= t && t < start + mass) {
    unsigned rank = rank0;
    u64 acc = start;
    for (int i = i0; i < i1; ++i) {
      const float v = to_f(x[i]);
      if (!kept(sample_key(v), rank)) continue;
      acc += weight(v);
      if (acc > t) {
        s_chosen = i;
        break;
      }
    }
  }
  __syncthreads();
  if (tid == 0) finish(s_chosen);
}

struct Adds {
  int32_t v[8];
  int n;
};

__global__ void add_i32_kernel(int32_t* c, Adds a, int64_t n) {
  // c [a.n, n]: row k += a.v[k]
  const int64_t total = a.n * n;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x)
    c[e] += a.v[e / n];
}

}  // namespace

void sample_tokens(const void* logits, int B, int V, DType t, int32_t* ids, int32_t* hist, int W, int32_t* done,
                   const int32_t* seq, const int32_t* step, int step_stride, const int32_t* params,
                   const SampleParams& p, cudaStream_t stream) {
  if (B == 0) return;
  SampleArgs a;
  a.V = V;
  a.W = W > 0 ? W : 1;
  a.temperature = p.temperature;
  a.top_p = p.top_p;
  a.top_k = p.top_k;
  a.eos_id = p.eos_id;
  a.shift = sample_mass_shift(V);
  a.greedy = p.is_greedy();
  a.seed = p.seed;
  // About 8 logits per thread, in whole warps, at most kMaxThreads.
  const int threads = int(std::min<int64_t>(kMaxThreads, std::max<int64_t>(kWarp, ceil_div(ceil_div(V, 8), kWarp) * kWarp)));
  BT_DISPATCH_ACT(t, X,
                  BT_LAUNCH(unsigned(B), threads, 0, stream, sample_kernel<X>)(
                      static_cast<const X*>(logits), a, ids, hist, done, seq, step, step_stride, params));
  BT_KERNEL_CHECK("sample_kernel");
}

void add_i32(int32_t* c, const int32_t* add, int K, int64_t n, cudaStream_t stream) {
  BT_CHECK(K >= 0 && K <= 8 && n >= 0, "add_i32: at most 8 counters, not ", K);
  if (K == 0 || n == 0) return;
  Adds a{};
  for (int i = 0; i < K; ++i) a.v[i] = add[i];
  a.n = K;
  const int64_t total = K * n;
  const unsigned blocks = unsigned(std::min<int64_t>(1024, (total + 255) / 256));
  BT_LAUNCH(blocks, total < 256 ? kWarp * int((total + kWarp - 1) / kWarp) : 256, 0, stream, add_i32_kernel)(c, a, n);
  BT_KERNEL_CHECK("add_i32_kernel");
}

}  // namespace bt::cuda

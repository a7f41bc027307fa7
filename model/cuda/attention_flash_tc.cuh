// Causal attention for long rows on the tensor cores (bf16 storage, fp32 accumulation): the
// FlashAttention-2 algorithm with WMMA 16x16x16 bf16 tiles. The bf16 mode of the backend uses
// these; the fp32 mode keeps the exact CUDA-core kernels of attention_flash.cuh, and
// BT_CUDA_ATTENTION=cuda-cores selects those for bf16 as well (to cross-check on a GPU).
// Included by one .cu per head-dim bound HD (attention_flash_hd*.cu); head dims below HD are
// zero-padded in shared memory.
//
// A block has 4 warps and owns 64 rows (queries for the forward and dQ, keys for dK/dV); each
// warp owns 16 of them and walks the 64-wide tiles of the other side that the causal mask
// leaves, staged in shared memory as bf16 [64][HD + 8] (the padding spreads banks; every
// WMMA pointer is 32-byte aligned and every ldm a multiple of 16 bytes).
// - forward: S = Q_w K^T (16 x 64, fp32) goes to shared memory; two lanes per row apply the
//   mask, the online-softmax update (running max m and sum l in registers) and rescale the
//   warp's fp32 output rows O_w [16][HD + 4] in shared memory; P (bf16) then accumulates
//   O_w += P V on the tensor cores. out = O_w / l, lse = m + log(l). Keys hidden by the
//   optional key mask (model/backend.h AttnMask; each kernel exists with and without it,
//   KeyMask<kMasked>) score -inf, or 0 in a row with no visible key.
// - dK, dV: S^T = K_w Q^T and dP^T = V_w dO^T; P^T = exp(scale S^T - lse), dS^T = P^T (dP^T -
//   D) scale (0 for a hidden key), both rounded to bf16; dV_w += P^T dO and dK_w += dS^T Q
//   accumulate in fragments.
// - dQ: S = Q_w K^T, dP = dO_w V^T, dS as above; dQ_w += dS K.
// dK/dV and dQ are separate kernels, so every output element has one owner: no atomics,
// deterministic. Fragments go through shared memory whenever their elements are needed by
// row, because the element-to-lane mapping of WMMA fragments is unspecified.
#pragma once
#include <mma.h>

#include <cmath>

#include "model/cuda/attention.cuh"
#include "model/cuda/common.cuh"

namespace bt::cuda {

template <int HD>
struct TcTraits {
  static_assert(HD % 16 == 0, "head dim bound must be a multiple of 16");
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * kWarp;
  static constexpr int kRows = 64;       // rows a block owns
  static constexpr int kTile = 64;       // rows of the other side per step
  static constexpr int kFrag = 16;       // WMMA tile edge
  static constexpr int kLdH = HD + 8;    // bf16 [64][HD] tiles
  static constexpr int kLdS = kTile + 4;  // fp32 [16][64] scores per warp
  static constexpr int kLdP = kTile + 8;  // bf16 [16][64] probabilities per warp
  static constexpr int kLdO = HD + 4;    // fp32 [16][HD] output rows per warp
  static constexpr size_t kTileBytes = size_t(kTile) * kLdH * 2;
  static constexpr size_t kSBytes = size_t(kFrag) * kLdS * 4;
  static constexpr size_t kPBytes = size_t(kFrag) * kLdP * 2;
  static constexpr size_t kOBytes = size_t(kFrag) * kLdO * 4;
  static_assert(kOBytes <= 2 * kSBytes, "the gradient staging reuses the two score buffers");
  // forward: Q, K, V tiles; per warp S, P, O
  static constexpr size_t kFwdSmem = 3 * kTileBytes + kWarps * (kSBytes + kPBytes + kOBytes);
  // backward: two tiles of this block's rows, two of the other side; per warp S, dP (then the
  // gradient staging), P, dS; lse and D of the other side's 64 rows
  static constexpr size_t kBwdSmem = 4 * kTileBytes + kWarps * (2 * kSBytes + 2 * kPBytes) + 2 * kTile * 4;
};

namespace wmma = nvcuda::wmma;

namespace tc {

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// dst [64][LDH] bf16 <- rows row0 .. row0 + 63 of src (row r at src + r * stride, hd values),
// zero past `rows` and past hd. 16-byte copies when every row is whole and aligned.
template <int HD>
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* src, size_t stride, int row0, int rows, int hd) {
  using Tr = TcTraits<HD>;
  const bf16 zero = __float2bfloat16_rn(0.f);
  if (hd == HD && stride % 8 == 0) {
    constexpr int kVec = HD / 8;  // 16-byte pieces per row
    for (int e = threadIdx.x; e < Tr::kTile * kVec; e += Tr::kThreads) {
      const int r = e / kVec, c = (e % kVec) * 8, t = row0 + r;
      uint4 v = {0u, 0u, 0u, 0u};
      if (t < rows) v = *reinterpret_cast<const uint4*>(src + size_t(t) * stride + c);
      *reinterpret_cast<uint4*>(dst + r * Tr::kLdH + c) = v;
    }
  } else {
    for (int e = threadIdx.x; e < Tr::kTile * HD; e += Tr::kThreads) {
      const int r = e / HD, d = e % HD, t = row0 + r;
      dst[r * Tr::kLdH + d] = (t < rows && d < hd) ? src[size_t(t) * stride + d] : zero;
    }
  }
}

// out (16 x 64 fp32, ld kLdS) = A_w B^T, where A_w is the warp's 16 x HD rows as fragments
// fa[HD / 16] and B is a 64 x HD row-major tile at b: the scores of the warp's rows against the
// tile. Skips the 16-column groups with live[n] false (their out columns are left as they are).
template <int HD>
__device__ __forceinline__ void rows_times_tile_t(float* out, const FragA* fa, const bf16* b, const bool* live) {
  using Tr = TcTraits<HD>;
#pragma unroll
  for (int n = 0; n < 4; ++n) {
    if (!live[n]) continue;
    FragC acc;
    wmma::fill_fragment(acc, 0.f);
#pragma unroll
    for (int k = 0; k < HD / 16; ++k) {
      FragBCol fb;
      wmma::load_matrix_sync(fb, b + n * 16 * Tr::kLdH + k * 16, Tr::kLdH);
      wmma::mma_sync(acc, fa[k], fb, acc);
    }
    wmma::store_matrix_sync(out + n * 16, acc, Tr::kLdS, wmma::mem_row_major);
  }
}

// The warp's 16 rows of a [64][kLdH] tile (at rows) as HD / 16 row-major A fragments.
template <int HD>
__device__ __forceinline__ void load_rows(FragA* fa, const bf16* rows) {
#pragma unroll
  for (int k = 0; k < HD / 16; ++k) wmma::load_matrix_sync(fa[k], rows + k * 16, TcTraits<HD>::kLdH);
}

// acc[dn] (16 x 16 pieces of 16 x HD) += P (16 x 64 bf16 at p, ld kLdP) times V (64 x HD at v).
// Each 16-wide piece of P is loaded once and used for all HD / 16 output pieces.
template <int HD>
__device__ __forceinline__ void probs_times_tile(FragC* acc, const bf16* p, const bf16* v, const bool* live) {
  using Tr = TcTraits<HD>;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (!live[k]) continue;
    FragA fa;
    wmma::load_matrix_sync(fa, p + k * 16, Tr::kLdP);
#pragma unroll
    for (int dn = 0; dn < HD / 16; ++dn) {
      FragBRow fb;
      wmma::load_matrix_sync(fb, v + k * 16 * Tr::kLdH + dn * 16, Tr::kLdH);
      wmma::mma_sync(acc[dn], fa, fb, acc[dn]);
    }
  }
}

// dst[row r] += (or =) staged fp32 rows (16 x HD at stage, ld kLdO) for the rows r < valid,
// dims < hd; two lanes per row.
template <int HD>
__device__ __forceinline__ void add_rows(bf16* dst, size_t stride, const float* stage, int valid, int hd, int lane,
                                         bool overwrite) {
  using Tr = TcTraits<HD>;
  const int r = lane >> 1;
  if (r >= valid) return;
  for (int d = (lane & 1); d < hd; d += 2) put_grad(dst[size_t(r) * stride + d], stage[r * Tr::kLdO + d], overwrite);
}

}  // namespace tc

// The backward kernels' shared memory: four [64][kLdH] bf16 tiles (this block's rows and one tile
// of the other side), lse and D of the other side's 64 rows, and per warp S and dP (fp32, later
// the gradient staging [16][kLdO]) and P and dS (bf16).
template <int HD>
struct TcBwdSmem {
  bf16* tile[4];
  float *lse, *D, *S, *dP;
  bf16 *P, *dS;
  __device__ TcBwdSmem(float* smem, int warp) {
    using Tr = TcTraits<HD>;
    char* base = reinterpret_cast<char*>(smem);
    for (int i = 0; i < 4; ++i) tile[i] = reinterpret_cast<bf16*>(base + i * Tr::kTileBytes);
    lse = reinterpret_cast<float*>(base + 4 * Tr::kTileBytes);
    D = lse + Tr::kTile;
    char* w = base + 4 * Tr::kTileBytes + 2 * Tr::kTile * 4 + warp * (2 * Tr::kSBytes + 2 * Tr::kPBytes);
    S = reinterpret_cast<float*>(w);
    dP = reinterpret_cast<float*>(w + Tr::kSBytes);
    P = reinterpret_cast<bf16*>(w + 2 * Tr::kSBytes);
    dS = reinterpret_cast<bf16*>(w + 2 * Tr::kSBytes + Tr::kPBytes);
  }
};

template <int HD, bool kMasked>
__global__ void __launch_bounds__(TcTraits<HD>::kThreads) flash_tc_forward_kernel(AttnArgs a) {
  using Tr = TcTraits<HD>;
  BT_EXTERN_SHARED(float, smem);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const AttnHead<bf16> t(a);
  const KeyMask<kMasked> mask(a, t.b);
  const int Tn = t.Tn, hd = t.hd, H = t.H, bh = t.bh, b = t.b, h = t.h;
  const bf16 *q = t.q, *k = t.k, *v = t.v;
  const int q0 = blockIdx.y * Tr::kRows;
  char* base = reinterpret_cast<char*>(smem);
  bf16* Qs = reinterpret_cast<bf16*>(base);                        // [64][kLdH]
  bf16* Ks = reinterpret_cast<bf16*>(base + Tr::kTileBytes);       // [64][kLdH]
  bf16* Vs = reinterpret_cast<bf16*>(base + 2 * Tr::kTileBytes);   // [64][kLdH]
  char* wbase = base + 3 * Tr::kTileBytes + warp * (Tr::kSBytes + Tr::kPBytes + Tr::kOBytes);
  float* Sw = reinterpret_cast<float*>(wbase);                                  // [16][kLdS]
  bf16* Pw = reinterpret_cast<bf16*>(wbase + Tr::kSBytes);                      // [16][kLdP]
  float* Ow = reinterpret_cast<float*>(wbase + Tr::kSBytes + Tr::kPBytes);      // [16][kLdO]

  tc::load_tile<HD>(Qs, q, hd, q0, Tn, hd);
  for (int e = lane; e < 16 * Tr::kLdO; e += kWarp) Ow[e] = 0.f;
  const int qw0 = q0 + warp * 16;        // the warp's first query
  const int r = lane >> 1, half = lane & 1;  // this lane's row of the warp and its half of the columns
  const int qi = qw0 + r;
  float m = -INFINITY, l = 0.f;
  tc::FragA qf[HD / 16];  // the warp's queries, loaded on the first tile and kept
  const int q_last = min(Tn - 1, q0 + Tr::kRows - 1);
  for (int k0 = 0; k0 <= q_last; k0 += Tr::kTile) {
    __syncthreads();  // the previous K, V tiles are consumed (and Qs is complete on the first pass)
    tc::load_tile<HD>(Ks, k, hd, k0, Tn, hd);
    tc::load_tile<HD>(Vs, v, hd, k0, Tn, hd);
    __syncthreads();
    if (qw0 >= Tn || k0 > qw0 + 15) continue;  // no query of the warp sees this tile
    if (k0 == 0) tc::load_rows<HD>(qf, Qs + warp * 16 * Tr::kLdH);  // Qs is complete after the barrier
    bool live[4];
#pragma unroll
    for (int n = 0; n < 4; ++n) live[n] = k0 + n * 16 <= qw0 + 15;
    tc::rows_times_tile_t<HD>(Sw, qf, Ks, live);
    __syncwarp();
    // Online softmax over this lane's 32 columns of row r; the partner lane has the other 32.
    float s[32];
    float mx = -INFINITY;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const int col = half * 32 + c, key = k0 + col;
      s[c] = (qi < Tn && key <= qi && live[col / 16]) ? mask.score(Sw[r * Tr::kLdS + col] * a.scale, key, qi)
                                                      : -INFINITY;
      mx = fmaxf(mx, s[c]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float mnew = fmaxf(m, mx);
    const float mref = mnew == -INFINITY ? 0.f : mnew;  // rows past T (or so far only hidden keys)
    const float corr = m == -INFINITY ? 0.f : expf(m - mref);
    float sum = 0.f;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const float p = s[c] == -INFINITY ? 0.f : expf(s[c] - mref);
      sum += p;
      Pw[r * Tr::kLdP + half * 32 + c] = __float2bfloat16_rn(p);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * corr + sum;
    m = mnew;
    for (int d = half; d < HD; d += 2) Ow[r * Tr::kLdO + d] *= corr;
    __syncwarp();
    tc::FragC acc[HD / 16];
#pragma unroll
    for (int dn = 0; dn < HD / 16; ++dn) wmma::load_matrix_sync(acc[dn], Ow + dn * 16, Tr::kLdO, wmma::mem_row_major);
    tc::probs_times_tile<HD>(acc, Pw, Vs, live);
#pragma unroll
    for (int dn = 0; dn < HD / 16; ++dn) wmma::store_matrix_sync(Ow + dn * 16, acc[dn], Tr::kLdO, wmma::mem_row_major);
    __syncwarp();
  }
  if (qi >= Tn) return;
  const float inv = 1.f / l;
  bf16* o = static_cast<bf16*>(a.out) + ((size_t(b) * Tn + qi) * H + h) * hd;
  for (int d = half; d < hd; d += 2) o[d] = __float2bfloat16_rn(Ow[r * Tr::kLdO + d] * inv);
  if (half == 0) a.lse[size_t(bh) * Tn + qi] = m + logf(l);
}

// P and dS of a warp's 16 rows against a 64-wide tile, from S and dP in shared memory.
// Forward orientation (dQ kernel): row = query (lse_r, D_r per row), column = key.
// Transposed (dK/dV kernel): row = key, column = query (lse, D per column from shared memory).
template <int HD, bool kTransposed, bool kMasked>
__device__ __forceinline__ void probs_and_dscores(bf16* Pw, bf16* dSw, const float* Sw, const float* dPw, int row0,
                                                  int col0, int Tn, float scale, float lse_r, float D_r,
                                                  const float* lse_c, const float* D_c,
                                                  const KeyMask<kMasked>& mask, int lane) {
  using Tr = TcTraits<HD>;
  const int r = lane >> 1, half = lane & 1;
#pragma unroll 4
  for (int c = half * 32; c < half * 32 + 32; ++c) {
    const int row = row0 + r, col = col0 + c;
    const int qi = kTransposed ? col : row, key = kTransposed ? row : col;
    float p = 0.f, ds = 0.f;
    if (qi < Tn && key <= qi) {
      const float lse = kTransposed ? lse_c[c] : lse_r, D = kTransposed ? D_c[c] : D_r;
      p = expf(mask.score(Sw[r * Tr::kLdS + c] * scale, key, qi) - lse);
      ds = (kMasked && !mask.visible(key)) ? 0.f : p * (dPw[r * Tr::kLdS + c] - D) * scale;
    }
    Pw[r * Tr::kLdP + c] = __float2bfloat16_rn(p);
    dSw[r * Tr::kLdP + c] = __float2bfloat16_rn(ds);
  }
}

template <int HD, bool kMasked>
__global__ void __launch_bounds__(TcTraits<HD>::kThreads) flash_tc_backward_dkdv_kernel(AttnArgs a) {
  using Tr = TcTraits<HD>;
  BT_EXTERN_SHARED(float, smem);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const AttnHead<bf16> t(a);
  const KeyMask<kMasked> mask(a, t.b);
  const int Tn = t.Tn, hd = t.hd, H = t.H, bh = t.bh;
  const size_t head = t.head;
  const bf16 *q = t.q, *k = t.k, *v = t.v, *dout = t.dout;
  const int k0 = blockIdx.y * Tr::kRows;
  const TcBwdSmem<HD> sm(smem, warp);
  bf16 *Ks = sm.tile[0], *Vs = sm.tile[1];   // this block's keys
  bf16 *Qs = sm.tile[2], *dOs = sm.tile[3];  // one query tile
  float *lse_s = sm.lse, *D_s = sm.D;        // of that tile's queries
  float *Sw = sm.S, *dPw = sm.dP;            // S^T, dP^T
  bf16 *Pw = sm.P, *dSw = sm.dS;             // P^T, dS^T

  tc::load_tile<HD>(Ks, k, hd, k0, Tn, hd);
  tc::load_tile<HD>(Vs, v, hd, k0, Tn, hd);
  const int kw0 = k0 + warp * 16;  // the warp's first key
  tc::FragC dK[HD / 16], dV[HD / 16];
#pragma unroll
  for (int dn = 0; dn < HD / 16; ++dn) {
    wmma::fill_fragment(dK[dn], 0.f);
    wmma::fill_fragment(dV[dn], 0.f);
  }
  for (int qs = k0; qs < Tn; qs += Tr::kTile) {
    __syncthreads();
    tc::load_tile<HD>(Qs, q, hd, qs, Tn, hd);
    tc::load_tile<HD>(dOs, dout, size_t(H) * hd, qs, Tn, hd);
    for (int e = threadIdx.x; e < Tr::kTile; e += Tr::kThreads) {
      const int t = qs + e;
      lse_s[e] = t < Tn ? a.lse[size_t(bh) * Tn + t] : 0.f;
      D_s[e] = t < Tn ? a.Dv[size_t(bh) * Tn + t] : 0.f;
    }
    __syncthreads();
    if (kw0 >= Tn) continue;
    bool live[4];  // query groups with a query >= the warp's first key
#pragma unroll
    for (int n = 0; n < 4; ++n) live[n] = qs + n * 16 + 15 >= kw0;
    {
      tc::FragA rf[HD / 16];  // K_w, then V_w (reloaded per tile: the dK, dV accumulators hold the registers)
      tc::load_rows<HD>(rf, Ks + warp * 16 * Tr::kLdH);
      tc::rows_times_tile_t<HD>(Sw, rf, Qs, live);
      tc::load_rows<HD>(rf, Vs + warp * 16 * Tr::kLdH);
      tc::rows_times_tile_t<HD>(dPw, rf, dOs, live);
    }
    __syncwarp();
    probs_and_dscores<HD, true>(Pw, dSw, Sw, dPw, kw0, qs, Tn, a.scale, 0.f, 0.f, lse_s, D_s, mask, lane);
    __syncwarp();
    tc::probs_times_tile<HD>(dV, Pw, dOs, live);
    tc::probs_times_tile<HD>(dK, dSw, Qs, live);
    __syncwarp();
  }
  if (kw0 >= Tn) return;
  float* stage = Sw;  // [16][kLdO] over S^T and dP^T
  const int valid = min(16, Tn - kw0);
  if (a.dk) {
#pragma unroll
    for (int dn = 0; dn < HD / 16; ++dn) wmma::store_matrix_sync(stage + dn * 16, dK[dn], Tr::kLdO, wmma::mem_row_major);
    __syncwarp();
    tc::add_rows<HD>(static_cast<bf16*>(a.dk) + head + size_t(kw0) * hd, hd, stage, valid, hd, lane, a.overwrite);
    __syncwarp();
  }
  if (a.dv) {
#pragma unroll
    for (int dn = 0; dn < HD / 16; ++dn) wmma::store_matrix_sync(stage + dn * 16, dV[dn], Tr::kLdO, wmma::mem_row_major);
    __syncwarp();
    tc::add_rows<HD>(static_cast<bf16*>(a.dv) + head + size_t(kw0) * hd, hd, stage, valid, hd, lane, a.overwrite);
  }
}

template <int HD, bool kMasked>
__global__ void __launch_bounds__(TcTraits<HD>::kThreads) flash_tc_backward_dq_kernel(AttnArgs a) {
  using Tr = TcTraits<HD>;
  BT_EXTERN_SHARED(float, smem);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const AttnHead<bf16> t(a);
  const KeyMask<kMasked> mask(a, t.b);
  const int Tn = t.Tn, hd = t.hd, H = t.H, bh = t.bh;
  const size_t head = t.head;
  const bf16 *q = t.q, *k = t.k, *v = t.v, *dout = t.dout;
  const int q0 = blockIdx.y * Tr::kRows;
  const TcBwdSmem<HD> sm(smem, warp);
  bf16 *Qs = sm.tile[0], *dOs = sm.tile[1];  // this block's queries
  bf16 *Ks = sm.tile[2], *Vs = sm.tile[3];   // one key tile
  float *Sw = sm.S, *dPw = sm.dP;            // S, dP
  bf16 *Pw = sm.P, *dSw = sm.dS;             // P (unused by dQ), dS

  tc::load_tile<HD>(Qs, q, hd, q0, Tn, hd);
  tc::load_tile<HD>(dOs, dout, size_t(H) * hd, q0, Tn, hd);
  const int qw0 = q0 + warp * 16, qi = qw0 + (lane >> 1);
  const float lse_r = qi < Tn ? a.lse[size_t(bh) * Tn + qi] : 0.f;
  const float D_r = qi < Tn ? a.Dv[size_t(bh) * Tn + qi] : 0.f;
  tc::FragC dQ[HD / 16];
#pragma unroll
  for (int dn = 0; dn < HD / 16; ++dn) wmma::fill_fragment(dQ[dn], 0.f);
  const int q_last = min(Tn - 1, q0 + Tr::kRows - 1);
  for (int k0 = 0; k0 <= q_last; k0 += Tr::kTile) {
    __syncthreads();
    tc::load_tile<HD>(Ks, k, hd, k0, Tn, hd);
    tc::load_tile<HD>(Vs, v, hd, k0, Tn, hd);
    __syncthreads();
    if (qw0 >= Tn || k0 > qw0 + 15) continue;
    bool live[4];
#pragma unroll
    for (int n = 0; n < 4; ++n) live[n] = k0 + n * 16 <= qw0 + 15;
    {
      tc::FragA rf[HD / 16];  // Q_w, then dO_w
      tc::load_rows<HD>(rf, Qs + warp * 16 * Tr::kLdH);
      tc::rows_times_tile_t<HD>(Sw, rf, Ks, live);
      tc::load_rows<HD>(rf, dOs + warp * 16 * Tr::kLdH);
      tc::rows_times_tile_t<HD>(dPw, rf, Vs, live);
    }
    __syncwarp();
    probs_and_dscores<HD, false>(Pw, dSw, Sw, dPw, qw0, k0, Tn, a.scale, lse_r, D_r, nullptr, nullptr, mask,
                                  lane);
    __syncwarp();
    tc::probs_times_tile<HD>(dQ, dSw, Ks, live);
    __syncwarp();
  }
  if (qw0 >= Tn || !a.dq) return;
  float* stage = Sw;
#pragma unroll
  for (int dn = 0; dn < HD / 16; ++dn) wmma::store_matrix_sync(stage + dn * 16, dQ[dn], Tr::kLdO, wmma::mem_row_major);
  __syncwarp();
  tc::add_rows<HD>(static_cast<bf16*>(a.dq) + head + size_t(qw0) * hd, hd, stage, min(16, Tn - qw0), hd, lane, a.overwrite);
}

template <int HD>
void flash_tc_forward(const AttnArgs& a, cudaStream_t stream) {
  using Tr = TcTraits<HD>;
  BT_CHECK(ceil_div(a.T, Tr::kRows) <= 65535, "attention: T = ", a.T, " is too long for one launch");
  const dim3 grid(unsigned(a.B * a.H), unsigned(ceil_div(a.T, Tr::kRows)));
  BT_DISPATCH_MASK(a.keys, M, BT_LAUNCH(grid, Tr::kThreads, Tr::kFwdSmem, stream, flash_tc_forward_kernel<HD, M>)(a));
  BT_KERNEL_CHECK("flash_tc_forward_kernel");
}

template <int HD>
void flash_tc_backward(const AttnArgs& a, cudaStream_t stream) {
  using Tr = TcTraits<HD>;
  BT_CHECK(ceil_div(a.T, Tr::kRows) <= 65535, "attention: T = ", a.T, " is too long for one launch");
  const dim3 grid(unsigned(a.B * a.H), unsigned(ceil_div(a.T, Tr::kRows)));
  if (a.dk || a.dv) {
    BT_DISPATCH_MASK(a.keys, M,
                     BT_LAUNCH(grid, Tr::kThreads, Tr::kBwdSmem, stream, flash_tc_backward_dkdv_kernel<HD, M>)(a));
    BT_KERNEL_CHECK("flash_tc_backward_dkdv_kernel");
  }
  if (a.dq) {
    BT_DISPATCH_MASK(a.keys, M,
                     BT_LAUNCH(grid, Tr::kThreads, Tr::kBwdSmem, stream, flash_tc_backward_dq_kernel<HD, M>)(a));
    BT_KERNEL_CHECK("flash_tc_backward_dq_kernel");
  }
}

template <int HD>
void flash_tc_setup() {
  using Tr = TcTraits<HD>;
  auto raise = [](const void* fn, size_t bytes) {
    if (bytes > 48 * 1024)
      BT_CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  };
  for (const void* fn : {reinterpret_cast<const void*>(&flash_tc_forward_kernel<HD, false>),
                         reinterpret_cast<const void*>(&flash_tc_forward_kernel<HD, true>)})
    raise(fn, Tr::kFwdSmem);
  for (const void* fn : {reinterpret_cast<const void*>(&flash_tc_backward_dkdv_kernel<HD, false>),
                         reinterpret_cast<const void*>(&flash_tc_backward_dkdv_kernel<HD, true>),
                         reinterpret_cast<const void*>(&flash_tc_backward_dq_kernel<HD, false>),
                         reinterpret_cast<const void*>(&flash_tc_backward_dq_kernel<HD, true>)})
    raise(fn, Tr::kBwdSmem);
}

}  // namespace bt::cuda

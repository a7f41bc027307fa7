// Attention ops: the QKV split with rotary embedding, and causal softmax attention.
//
// qkv_rotary: the fused QKV output [B, T, H, 3, hd] (q | k | v per head, HF GPT-NeoX layout) is
// split into q, k, v [B, H, T, hd]; q and k get rotary embedding in the GPT-NeoX rotate-half
// form on their first rd dims (dim i pairs with dim i + rd/2, angle = t * base^(-2i/rd), cos
// and sin taken in double and rounded to T); dims >= rd pass through.
//
// attention: per (batch, head), scores = q k^T / sqrt(hd), causal mask, keys hidden by the
// optional key mask (pads, model/backend.h AttnMask) left out, softmax by rows (max-subtracted),
// out = att @ v written with heads merged into [B, T, H * hd]. att keeps the
// probabilities (zeros above the diagonal) for the backward. OpenMP runs over batch x heads;
// loops over hd are `omp simd` so they vectorize, and hd = 32, 64, 128 get kernels with the head
// dim as a compile-time constant (the output row stays in registers). Accumulation is in T. The
// backward sums dk, dv for one (batch, head) in a per-thread buffer and adds it once, so each
// gradient element gets a single `+=` (two calls give exactly twice one call).
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "model/cpu/ops.h"
#include "model/cpu/vec.h"

namespace bt::cpu {

template <class T>
void qkv_rotary_forward(T* q, T* k, T* v, const T* qkv, size_t B, int Tn, int H, int hd, int rd, double base) {
  // q, k, v [B, H, T, hd]; qkv [B, T, H, 3, hd]
  check_rotary(hd, rd);
  std::vector<T> cos_t, sin_t;
  rotary_tables(cos_t, sin_t, Tn, rd, base);
  const int half = rd / 2;
  const size_t rows = B * Tn;
#pragma omp parallel for schedule(static) if (rows * H * hd >= (1u << 14))
  for (size_t r = 0; r < rows; ++r) {
    const size_t b = r / Tn;
    const int t = static_cast<int>(r % Tn);
    const T* c = cos_t.data() + static_cast<size_t>(t) * half;
    const T* s = sin_t.data() + static_cast<size_t>(t) * half;
    for (int h = 0; h < H; ++h) {
      const T* src = qkv + (r * H + h) * 3 * hd;
      const size_t dst = ((b * H + h) * Tn + t) * hd;
      for (int which = 0; which < 2; ++which) {  // q, then k
        const T* x = src + which * hd;
        T* o = (which == 0 ? q : k) + dst;
        rotate_half(o, x, c, s, rd, hd);
      }
      const T* xv = src + 2 * hd;
      T* ov = v + dst;
      for (int i = 0; i < hd; ++i) ov[i] = xv[i];
    }
  }
}

template <class T>
void qkv_rotary_backward(T* dqkv, const T* dq, const T* dk, const T* dv, size_t B, int Tn, int H, int hd, int rd,
                         double base) {
  // dqkv [B, T, H, 3, hd] +=; dq, dk, dv [B, H, T, hd] (any may be null: no contribution)
  if (dqkv == nullptr) return;
  check_rotary(hd, rd);
  std::vector<T> cos_t, sin_t;
  rotary_tables(cos_t, sin_t, Tn, rd, base);
  const int half = rd / 2;
  const size_t rows = B * Tn;
#pragma omp parallel for schedule(static) if (rows * H * hd >= (1u << 14))
  for (size_t r = 0; r < rows; ++r) {
    const size_t b = r / Tn;
    const int t = static_cast<int>(r % Tn);
    const T* c = cos_t.data() + static_cast<size_t>(t) * half;
    const T* s = sin_t.data() + static_cast<size_t>(t) * half;
    for (int h = 0; h < H; ++h) {
      T* dst = dqkv + (r * H + h) * 3 * hd;
      const size_t src = ((b * H + h) * Tn + t) * hd;
      for (int which = 0; which < 2; ++which) {
        const T* gw = which == 0 ? dq : dk;
        if (gw == nullptr) continue;  // no contribution
        const T* g = gw + src;
        T* o = dst + which * hd;
        // The transpose of the rotation: rotate by -angle.
        for (int i = 0; i < half; ++i) {
          o[i] += g[i] * c[i] + g[i + half] * s[i];
          o[i + half] += g[i + half] * c[i] - g[i] * s[i];
        }
        for (int i = rd; i < hd; ++i) o[i] += g[i];
      }
      if (dv == nullptr) continue;
      const T* gv = dv + src;
      T* ov = dst + 2 * hd;
      for (int i = 0; i < hd; ++i) ov[i] += gv[i];
    }
  }
}

namespace {

// One (batch, head) of the forward. HD > 0 makes the head dim a compile-time constant (the
// d-loops unroll and the output row stays in registers: 3x faster at hd = 32); HD = 0 is the
// generic path. qh, kh, vh [T, hd]; att_h [T, T]; out_h points at (b, t = 0, h) of out, rows
// `out_stride` apart. kMasked: km [T] is the sequence's key mask (1 = visible) and first its
// first visible key (rows t < first have none and average v_0..v_t equally); without it (km
// unused) the loops are those of unmasked attention.
template <class T, int HD, bool kMasked>
void attention_head_forward(T* out_h, size_t out_stride, T* att_h, const T* qh, const T* kh, const T* vh, int Tn,
                            int hd_runtime, T scale, const int32_t* km, int first) {
  const int hd = HD > 0 ? HD : hd_runtime;
  constexpr int kAcc = HD > 0 ? HD : 1;
  for (int t = 0; t < Tn; ++t) {
    T* p = att_h + static_cast<size_t>(t) * Tn;
    const T* qt = qh + static_cast<size_t>(t) * hd;
    if (kMasked && t < first) {  // no visible key (a row of only pads): equal weights over keys 0..t
      const T w = T(1) / T(t + 1);
      for (int j = 0; j <= t; ++j) p[j] = w;
    } else {
      T mx = -INFINITY;
      for (int j = 0; j <= t; ++j) {
        if (kMasked && !km[j]) continue;  // a hidden key (pad)
        const T sj = dot(qt, kh + static_cast<size_t>(j) * hd, hd) * scale;
        p[j] = sj;
        mx = sj > mx ? sj : mx;
      }
      T sum = 0;
      for (int j = 0; j <= t; ++j) {
        const T e = kMasked && !km[j] ? T(0) : std::exp(p[j] - mx);
        p[j] = e;
        sum += e;
      }
      const T inv = T(1) / sum;
      for (int j = 0; j <= t; ++j) p[j] *= inv;
    }
    for (int j = t + 1; j < Tn; ++j) p[j] = 0;
    T* o = out_h + t * out_stride;
    if constexpr (HD > 0) {
      T acc[kAcc] = {};
      for (int j = 0; j <= t; ++j) axpy(acc, p[j], vh + static_cast<size_t>(j) * HD, HD);
      for (int d = 0; d < HD; ++d) o[d] = acc[d];
    } else {
      for (int d = 0; d < hd; ++d) o[d] = 0;
      for (int j = 0; j <= t; ++j) axpy(o, p[j], vh + static_cast<size_t>(j) * hd, hd);
    }
  }
}

// One (batch, head) of the backward, summing into dq_h (one `+=` per row) and into the zeroed
// per-thread dk_acc, dv_acc [T, hd]. dout_h is laid out like out_h above; dp is [T] scratch.
// km as in the forward: a hidden key's score is a constant, so it gets no score gradient.
template <class T, int HD, bool kMasked>
void attention_head_backward(T* dq_h, T* dk_acc, T* dv_acc, T* dp, const T* dout_h, size_t out_stride,
                             const T* att_h, const T* qh, const T* kh, const T* vh, int Tn, int hd_runtime, T scale,
                             const int32_t* km) {
  const int hd = HD > 0 ? HD : hd_runtime;
  constexpr int kRow = HD > 0 ? HD : 512;  // the generic path's dq row lives on the stack too
  T dq_row[kRow];
  for (int t = 0; t < Tn; ++t) {
    const T* p = att_h + static_cast<size_t>(t) * Tn;
    const T* g = dout_h + t * out_stride;
    const T* qt = qh + static_cast<size_t>(t) * hd;
    // dp_j = dout_t . v_j; dv_j += p_j dout_t; softmax backward needs sum_j p_j dp_j.
    T pdp = 0;
    for (int j = 0; j <= t; ++j) {
      dp[j] = dot(g, vh + static_cast<size_t>(j) * hd, hd);
      pdp += p[j] * dp[j];
      axpy(dv_acc + static_cast<size_t>(j) * hd, p[j], g, hd);
    }
    for (int d = 0; d < hd; ++d) dq_row[d] = 0;
    for (int j = 0; j <= t; ++j) {
      if (kMasked && !km[j]) continue;
      const T ds = p[j] * (dp[j] - pdp) * scale;  // d(score_j) including the 1/sqrt(hd)
      axpy(dq_row, ds, kh + static_cast<size_t>(j) * hd, hd);
      axpy(dk_acc + static_cast<size_t>(j) * hd, ds, qt, hd);
    }
    if (dq_h) {
      T* o = dq_h + static_cast<size_t>(t) * hd;
      for (int d = 0; d < hd; ++d) o[d] += dq_row[d];
    }
  }
}

}  // namespace

template <class T>
void attention_forward(T* out, T* att, const T* q, const T* k, const T* v, size_t B, int Tn, int H, int hd,
                       const int32_t* keys, const int32_t* first) {
  // out [B, T, H * hd]; att [B, H, T, T]; q, k, v [B, H, T, hd]; keys [B, T], first [B] (or null)
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd)));
  const long BH = static_cast<long>(B) * H;
  const size_t TT = static_cast<size_t>(Tn) * Tn, head = static_cast<size_t>(Tn) * hd;
  const size_t out_stride = static_cast<size_t>(H) * hd;
#pragma omp parallel for schedule(static) if (static_cast<size_t>(BH) * TT * hd >= (1u << 15))
  for (long bh = 0; bh < BH; ++bh) {
    const size_t b = bh / H, h = bh % H;
    T* out_h = out + b * Tn * out_stride + h * hd;
    const T *qh = q + bh * head, *kh = k + bh * head, *vh = v + bh * head;
    T* att_h = att + bh * TT;
    const int32_t* km = keys ? keys + b * Tn : nullptr;
    const int f = keys ? first[b] : 0;
    auto run = [&](auto masked) {
      constexpr bool M = decltype(masked)::value;
      switch (hd) {
        case 32: attention_head_forward<T, 32, M>(out_h, out_stride, att_h, qh, kh, vh, Tn, hd, scale, km, f); break;
        case 64: attention_head_forward<T, 64, M>(out_h, out_stride, att_h, qh, kh, vh, Tn, hd, scale, km, f); break;
        case 128: attention_head_forward<T, 128, M>(out_h, out_stride, att_h, qh, kh, vh, Tn, hd, scale, km, f); break;
        default: attention_head_forward<T, 0, M>(out_h, out_stride, att_h, qh, kh, vh, Tn, hd, scale, km, f);
      }
    };
    if (km) run(std::true_type{});
    else run(std::false_type{});
  }
}

template <class T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* att, const T* q, const T* k, const T* v,
                        size_t B, int Tn, int H, int hd, const int32_t* keys) {
  // dq, dk, dv [B, H, T, hd]; dout [B, T, H * hd]; att [B, H, T, T]; q, k, v [B, H, T, hd]; keys [B, T] or null
  BT_CHECK(hd <= 512, "attention_backward: head dim ", hd, " is above the CPU backend's limit of 512");
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd)));
  const long BH = static_cast<long>(B) * H;
  const size_t TT = static_cast<size_t>(Tn) * Tn, head = static_cast<size_t>(Tn) * hd;
  const size_t out_stride = static_cast<size_t>(H) * hd;
#pragma omp parallel if (static_cast<size_t>(BH) * TT * hd >= (1u << 15))
  {
    std::vector<T> dk_acc(head), dv_acc(head), dp(Tn);  // per-thread scratch
#pragma omp for schedule(static)
    for (long bh = 0; bh < BH; ++bh) {
      const size_t b = bh / H, h = bh % H;
      const T* dout_h = dout + b * Tn * out_stride + h * hd;
      const T *qh = q + bh * head, *kh = k + bh * head, *vh = v + bh * head;
      const T* att_h = att + bh * TT;
      T* dq_h = dq ? dq + bh * head : nullptr;
      const int32_t* km = keys ? keys + b * Tn : nullptr;
      std::fill(dk_acc.begin(), dk_acc.end(), T(0));
      std::fill(dv_acc.begin(), dv_acc.end(), T(0));
      T *dka = dk_acc.data(), *dva = dv_acc.data(), *dpp = dp.data();
      auto run = [&](auto masked) {
        constexpr bool M = decltype(masked)::value;
        switch (hd) {
          case 32:
            attention_head_backward<T, 32, M>(dq_h, dka, dva, dpp, dout_h, out_stride, att_h, qh, kh, vh, Tn, hd,
                                              scale, km);
            break;
          case 64:
            attention_head_backward<T, 64, M>(dq_h, dka, dva, dpp, dout_h, out_stride, att_h, qh, kh, vh, Tn, hd,
                                              scale, km);
            break;
          case 128:
            attention_head_backward<T, 128, M>(dq_h, dka, dva, dpp, dout_h, out_stride, att_h, qh, kh, vh, Tn, hd,
                                               scale, km);
            break;
          default:
            attention_head_backward<T, 0, M>(dq_h, dka, dva, dpp, dout_h, out_stride, att_h, qh, kh, vh, Tn, hd,
                                             scale, km);
        }
      };
      if (km) run(std::true_type{});
      else run(std::false_type{});
      if (dk) {
        T* o = dk + bh * head;
        for (size_t i = 0; i < head; ++i) o[i] += dk_acc[i];
      }
      if (dv) {
        T* o = dv + bh * head;
        for (size_t i = 0; i < head; ++i) o[i] += dv_acc[i];
      }
    }
  }
}

template void qkv_rotary_forward<float>(float*, float*, float*, const float*, size_t, int, int, int, int, double);
template void qkv_rotary_forward<double>(double*, double*, double*, const double*, size_t, int, int, int, int, double);
template void qkv_rotary_backward<float>(float*, const float*, const float*, const float*, size_t, int, int, int, int,
                                         double);
template void qkv_rotary_backward<double>(double*, const double*, const double*, const double*, size_t, int, int, int,
                                          int, double);
template void attention_forward<float>(float*, float*, const float*, const float*, const float*, size_t, int, int,
                                       int, const int32_t*, const int32_t*);
template void attention_forward<double>(double*, double*, const double*, const double*, const double*, size_t, int,
                                        int, int, const int32_t*, const int32_t*);
template void attention_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                        const float*, const float*, size_t, int, int, int, const int32_t*);
template void attention_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                         const double*, const double*, size_t, int, int, int, const int32_t*);

}  // namespace bt::cpu

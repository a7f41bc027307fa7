// Inference attention with KV caches (infer/): the QKV split with rotary at absolute positions
// written into per-layer caches, and causal attention of new queries over the cache.
//
// The arithmetic follows model/cpu/attention.cpp step by step (angles in double rounded to T,
// scores = dot * scale, max-subtracted exp, multiply by 1/sum, out = sum_j p_j v_j), so a cached
// forward reproduces the training forward's values for the same positions.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "model/cpu/ops.h"
#include "model/cpu/vec.h"

namespace bt::cpu {


template <class T>
void qkv_rotary_cache(T* q, T* kc, T* vc, const T* qkv, size_t B, int Tn, int H, int hd, int Tmax, int64_t pos0,
                      int rd, double base, const int32_t* row_pos) {
  // q [B, H, T, hd]; kc, vc [B, H, Tmax, hd]; qkv [B, T, H, 3, hd]
  check_rotary(hd, rd);
  if (!row_pos)
    BT_CHECK(pos0 >= 0 && pos0 + Tn <= Tmax, "qkv_rotary_cache: positions ", pos0, "..", pos0 + Tn - 1,
             " exceed the cache length ", Tmax);
  const int half = rd / 2;
  // cos/sin [T, half] at positions pos0 + t, or [B, T, half] at row_pos[b] + t
  std::vector<T> cos_t, sin_t;
  if (!row_pos) {
    rotary_tables(cos_t, sin_t, Tn, rd, base, pos0);
  } else {
    std::vector<T> c, s;
    for (size_t b = 0; b < B; ++b) {
      rotary_tables(c, s, Tn, rd, base, row_pos[b]);
      cos_t.insert(cos_t.end(), c.begin(), c.end());
      sin_t.insert(sin_t.end(), s.begin(), s.end());
    }
  }
  const size_t rows = B * Tn;
#pragma omp parallel for schedule(static) if (rows * H * hd >= (1u << 14))
  for (size_t r = 0; r < rows; ++r) {
    const size_t b = r / Tn;
    const int t = static_cast<int>(r % Tn);
    const int64_t pos = (row_pos ? row_pos[b] : pos0) + t;
    if (pos < 0 || pos >= Tmax) continue;  // a row's device position past its cache: nothing written (as on CUDA)
    const size_t tab = (row_pos ? r : static_cast<size_t>(t)) * half;
    const T* c = cos_t.data() + tab;
    const T* s = sin_t.data() + tab;
    for (int h = 0; h < H; ++h) {
      const T* src = qkv + (r * H + h) * 3 * hd;
      T* outs[2] = {q + ((b * H + h) * Tn + t) * hd, kc + ((b * H + h) * static_cast<size_t>(Tmax) + pos) * hd};
      for (int which = 0; which < 2; ++which) {
        const T* x = src + which * hd;
        T* o = outs[which];
        rotate_half(o, x, c, s, rd, hd);
      }
      const T* xv = src + 2 * hd;
      T* ov = vc + ((b * H + h) * static_cast<size_t>(Tmax) + pos) * hd;
      for (int i = 0; i < hd; ++i) ov[i] = xv[i];
    }
  }
}

template <class T>
void attention_cached(T* out, const T* q, const T* kc, const T* vc, const int32_t* start, size_t B, int Tn, int H,
                      int hd, int Tmax, int64_t pos0, const int32_t* row_pos) {
  // out [B, T, H * hd]; q [B, H, T, hd]; kc, vc [B, H, Tmax, hd]; start [B] or null
  if (!row_pos)
    BT_CHECK(pos0 >= 0 && pos0 + Tn <= Tmax, "attention_cached: positions ", pos0, "..", pos0 + Tn - 1,
             " exceed the cache length ", Tmax);
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd)));
  const long work = static_cast<long>(B) * H * Tn;
  const int64_t keys = row_pos ? Tmax : pos0 + Tn;  // the most keys a query sees
#pragma omp parallel if (static_cast<size_t>(work) * static_cast<size_t>(keys) * hd >= (1u << 15))
  {
    std::vector<T> p(static_cast<size_t>(keys));  // per-thread scores
#pragma omp for schedule(static)
    for (long w = 0; w < work; ++w) {
      const size_t bh = static_cast<size_t>(w) / Tn;
      const int t = static_cast<int>(w % Tn);
      const size_t b = bh / H;
      const int h = static_cast<int>(bh % H);
      // A row's device position past its cache attends to the whole cache (as on CUDA).
      const int64_t pos = std::min<int64_t>((row_pos ? row_pos[b] : pos0) + t, Tmax - 1);
      const int64_t j0 = start ? std::max<int64_t>(0, start[b]) : 0;
      const T* qt = q + (bh * Tn + t) * hd;
      const T* kh = kc + bh * static_cast<size_t>(Tmax) * hd;
      const T* vh = vc + bh * static_cast<size_t>(Tmax) * hd;
      T* o = out + ((b * Tn + t) * H + h) * hd;
      for (int d = 0; d < hd; ++d) o[d] = 0;
      if (j0 > pos) continue;  // a query inside the left padding: nothing to attend to
      T mx = -INFINITY;
      for (int64_t j = j0; j <= pos; ++j) {
        const T sj = dot(qt, kh + static_cast<size_t>(j) * hd, hd) * scale;
        p[j] = sj;
        mx = sj > mx ? sj : mx;
      }
      T sum = 0;
      for (int64_t j = j0; j <= pos; ++j) {
        const T e = std::exp(p[j] - mx);
        p[j] = e;
        sum += e;
      }
      const T inv = T(1) / sum;
      for (int64_t j = j0; j <= pos; ++j) p[j] *= inv;
      for (int64_t j = j0; j <= pos; ++j) axpy(o, p[j], vh + static_cast<size_t>(j) * hd, hd);
    }
  }
}

template void qkv_rotary_cache<float>(float*, float*, float*, const float*, size_t, int, int, int, int, int64_t, int,
                                      double, const int32_t*);
template void qkv_rotary_cache<double>(double*, double*, double*, const double*, size_t, int, int, int, int, int64_t,
                                       int, double, const int32_t*);
template void attention_cached<float>(float*, const float*, const float*, const float*, const int32_t*, size_t, int,
                                      int, int, int, int64_t, const int32_t*);
template void attention_cached<double>(double*, const double*, const double*, const double*, const int32_t*, size_t,
                                       int, int, int, int, int64_t, const int32_t*);

}  // namespace bt::cpu

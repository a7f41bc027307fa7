// LayerNorm over the last dim (biased variance, affine weight and bias), forward and backward.
//
// Row statistics are accumulated in double for both instantiations (two-pass variance). The
// weight and bias gradients are reductions over rows; to be independent of the thread count
// they are computed with the column block outer (one thread owns a block of columns and walks
// every row in order), never as per-thread partial sums.
#include <algorithm>
#include <cmath>

#include "model/cpu/ops.h"

namespace bt::cpu {

namespace {
constexpr int kColBlock = 64;  // columns per thread-owned block of the dw/db reduction
}

template <class T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* x, const T* w, const T* b, size_t n, int C, double eps) {
  // out [n, C], mean [n], rstd [n], x [n, C], w [C], b [C]
#pragma omp parallel for schedule(static) if (n * static_cast<size_t>(C) >= (1u << 14))
  for (size_t i = 0; i < n; ++i) {
    const T* xr = x + i * C;
    double s = 0;
    for (int c = 0; c < C; ++c) s += xr[c];
    const double m = s / C;
    double v = 0;
    for (int c = 0; c < C; ++c) {
      const double d = xr[c] - m;
      v += d * d;
    }
    const double rs = 1.0 / std::sqrt(v / C + eps);
    T* o = out + i * C;
    for (int c = 0; c < C; ++c) o[c] = static_cast<T>((xr[c] - m) * rs * w[c] + b[c]);
    if (mean) mean[i] = static_cast<T>(m);
    if (rstd) rstd[i] = static_cast<T>(rs);
  }
}

template <class T>
void layernorm_backward(T* dx, T* dw, T* db, const T* dout, const T* x, const T* w, const T* mean, const T* rstd,
                        size_t n, int C) {
  // dx [n, C], dw [C], db [C], dout [n, C], x [n, C], w [C], mean [n], rstd [n]
  const bool big = n * static_cast<size_t>(C) >= (1u << 14);
  if (dx) {
#pragma omp parallel for schedule(static) if (big)
    for (size_t i = 0; i < n; ++i) {
      const T* xr = x + i * C;
      const T* dr = dout + i * C;
      const double m = mean[i], rs = rstd[i];
      double sum_g = 0, sum_gx = 0;  // sum(dout * w), sum(dout * w * xhat)
      for (int c = 0; c < C; ++c) {
        const double g = static_cast<double>(dr[c]) * w[c];
        sum_g += g;
        sum_gx += g * ((xr[c] - m) * rs);
      }
      sum_g /= C;
      sum_gx /= C;
      T* o = dx + i * C;
      for (int c = 0; c < C; ++c) {
        const double g = static_cast<double>(dr[c]) * w[c];
        const double xh = (xr[c] - m) * rs;
        o[c] += static_cast<T>(rs * (g - sum_g - xh * sum_gx));
      }
    }
  }
  if (dw || db) {
    const int blocks = (C + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (big)
    for (int blk = 0; blk < blocks; ++blk) {
      const int c0 = blk * kColBlock, c1 = std::min(C, c0 + kColBlock), w_ = c1 - c0;
      double aw[kColBlock] = {}, ab[kColBlock] = {};
      for (size_t i = 0; i < n; ++i) {
        const T* xr = x + i * C + c0;
        const T* dr = dout + i * C + c0;
        const double m = mean[i], rs = rstd[i];
        for (int c = 0; c < w_; ++c) {
          aw[c] += static_cast<double>(dr[c]) * ((xr[c] - m) * rs);
          ab[c] += dr[c];
        }
      }
      if (dw)
        for (int c = 0; c < w_; ++c) dw[c0 + c] += static_cast<T>(aw[c]);
      if (db)
        for (int c = 0; c < w_; ++c) db[c0 + c] += static_cast<T>(ab[c]);
    }
  }
}

template void layernorm_forward<float>(float*, float*, float*, const float*, const float*, const float*, size_t, int,
                                       double);
template void layernorm_forward<double>(double*, double*, double*, const double*, const double*, const double*, size_t,
                                        int, double);
template void layernorm_backward<float>(float*, float*, float*, const float*, const float*, const float*, const float*,
                                        const float*, size_t, int);
template void layernorm_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                         const double*, const double*, size_t, int);

}  // namespace bt::cpu

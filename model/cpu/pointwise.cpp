// Pointwise ops: exact (erf) GELU forward and backward, the residual add, and dst += src.
//
// The GELU derivative is the exact one, Phi(x) + x * phi(x), not the tanh approximation.
#include <cmath>

#include "model/cpu/ops.h"

namespace bt::cpu {

namespace {
constexpr size_t kParallelMin = 1u << 15;  // below this a parallel region costs more than it saves
}

template <class T>
void gelu_forward(T* out, const T* x, size_t n) {
  // out [n], x [n]
  const T inv_sqrt2 = static_cast<T>(M_SQRT1_2);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) out[i] = T(0.5) * x[i] * (T(1) + std::erf(x[i] * inv_sqrt2));
}

template <class T>
void gelu_backward(T* dx, const T* dout, const T* x, size_t n) {
  // dx [n], dout [n], x [n]
  if (dx == nullptr) return;
  const T inv_sqrt2 = static_cast<T>(M_SQRT1_2);
  const T inv_sqrt_2pi = static_cast<T>(0.5 * M_2_SQRTPI * M_SQRT1_2);  // 1 / sqrt(2 pi)
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) {
    const T xi = x[i];
    const T cdf = T(0.5) * (T(1) + std::erf(xi * inv_sqrt2));
    const T pdf = inv_sqrt_2pi * std::exp(T(-0.5) * xi * xi);
    dx[i] += dout[i] * (cdf + xi * pdf);
  }
}

template <class T>
void add_forward(T* out, const T* a, const T* b, const T* c, size_t n) {
  // out, a, b, c [n]
  if (c) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i] + c[i];
  } else {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
  }
}

template <class T>
void accumulate(T* dst, const T* src, size_t n) {
  // dst, src [n]
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) dst[i] += src[i];
}

template void gelu_forward<float>(float*, const float*, size_t);
template void gelu_forward<double>(double*, const double*, size_t);
template void gelu_backward<float>(float*, const float*, const float*, size_t);
template void gelu_backward<double>(double*, const double*, const double*, size_t);
template void add_forward<float>(float*, const float*, const float*, const float*, size_t);
template void add_forward<double>(double*, const double*, const double*, const double*, size_t);
template void accumulate<float>(float*, const float*, size_t);
template void accumulate<double>(double*, const double*, size_t);

}  // namespace bt::cpu

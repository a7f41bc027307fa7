// Small kernels shared by the CPU attention ops (training and KV-cached): dot, axpy, rotary tables.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/error.h"

namespace bt::cpu {

template <class T>
inline T dot(const T* a, const T* b, int n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y += a * x
template <class T>
inline void axpy(T* y, T a, const T* x, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

// cos/sin [T, rd/2] of the rotary angles (pos0 + t) * base^(-2i/rd), computed in double and
// rounded to T once, so the training and the KV-cached paths rotate by the same numbers.
template <class T>
void rotary_tables(std::vector<T>& cos_t, std::vector<T>& sin_t, int Tn, int rd, double base, int64_t pos0 = 0) {
  const int half = rd / 2;
  cos_t.resize(static_cast<size_t>(Tn) * half);
  sin_t.resize(static_cast<size_t>(Tn) * half);
  for (int i = 0; i < half; ++i) {
    const double inv_freq = std::pow(base, -2.0 * i / rd);
    for (int t = 0; t < Tn; ++t) {
      const double a = static_cast<double>(pos0 + t) * inv_freq;
      cos_t[static_cast<size_t>(t) * half + i] = static_cast<T>(std::cos(a));
      sin_t[static_cast<size_t>(t) * half + i] = static_cast<T>(std::sin(a));
    }
  }
}

// o = x rotated (rotate-half pairing i <-> i + rd/2) by the angles whose cos/sin are c, s [rd/2];
// dims rd .. hd-1 pass through. One routine for the training and the KV-cached paths, so both
// rotate bit-identically.
template <class T>
inline void rotate_half(T* o, const T* x, const T* c, const T* s, int rd, int hd) {
  const int half = rd / 2;
  for (int i = 0; i < half; ++i) {
    o[i] = x[i] * c[i] - x[i + half] * s[i];
    o[i + half] = x[i + half] * c[i] + x[i] * s[i];
  }
  for (int i = rd; i < hd; ++i) o[i] = x[i];
}

inline void check_rotary(int hd, int rd) {
  BT_CHECK(rd >= 0 && rd <= hd && rd % 2 == 0, "rotary dims ", rd, " must be even and within the head dim ", hd,
           " (rotary_pct gives an odd or too large count; pick a head dim that makes it even)");
}

}  // namespace bt::cpu

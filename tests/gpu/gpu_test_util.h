// Helpers of the GPU tests: a CUDA backend in fp32 or bf16 next to the CPU reference backend,
// random inputs that are exactly representable in the GPU's activation dtype (so both backends
// see the same numbers), and comparisons with stated tolerances. The tests talk to the GPU only
// through model/backend.h; they compile everywhere and skip without a GPU.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "model/backend.h"
#include "model/cpu/cpu_backend.h"

namespace bt::gputest {

// Tolerance: |got - ref| <= rtol * |ref| + arel * max|ref| (+ a tiny absolute floor).
struct Tol {
  double rtol;
  double arel;
};

// One precision mode of the CUDA backend.
struct Mode {
  std::string precision;  // "fp32" | "bf16"
  DType act;
  bool bf16() const { return act == DType::bf16; }
};
inline Mode fp32_mode() { return {"fp32", DType::f32}; }
inline Mode bf16_mode() { return {"bf16", DType::bf16}; }
inline std::string mode_name(const testing::TestParamInfo<Mode>& i) { return i.param.precision; }
inline void PrintTo(const Mode& m, std::ostream* os) { *os << m.precision; }

inline std::unique_ptr<Backend> make_gpu(const Mode& m) {
  BackendOptions o;
  o.device = "cuda";
  o.precision = m.precision;
  return make_backend(o);
}
inline std::unique_ptr<Backend> make_cpu() { return make_cpu_backend(DType::f32); }

// Rounds through bf16 when the mode stores bf16, so CPU and GPU start from the same values.
inline float representable(float x, bool bf16) { return bf16 ? bf16_to_float(float_to_bf16(x)) : x; }

inline std::vector<float> random_vec(size_t n, uint64_t seed, double scale = 1.0, bool bf16 = false,
                                     double offset = 0.0) {
  Rng r(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = representable(static_cast<float>(offset + scale * r.normal()), bf16);
  return v;
}

inline std::vector<int32_t> random_ids(size_t n, int V, uint64_t seed) {
  Rng r(seed);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = static_cast<int32_t>(r.below(V));
  return v;
}

// Allocates on `be` and uploads host floats (converted to dtype t).
inline Tensor put(Backend& be, Shape s, const std::vector<float>& host, DType t) {
  EXPECT_EQ(host.size(), s.numel()) << "put: host data for " << s.str();
  Tensor x = be.alloc(s, t);
  be.upload(x, host.data(), DType::f32);
  return x;
}
inline Tensor put_ids(Backend& be, Shape s, const std::vector<int32_t>& host) {
  Tensor x = be.alloc(s, DType::i32);
  be.upload(x, host.data(), DType::i32);
  return x;
}
inline std::vector<double> get(Backend& be, Tensor t) {
  std::vector<double> h(t.numel());
  be.download(h.data(), DType::f64, t);
  return h;
}

// Compares element-wise; reports the worst element and how many exceed the bound.
inline void expect_close(const std::vector<double>& got, const std::vector<double>& ref, Tol tol,
                         const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  double mx = 0;
  for (double r : ref) mx = std::max(mx, std::abs(r));
  size_t bad = 0, worst = 0;
  double worst_ratio = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double bound = tol.rtol * std::abs(ref[i]) + tol.arel * mx + 1e-30;
    const double err = std::abs(got[i] - ref[i]);
    const double ratio = std::isfinite(got[i]) ? err / bound : INFINITY;
    if (ratio > 1) ++bad;
    if (ratio > worst_ratio || !(ratio == ratio)) {
      worst_ratio = ratio;
      worst = i;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << ref.size() << " elements off; worst [" << worst << "] got "
                     << got[worst] << " ref " << ref[worst] << " (" << worst_ratio << "x the bound rtol "
                     << tol.rtol << ", arel " << tol.arel << " of max " << mx << ")";
}

// Relative L2 error ||got - ref|| / max(||ref||, floor).
inline double rel_l2(const std::vector<double>& got, const std::vector<double>& ref, double floor = 1e-12) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), floor);
}

}  // namespace bt::gputest

// Shared by the CPU and GPU sampling tests: logit vectors with known renormalised distributions
// and a chi-square test of a backend's sample_tokens against them. The expected distribution is
// computed independently of model/sampling.h: a sort by (logit desc, index asc), the top-k
// cut, a softmax at the temperature in double, the top-p prefix, renormalisation.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "model/backend.h"

namespace bt::sampling_check {

struct Case {
  std::string name;
  std::vector<float> logits;
  SampleParams p;
};

inline std::vector<Case> cases() {
  // 16 distinct logits in no particular order, and a vector with ties across the top-k cut.
  const std::vector<float> x = {0.3f, -1.f, 2.f, -0.2f, 1.2f, -3.f, 0.8f, 0.f,
                                1.5f, -0.5f, 0.1f, -1.5f, 1.f, -0.8f, 0.5f, -2.f};
  const std::vector<float> ties = {0.5f, 1.f, 1.f, -1.f, 1.f, 0.f, 1.f, 2.f};
  std::vector<Case> c;
  auto add = [&](std::string name, const std::vector<float>& l, double T, int k, double p, uint64_t seed) {
    Case k_;
    k_.name = std::move(name);
    k_.logits = l;
    k_.p.temperature = T;
    k_.p.top_k = k;
    k_.p.top_p = p;
    k_.p.seed = seed;
    c.push_back(k_);
  };
  add("temperature 1", x, 1.0, 0, 1.0, 1);
  add("temperature 0.7, top-k 5", x, 0.7, 5, 1.0, 2);
  add("temperature 1.3, top-p 0.8", x, 1.3, 0, 0.8, 3);
  add("top-k 8, top-p 0.9", x, 1.0, 8, 0.9, 4);
  add("ties across the top-k cut (k 3)", ties, 1.0, 3, 1.0, 5);
  return c;
}

// The renormalised distribution over the kept set; min_margin gets the distance of the top-p
// target from the nearest cumulative probability (a case too close to a cut is not a test).
inline std::vector<double> expected(const Case& c, double* min_margin = nullptr) {
  const int V = static_cast<int>(c.logits.size());
  std::vector<int> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return c.logits[a] > c.logits[b]; });
  int n = c.p.top_k > 0 && c.p.top_k < V ? c.p.top_k : V;
  const double m = c.logits[order[0]];
  std::vector<double> w(V, 0.0);
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += w[order[i]] = std::exp((c.logits[order[i]] - m) / c.p.temperature);
  if (min_margin) *min_margin = 1.0;
  if (c.p.top_p < 1.0) {
    double acc = 0;
    int keep = 0;
    while (keep < n) {
      acc += w[order[keep]] / sum;
      if (min_margin) *min_margin = std::min(*min_margin, std::abs(acc - c.p.top_p));
      ++keep;
      if (acc >= c.p.top_p) break;
    }
    for (int i = keep; i < n; ++i) w[order[i]] = 0;
    n = keep;
  }
  double s = 0;
  for (double v : w) s += v;
  for (double& v : w) v /= s;
  return w;
}

// Pearson's chi-square quantile at 1 - 1e-3 (Wilson-Hilferty).
inline double chi2_critical(int df) {
  const double z = 3.090232, k = 2.0 / (9.0 * df);
  return df * std::pow(1 - k + z * std::sqrt(k), 3);
}

// N draws from one call of be.sample_tokens: N rows of the case's logits, row b on stream b.
inline void chi_square(Backend& be, const Case& case_, int N) {
  const int V = static_cast<int>(case_.logits.size());
  Case c = case_;  // the logits as the backend stores them (bf16 rounds them)
  {
    Tensor t = be.alloc({V}, be.act_dtype());
    be.upload(t, case_.logits.data(), DType::f32);
    be.download(c.logits.data(), DType::f32, t);
  }
  double margin = 1;
  const std::vector<double> pr = expected(c, &margin);
  ASSERT_GT(margin, 1e-3) << c.name << ": the top-p target sits on a cut";
  std::vector<float> lg;
  std::vector<int32_t> seq(N);
  for (int b = 0; b < N; ++b) {
    lg.insert(lg.end(), c.logits.begin(), c.logits.end());
    seq[b] = b;
  }
  Tensor tl = be.alloc({N, V}, be.act_dtype()), ids = be.alloc({N}, DType::i32), ts = be.alloc({N}, DType::i32),
         st = be.alloc({1}, DType::i32);
  be.upload(tl, lg.data(), DType::f32);
  be.upload(ts, seq.data(), DType::i32);
  const int32_t step = 3;
  be.upload(st, &step, DType::i32);
  be.sample_tokens(tl, DecodeState{ids, Tensor(), Tensor(), ts, st}, c.p);
  std::vector<int32_t> out(N);
  be.download(out.data(), DType::i32, ids);
  std::vector<double> count(V, 0);
  for (int32_t t : out) {
    ASSERT_TRUE(t >= 0 && t < V) << c.name << ": id " << t;
    count[t] += 1;
  }
  // Tokens outside the kept set must never come; bins with fewer than 5 expected are pooled.
  double chi2 = 0, pool_obs = 0, pool_exp = 0;
  int bins = 0;
  for (int i = 0; i < V; ++i) {
    if (pr[i] == 0) {
      EXPECT_EQ(count[i], 0) << c.name << ": token " << i << " is outside the kept set";
      continue;
    }
    const double e = pr[i] * N;
    if (e < 5) {
      pool_obs += count[i];
      pool_exp += e;
      continue;
    }
    chi2 += (count[i] - e) * (count[i] - e) / e;
    ++bins;
  }
  if (pool_exp > 0) {
    chi2 += (pool_obs - pool_exp) * (pool_obs - pool_exp) / pool_exp;
    ++bins;
  }
  if (bins < 2) return;  // one kept token: nothing to test beyond the support
  std::printf("%s on %s: chi-square %.2f, %d degrees of freedom (critical %.2f)\n", c.name.c_str(),
              be.name().c_str(), chi2, bins - 1, chi2_critical(bins - 1));
  EXPECT_LT(chi2, chi2_critical(bins - 1)) << c.name << ": chi-square " << chi2 << " with " << bins - 1
                                           << " degrees of freedom (" << N << " draws on " << be.name() << ")";
}

}  // namespace bt::sampling_check

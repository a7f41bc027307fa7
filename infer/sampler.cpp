// Sampling: see sampler.h.
#include "infer/sampler.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace bt {

int32_t argmax(const float* x, int n) {
  int32_t best = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

Sampler::Sampler(const SamplingOptions& o, int batch) : o_(o) {
  BT_CHECK(o.top_k >= 0, "--top-k must be >= 0 (0 = no limit)");
  BT_CHECK(o.top_p > 0 && o.top_p <= 1, "--top-p must be in (0, 1]");
  for (int b = 0; b < batch; ++b) rng_.emplace_back(o.seed, static_cast<uint64_t>(b) + 1);
}

int32_t Sampler::sample(const float* logits, int V, int b) {
  if (o_.greedy || o_.temperature <= 0) return argmax(logits, V);
  // Softmax at the temperature, in double, over the candidates sorted by probability.
  auto& c = scratch_;
  c.resize(V);
  double mx = -INFINITY;
  for (int i = 0; i < V; ++i) mx = std::max(mx, static_cast<double>(logits[i]));
  for (int i = 0; i < V; ++i) c[i] = {(static_cast<double>(logits[i]) - mx) / o_.temperature, i};
  size_t n = static_cast<size_t>(V);
  if (o_.top_k > 0 && static_cast<size_t>(o_.top_k) < n) {
    std::partial_sort(c.begin(), c.begin() + o_.top_k, c.end(),
                      [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
    n = static_cast<size_t>(o_.top_k);
  } else {
    std::sort(c.begin(), c.end(),
              [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
  }
  double sum = 0;
  for (size_t i = 0; i < n; ++i) {
    c[i].first = std::exp(c[i].first);
    sum += c[i].first;
  }
  if (o_.top_p < 1.0) {  // the smallest prefix whose mass reaches top_p
    double acc = 0;
    size_t keep = 0;
    while (keep < n) {
      acc += c[keep].first / sum;
      ++keep;
      if (acc >= o_.top_p) break;
    }
    n = keep;
    sum = 0;
    for (size_t i = 0; i < n; ++i) sum += c[i].first;
  }
  double u = rng_[b].uniform() * sum;
  for (size_t i = 0; i < n; ++i) {
    u -= c[i].first;
    if (u < 0) return c[i].second;
  }
  return c[n - 1].second;
}

}  // namespace bt

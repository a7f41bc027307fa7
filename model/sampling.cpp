// The reference implementation of the sampling rule of model/sampling.h, written for clarity:
// the thresholds by selection and sorting, the draw by one pass in index order. The CUDA
// kernel (model/cuda/sample.cu) finds the same thresholds by radix selection.
#include "model/sampling.h"

#include <algorithm>
#include <functional>
#include <utility>
#include <vector>

namespace bt {

int32_t sample_row(const float* x, int V, const SampleParams& p, uint32_t seq, uint32_t step) {
  int32_t best = 0;
  uint32_t best_key = sample_key(x[0]);
  for (int i = 1; i < V; ++i) {
    const uint32_t k = sample_key(x[i]);
    if (k > best_key) {
      best_key = k;
      best = i;
    }
  }
  if (p.is_greedy()) return best;
  std::vector<uint32_t> key(V);
  for (int i = 0; i < V; ++i) key[i] = sample_key(x[i]);
  const int shift = sample_mass_shift(V);
  const float m = sample_key_value(key[best]);
  auto weight_of_key = [&](uint32_t k) { return sample_weight(sample_key_value(k), m, p.temperature, shift); };
  std::vector<uint64_t> q(V);
  for (int i = 0; i < V; ++i) q[i] = sample_weight(x[i], m, p.temperature, shift);

  // The kept set: all (tau unused), or key > tau plus the first n_tie tokens with key == tau.
  bool all = true;
  uint32_t tau = 0;
  uint64_t n_tie = 0, S = 0;
  if (p.top_k > 0 && p.top_k < V) {
    std::vector<uint32_t> sorted(key);
    std::nth_element(sorted.begin(), sorted.begin() + (p.top_k - 1), sorted.end(), std::greater<uint32_t>());
    tau = sorted[p.top_k - 1];
    uint64_t greater = 0;
    for (int i = 0; i < V; ++i)
      if (key[i] > tau) {
        ++greater;
        S += q[i];
      }
    n_tie = uint64_t(p.top_k) - greater;
    S += n_tie * weight_of_key(tau);
    all = false;
  } else {
    for (int i = 0; i < V; ++i) S += q[i];
  }
  if (p.top_p < 1.0) {
    const uint64_t M = sample_top_p_mass(p.top_p, S);
    // Weight per distinct key of the kept set, in decreasing key order.
    std::vector<std::pair<uint32_t, uint64_t>> groups;
    for (int i = 0; i < V; ++i)
      if (all || key[i] > tau) groups.emplace_back(key[i], q[i]);
    if (!all) groups.emplace_back(tau, n_tie * weight_of_key(tau));
    std::sort(groups.begin(), groups.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    uint64_t above = 0;
    for (size_t g = 0; g < groups.size();) {
      size_t e = g;
      uint64_t mass = 0;
      for (; e < groups.size() && groups[e].first == groups[g].first; ++e) mass += groups[e].second;
      if (above + mass >= M) {
        const uint64_t qt = weight_of_key(groups[g].first);  // > 0: this group holds weight
        tau = groups[g].first;
        n_tie = (M - above + qt - 1) / qt;
        S = above + n_tie * qt;
        all = false;
        break;
      }
      above += mass;
      g = e;
    }
  }
  const uint64_t t = mulhi64(philox_draw(p.seed, seq, step), S);
  uint64_t acc = 0, ties = 0;
  int32_t last = best;
  for (int i = 0; i < V; ++i) {
    bool kept = all || key[i] > tau;
    if (!all && key[i] == tau) kept = ties++ < n_tie;
    if (!kept) continue;
    acc += q[i];
    last = i;
    if (acc > t) return i;
  }
  return last;  // unreachable: the kept weights sum to S > t
}

}  // namespace bt

// Next-token choice from a row of logits: greedy (argmax, lowest id on ties) or sampling with
// temperature, top-k and top-p (nucleus). Each sequence of a batch draws from its own stream
// (seed, sequence index), so a sequence's samples do not depend on what else is in the batch.
#pragma once
#include <cstdint>
#include <vector>

#include "core/rng.h"

namespace bt {

struct SamplingOptions {
  bool greedy = false;
  double temperature = 1.0;  // <= 0 means greedy
  int top_k = 0;             // 0: no limit
  double top_p = 1.0;        // 1: no limit
  uint64_t seed = 0;
};

class Sampler {
 public:
  Sampler(const SamplingOptions& o, int batch);
  // logits [V] of sequence b -> the chosen id.
  int32_t sample(const float* logits, int V, int b);
  const SamplingOptions& options() const { return o_; }

 private:
  SamplingOptions o_;
  std::vector<Rng> rng_;
  std::vector<std::pair<double, int32_t>> scratch_;
};

int32_t argmax(const float* x, int n);

}  // namespace bt

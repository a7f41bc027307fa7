// Next-token choice on the host, by the rule every backend implements (model/sampling.h):
// greedy (argmax, lowest id on ties) or sampling with temperature, top-k and top-p (nucleus),
// each draw keyed by (seed, the sequence's stream, its token index) through Philox4x32-10, so
// a sequence's samples depend neither on the rest of the batch nor on the backend. The
// generator samples on the device (Backend::sample_tokens); this class serves the naive
// reference generation and tests.
#pragma once
#include <cstdint>
#include <vector>

#include "model/sampling.h"

namespace bt {

struct SamplingOptions {
  bool greedy = false;
  double temperature = 1.0;  // <= 0 means greedy
  int top_k = 0;             // 0: no limit
  double top_p = 1.0;        // 1: no limit
  uint64_t seed = 0;
};

// Checks the options (a clear error for bad values) and adds the stop token.
SampleParams sample_params(const SamplingOptions& o, int eos_id);

class Sampler {
 public:
  // streams[b]: the Philox stream of sequence b (empty: b).
  Sampler(const SamplingOptions& o, int batch, const std::vector<int32_t>& streams = {});
  // logits [V] of sequence b -> the chosen id; advances b's token index.
  int32_t sample(const float* logits, int V, int b);
  const SamplingOptions& options() const { return o_; }

 private:
  SamplingOptions o_;
  SampleParams p_;
  std::vector<int32_t> streams_;
  std::vector<uint32_t> steps_;
};

int32_t argmax(const float* x, int n);

}  // namespace bt

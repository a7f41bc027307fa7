// Sampling on the host: see sampler.h; the rule itself is model/sampling.{h,cpp}.
#include "infer/sampler.h"

#include <cmath>

#include "core/error.h"

namespace bt {

int32_t argmax(const float* x, int n) {
  int32_t best = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

SampleParams sample_params(const SamplingOptions& o, int eos_id) {
  BT_CHECK(o.top_k >= 0, "--top-k must be >= 0 (0 = no limit), not ", o.top_k);
  BT_CHECK(o.top_p > 0 && o.top_p <= 1, "--top-p must be in (0, 1], not ", o.top_p);
  BT_CHECK(std::isfinite(o.temperature), "--temperature must be a number, not ", o.temperature);
  SampleParams p;
  p.greedy = o.greedy;
  p.temperature = o.temperature;
  p.top_k = o.top_k;
  p.top_p = o.top_p;
  p.seed = o.seed;
  p.eos_id = eos_id;
  return p;
}

Sampler::Sampler(const SamplingOptions& o, int batch, const std::vector<int32_t>& streams)
    : o_(o), p_(sample_params(o, -1)), streams_(streams), steps_(batch, 0) {
  BT_CHECK(streams_.empty() || static_cast<int>(streams_.size()) == batch, "sampler: ", streams_.size(),
           " streams for ", batch, " sequences");
  if (streams_.empty())
    for (int b = 0; b < batch; ++b) streams_.push_back(b);
}

int32_t Sampler::sample(const float* logits, int V, int b) {
  return sample_row(logits, V, p_, static_cast<uint32_t>(streams_[b]), steps_[b]++);
}

}  // namespace bt

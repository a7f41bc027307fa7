// Aggregations and standard errors of lm-evaluation-harness v0.4 (lm_eval/api/metrics.py):
//   mean                 sum / n;                          stderr: sample stddev / sqrt(n)
//   perplexity           exp(-mean(ll));                   stderr: bootstrap (below)
//   weighted_perplexity  exp(-sum(ll) / sum(weight));      stderr: none ("N/A")
//   bits_per_byte        -sum(ll) / sum(bytes) / ln 2;     stderr: none ("N/A")
// The bootstrap is the harness's: iters / 1000 chunks (at most 1000 resamples each), chunk i
// drawn with Python's random.Random(i).choices(xs, k=len(xs)); the result is the sample stddev
// of all resampled values. PyRandom reproduces CPython's Mersenne Twister seeding
// (init_by_array) and random(), so the standard errors equal the harness's for the same values.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace bt {

class PyRandom {
 public:
  explicit PyRandom(uint64_t seed) { this->seed(seed); }
  void seed(uint64_t s);       // random.seed(s) for a non-negative integer s
  uint32_t next_u32();         // genrand_uint32
  double random();             // random.random(): 53 bits in [0, 1)
  size_t choice_index(size_t n) { return static_cast<size_t>(random() * static_cast<double>(n)); }

 private:
  uint32_t mt_[624];
  int index_ = 624;
};

double metric_mean(const std::vector<double>& xs);
double sample_stddev(const std::vector<double>& xs);
double mean_stderr(const std::vector<double>& xs);
double perplexity(const std::vector<double>& lls);
double weighted_perplexity(const std::vector<std::pair<double, double>>& items);
double bits_per_byte(const std::vector<std::pair<double, double>>& items);
double bootstrap_stderr(const std::function<double(const std::vector<double>&)>& f, const std::vector<double>& xs,
                        int64_t iters);

// One aggregated metric: value and stderr (empty: the harness writes "N/A").
struct Aggregate {
  double value = 0;
  std::optional<double> stderr_;
};
// items: per document, the value (mean, perplexity) or (value, weight) pairs.
Aggregate aggregate_metric(const std::string& aggregation, const std::vector<double>& values,
                           const std::vector<std::pair<double, double>>& weighted, int64_t bootstrap_iters);

}  // namespace bt

// Harness-compatible aggregations, standard errors and Python's random: see metrics.h.
#include "infer/tasks/metrics.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace bt {

// ---- CPython's Mersenne Twister (Modules/_randommodule.c) ---------------------------------------

void PyRandom::seed(uint64_t s) {
  // init_genrand(19650218) then init_by_array(key): key = the 32-bit words of |s|, least
  // significant first ([0] for 0).
  std::vector<uint32_t> key;
  do {
    key.push_back(static_cast<uint32_t>(s & 0xFFFFFFFFu));
    s >>= 32;
  } while (s);
  uint32_t* mt = mt_;
  const int N = 624;
  mt[0] = 19650218u;
  for (int i = 1; i < N; ++i) mt[i] = 1812433253u * (mt[i - 1] ^ (mt[i - 1] >> 30)) + static_cast<uint32_t>(i);
  int i = 1;
  size_t j = 0;
  for (size_t k = std::max<size_t>(N, key.size()); k; --k) {
    mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1664525u)) + key[j] + static_cast<uint32_t>(j);
    ++i, ++j;
    if (i >= N) {
      mt[0] = mt[N - 1];
      i = 1;
    }
    if (j >= key.size()) j = 0;
  }
  for (int k = N - 1; k; --k) {
    mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1566083941u)) - static_cast<uint32_t>(i);
    if (++i >= N) {
      mt[0] = mt[N - 1];
      i = 1;
    }
  }
  mt[0] = 0x80000000u;
  index_ = N;
}

uint32_t PyRandom::next_u32() {
  const int N = 624, M = 397;
  const uint32_t upper = 0x80000000u, lower = 0x7fffffffu, matrix_a = 0x9908b0dfu;
  if (index_ >= N) {
    int k = 0;
    for (; k < N - M; ++k) {
      const uint32_t y = (mt_[k] & upper) | (mt_[k + 1] & lower);
      mt_[k] = mt_[k + M] ^ (y >> 1) ^ ((y & 1u) ? matrix_a : 0u);
    }
    for (; k < N - 1; ++k) {
      const uint32_t y = (mt_[k] & upper) | (mt_[k + 1] & lower);
      mt_[k] = mt_[k + (M - N)] ^ (y >> 1) ^ ((y & 1u) ? matrix_a : 0u);
    }
    const uint32_t y = (mt_[N - 1] & upper) | (mt_[0] & lower);
    mt_[N - 1] = mt_[M - 1] ^ (y >> 1) ^ ((y & 1u) ? matrix_a : 0u);
    index_ = 0;
  }
  uint32_t y = mt_[index_++];
  y ^= (y >> 11);
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= (y >> 18);
  return y;
}

double PyRandom::random() {
  const uint32_t a = next_u32() >> 5, b = next_u32() >> 6;
  return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
}

// ---- aggregations -------------------------------------------------------------------------------

double metric_mean(const std::vector<double>& xs) {
  BT_CHECK(!xs.empty(), "mean of no values");
  double s = 0;
  for (double x : xs) s += x;  // Python's sum(): left to right
  return s / static_cast<double>(xs.size());
}

double sample_stddev(const std::vector<double>& xs) {
  BT_CHECK(xs.size() > 1, "sample standard deviation of fewer than 2 values");
  const double mu = metric_mean(xs);
  double s = 0;
  for (double x : xs) s += (x - mu) * (x - mu);
  return std::sqrt(s / static_cast<double>(xs.size() - 1));
}

double mean_stderr(const std::vector<double>& xs) { return sample_stddev(xs) / std::sqrt(double(xs.size())); }

double perplexity(const std::vector<double>& lls) { return std::exp(-metric_mean(lls)); }

namespace {
double weighted_mean(const std::vector<std::pair<double, double>>& items) {
  double a = 0, b = 0;
  for (const auto& [x, w] : items) a += x;
  for (const auto& [x, w] : items) b += w;
  BT_CHECK(b != 0, "weighted mean with zero total weight");
  return a / b;
}
}  // namespace

double weighted_perplexity(const std::vector<std::pair<double, double>>& items) {
  return std::exp(-weighted_mean(items));
}

double bits_per_byte(const std::vector<std::pair<double, double>>& items) {
  return -weighted_mean(items) / std::log(2.0);
}

double bootstrap_stderr(const std::function<double(const std::vector<double>&)>& f, const std::vector<double>& xs,
                        int64_t iters) {
  const int64_t chunk = std::min<int64_t>(1000, iters);
  const int64_t chunks = chunk > 0 ? iters / chunk : 0;
  BT_CHECK(chunks > 0 && !xs.empty(), "bootstrap: needs iterations and values");
  std::vector<double> res(static_cast<size_t>(chunks * chunk));
  // Chunks are independent (seeded by their index): computed in parallel, stored in order.
#pragma omp parallel for schedule(dynamic)
  for (int64_t c = 0; c < chunks; ++c) {
    PyRandom rnd(static_cast<uint64_t>(c));
    std::vector<double> sample(xs.size());
    for (int64_t r = 0; r < chunk; ++r) {
      for (double& s : sample) s = xs[rnd.choice_index(xs.size())];
      res[static_cast<size_t>(c * chunk + r)] = f(sample);
    }
  }
  return sample_stddev(res);
}

Aggregate aggregate_metric(const std::string& aggregation, const std::vector<double>& values,
                           const std::vector<std::pair<double, double>>& weighted, int64_t bootstrap_iters) {
  Aggregate a;
  if (aggregation == "mean") {
    a.value = metric_mean(values);
    if (bootstrap_iters > 0 && values.size() > 1) a.stderr_ = mean_stderr(values);
  } else if (aggregation == "perplexity") {
    a.value = perplexity(values);
    if (bootstrap_iters > 0 && values.size() > 1)
      a.stderr_ = bootstrap_stderr([](const std::vector<double>& s) { return perplexity(s); }, values, bootstrap_iters);
  } else if (aggregation == "weighted_perplexity") {
    a.value = weighted_perplexity(weighted);
  } else if (aggregation == "bits_per_byte") {
    a.value = bits_per_byte(weighted);
  } else {
    BT_FAIL("unknown aggregation ", aggregation);
  }
  return a;
}

}  // namespace bt

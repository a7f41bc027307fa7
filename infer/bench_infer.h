// `bt bench infer`: generation throughput of one or two models side by side (docs/design.md §2.4, the
// paper's Table/Figure on inference): a prefill-heavy and a decode-heavy setting, batch sizes
// swept or found (`auto`: the largest batch whose weights, KV caches and buffers fit the device
// memory, from the generator's memory plan, confirmed by allocating it), tokens/s (batch x
// generated tokens / wall time, prefill included), the KV-cache bytes per sequence, the
// host <-> device traffic per generated token, and the time per decode step split into block
// decoder, token decoder, head, sampling and host. Random weights and random prompt tokens,
// greedy, no EOS: every sequence generates the full length. Runs on any backend through
// infer/generator.
#pragma once
#include <string>
#include <vector>

namespace bt {

struct BenchInferOptions {
  std::string config;                   // first model
  std::string vs;                       // optional second model (e.g. the vanilla baseline)
  std::vector<std::string> overrides;   // applied to both configs
  std::vector<std::string> batches = {"1", "4", "16", "64"};  // sizes, or "auto"
  std::string prefill_heavy;  // "PROMPT:GEN"; default L : L/16 (the paper at L = 2048: 2048 : 128)
  std::string decode_heavy;   // "PROMPT:GEN"; default L/16 : L (the paper at L = 2048: 128 : 2048)
  std::string settings = "both";  // both | prefill | decode
  std::string device = "auto";
  int repeats = 1;            // timed repeats (the best is reported) after one warm-up
  bool markdown = false;      // also print a markdown table (docs/benchmarks.md)
  bool split = true;          // one more (profiled) run per point for the time split
  double memory_gib = 0;      // batch auto: the memory to fit (0: the device's free memory)
  int max_batch = 4096;       // batch auto: the largest batch considered
  std::string json;           // also write every row to this JSON file (bt sweep --bench reads it)
};
void bench_infer(const BenchInferOptions& o);

}  // namespace bt

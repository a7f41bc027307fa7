// `bt bench infer`: generation throughput of one or two models side by side (docs/design.md §2.4, the
// paper's Table/Figure on inference): a prefill-heavy and a decode-heavy setting, batch sizes
// swept, tokens/s (batch x generated tokens / wall time, prefill included) and the KV-cache bytes
// per sequence. Random weights and random prompt tokens, greedy, no EOS: every sequence
// generates the full length. Runs on any backend through infer/generator.
#pragma once
#include <string>
#include <vector>

namespace bt {

struct BenchInferOptions {
  std::string config;                   // first model
  std::string vs;                       // optional second model (e.g. the vanilla baseline)
  std::vector<std::string> overrides;   // applied to both configs
  std::vector<int> batches = {1, 4, 16, 64};
  std::string prefill_heavy;  // "PROMPT:GEN"; default L*15/16 : L/16 (the paper: 2048 : 128)
  std::string decode_heavy;   // "PROMPT:GEN"; default L/16 : L*15/16 (the paper: 128 : 2048)
  std::string settings = "both";  // both | prefill | decode
  std::string device = "auto";
  int repeats = 1;            // timed repeats (the best is reported) after one warm-up
  bool markdown = false;      // also print a markdown table (docs/benchmarks.md)
};
void bench_infer(const BenchInferOptions& o);

}  // namespace bt

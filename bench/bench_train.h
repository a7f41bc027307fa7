// `bt bench train`: the throughput of a training step (forward, backward, AdamW) on random
// tokens (block models with a padding option on: synthetic documents padded as the loader pads
// them), and `bt bench gemm`: the machine's GEMM throughput to compare it with.
#pragma once
#include <string>
#include <vector>

namespace bt {

struct BenchTrainOptions {
  std::string config;
  std::vector<std::string> overrides;
  int steps = 5;
  int warmup = 1;
  bool profile = false;  // time per op group (each op synchronized)
};
void bench_train(const BenchTrainOptions& o);
// sgemm GFLOP/s on square-ish shapes typical of the tiny model (M x K by K x N).
void bench_gemm(int M, int N, int K, int reps);

}  // namespace bt

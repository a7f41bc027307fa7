// Training-step throughput: tokens/s and model GFLOP/s (docs/design.md §8 FLOP count), plus sgemm.
#include "bench/bench_train.h"

#include <cblas.h>
#include <fmt/core.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/timer.h"
#include "data/loader.h"
#include "model/backend.h"
#include "model/config.h"
#include "model/model.h"
#include "model/profiling_backend.h"
#include "optim/adamw.h"

namespace bt {

void bench_train(const BenchTrainOptions& o) {
  Config cfg = load_config(o.config, o.overrides);
  BackendOptions bo;
  bo.device = cfg.train.device;
  bo.precision = cfg.train.precision;
  auto device_be = make_backend(bo);
  std::unique_ptr<Backend> prof = o.profile ? make_profiling_backend(*device_be) : nullptr;
  Backend* be = prof ? prof.get() : device_be.get();
  const int B = cfg.train.micro_batch, L = cfg.model.context_length;
  // The special tokens the config leaves at -1 are the synthetic streams' EOS, the last id.
  Model model(with_token_ids(cfg.model, cfg.model.vocab_size - 1), *be, B);
  model.init(cfg.train.seed);
  AdamW opt(model, cfg.optim);
  Rng rng(1);
  std::vector<int32_t> tokens(size_t(B) * L);
  std::vector<uint8_t> mask;  // empty: no pads
  const bool padded = cfg.model.is_block() && (cfg.data.random_pad_first_block || cfg.data.pad_to_block_boundary);
  if (padded) {
    // The config's padding options on synthetic documents (random tokens, lengths 1..2048), cut
    // into windows by the loader exactly as in training: tokens and pad mask of one micro-batch.
    auto stream = std::make_shared<TokenStream>(
        synthetic_stream("random:" + std::to_string(std::max<int64_t>(1 << 20, int64_t(4) * B * L)),
                         cfg.model.vocab_size, 1));
    LoaderOptions lo;
    lo.context_length = L;
    lo.block_length = cfg.model.block_length;
    lo.global_batch = lo.micro_batch = B;
    lo.random_pad_first_block = cfg.data.random_pad_first_block;
    lo.pad_to_block_boundary = cfg.data.pad_to_block_boundary;
    lo.prefetch = false;
    lo.vocab_size = cfg.model.vocab_size;
    Loader loader(stream, lo);
    StepBatch sb = loader.next();
    tokens = sb.micro.at(0).tokens;
    mask = sb.micro.at(0).mask;
  } else {
    for (auto& t : tokens) t = static_cast<int32_t>(rng.below(cfg.model.vocab_size));
  }
  auto step = [&] {
    model.zero_grads();
    model.forward(tokens.data(), mask.empty() ? nullptr : mask.data(), B, true, 1.0 / (double(B) * L));
    model.backward();
    opt.step(1e-4);
    be->synchronize();
  };
  for (int i = 0; i < o.warmup; ++i) step();
  reset_profile(*be);
  std::vector<double> times;
  for (int i = 0; i < o.steps; ++i) {
    Timer t;
    step();
    times.push_back(t.seconds());
  }
  std::sort(times.begin(), times.end());
  const double med = times[times.size() / 2];
  const double tokens_per_s = double(B) * L / med;
  const double gflops = tokens_per_s * model.flops_per_token() / 1e9;
  fmt::print("bench train: {} ({}), backend {} [{}], micro batch {} x {} tokens\n", cfg.name, cfg.model.kind,
             be->name(), dtype_name(be->act_dtype()), B, L);
  if (padded) {
    const auto pads = std::count(mask.begin(), mask.end(), uint8_t(0));
    fmt::print("  padding {}{}: synthetic documents (lengths 1..2048) padded as the loader pads them, {:.1f}% pads\n",
               cfg.data.random_pad_first_block ? "random_pad_first_block " : "",
               cfg.data.pad_to_block_boundary ? "pad_to_block_boundary" : "", 100.0 * double(pads) / double(mask.size()));
  }
  fmt::print("  parameters {:.2f}M (non-embedding {:.2f}M), {:.3f} GFLOP per token (fwd+bwd)\n",
             model.table().total_params() / 1e6, model.table().non_embedding() / 1e6, model.flops_per_token() / 1e9);
  fmt::print("  step {:.1f} ms (median of {}, min {:.1f}, max {:.1f}) | {:.0f} tokens/s | {:.1f} GFLOP/s\n", med * 1e3,
             times.size(), times.front() * 1e3, times.back() * 1e3, tokens_per_s, gflops);
  if (prof) {
    // Per op group, averaged over the timed steps (ops synchronized one by one).
    auto groups = profile_times(*be);
    double total = 0;
    for (auto& [name, g] : groups) total += g.seconds;
    std::vector<std::pair<std::string, OpGroupTime>> sorted(groups.begin(), groups.end());
    std::sort(sorted.begin(), sorted.end(), [](auto& a, auto& b) { return a.second.seconds > b.second.seconds; });
    fmt::print("  time per op group (per step; ops synchronized one by one, so the sum exceeds the step):\n");
    for (auto& [name, g] : sorted)
      fmt::print("    {:<12} {:>8.2f} ms {:>5.1f}%  ({} calls)\n", name, g.seconds / times.size() * 1e3,
                 100.0 * g.seconds / total, g.calls / long(times.size()));
  }
}

void bench_gemm(int M, int N, int K, int reps) {
  std::vector<float> a(size_t(M) * K), b(size_t(K) * N), c(size_t(M) * N);
  Rng r(1);
  for (auto& x : a) x = float(r.normal());
  for (auto& x : b) x = float(r.normal());
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.f, a.data(), K, b.data(), K, 0.f, c.data(), N);
  Timer t;
  for (int i = 0; i < reps; ++i)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.f, a.data(), K, b.data(), K, 0.f, c.data(), N);
  const double s = t.seconds() / reps;
  fmt::print("bench gemm: sgemm {}x{}x{}: {:.2f} ms, {:.1f} GFLOP/s (OpenBLAS, {} threads)\n", M, N, K, s * 1e3,
             2.0 * M * N * K / s / 1e9, openblas_get_num_threads());
}

}  // namespace bt

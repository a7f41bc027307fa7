// `bt bench train|gemm|data|infer|comm`: measured speed, printed (never asserted in tests).
#include <CLI/CLI.hpp>

#include "bench/bench_train.h"
#include "core/commands.h"
#include "data/bench_data.h"

namespace bt {

void add_bench_command(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "measure throughput (training step, GEMM, data loader)");
  bench->require_subcommand(1);

  auto tr = std::make_shared<BenchTrainOptions>();
  CLI::App* train = bench->add_subcommand("train", "tokens/s and GFLOP/s of a training step on random tokens");
  train->add_option("-c,--config", tr->config, "YAML config")->required();
  train->add_option("overrides", tr->overrides, "section.key=value overrides");
  train->add_option("--steps", tr->steps, "timed steps (median reported)");
  train->add_option("--warmup", tr->warmup, "untimed steps first");
  train->callback([tr] { bench_train(*tr); });

  auto gm = std::make_shared<std::array<int, 4>>(std::array<int, 4>{4096, 1024, 256, 10});
  CLI::App* gemm = bench->add_subcommand("gemm", "sgemm GFLOP/s of this machine (the CPU roofline for train)");
  gemm->add_option("-m", (*gm)[0], "rows");
  gemm->add_option("-n", (*gm)[1], "columns");
  gemm->add_option("-k", (*gm)[2], "inner dimension");
  gemm->add_option("--reps", (*gm)[3], "repetitions");
  gemm->callback([gm] { bench_gemm((*gm)[0], (*gm)[1], (*gm)[2], (*gm)[3]); });

  struct DataArgs {
    std::string shards;
    int L = 2048, global_batch = 256, seconds = 3;
  };
  auto da = std::make_shared<DataArgs>();
  CLI::App* data = bench->add_subcommand("data", "loader throughput in tokens/s");
  data->add_option("--data", da->shards, "shard glob (default: a synthetic stream written to a temporary shard)");
  data->add_option("--context-length", da->L, "window length L");
  data->add_option("--global-batch", da->global_batch, "windows per step");
  data->add_option("--seconds", da->seconds, "how long to measure");
  data->callback([da] { bench_data(da->shards, da->L, da->global_batch, da->seconds); });
}

}  // namespace bt

// `bt bench train|gemm|data|infer|comm`: measured speed, printed (never asserted in tests).
#include <CLI/CLI.hpp>

#include "bench/bench_comm.h"
#include "bench/bench_train.h"
#include "bench/commands.h"
#include "data/bench_data.h"
#include "infer/bench_infer.h"

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
  train->add_flag("--profile", tr->profile, "also print the time per op group (GEMM, attention, LayerNorm, ...)");
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

  auto inf = std::make_shared<BenchInferOptions>();
  CLI::App* infer = bench->add_subcommand(
      "infer", "generation throughput (tokens/s, KV cache bytes) of a model, or two side by side with --vs");
  infer->add_option("-c,--config", inf->config, "YAML config of the (first) model")->required();
  infer->add_option("--vs", inf->vs, "YAML config of a second model to compare (e.g. the vanilla baseline)");
  infer->add_option("overrides", inf->overrides, "section.key=value overrides applied to both configs");
  infer->add_option("--batch", inf->batches,
                    "batch sizes to sweep (e.g. --batch 1,4,16); auto: the largest batch that fits the memory")
      ->delimiter(',');
  infer->add_option("--memory", inf->memory_gib, "batch auto: GiB to fit in (default: the device's free memory)");
  infer->add_option("--max-batch", inf->max_batch, "batch auto: the largest batch considered");
  infer->add_flag("!--no-split", inf->split, "skip the profiled run that splits the time per decode step");
  infer->add_option("--prefill-heavy", inf->prefill_heavy, "PROMPT:GEN tokens (default L : L/16, the paper's 2048:128 at L = 2048)");
  infer->add_option("--decode-heavy", inf->decode_heavy, "PROMPT:GEN tokens (default L/16 : L, the paper's 128:2048 at L = 2048)");
  infer->add_option("--settings", inf->settings, "both | prefill | decode");
  infer->add_option("--device", inf->device, "auto | cpu | cuda");
  infer->add_option("--repeats", inf->repeats, "timed repeats per point (the best is reported)");
  infer->add_flag("--markdown", inf->markdown, "also print the results as a markdown table");
  infer->add_option("--json", inf->json, "also write the results to this JSON file (one object per row)");
  infer->callback([inf] { bench_infer(*inf); });

  auto co = std::make_shared<BenchCommOptions>();
  CLI::App* comm = bench->add_subcommand("comm", "all-reduce bandwidth, 1 MiB to 256 MiB buckets (run under mpirun)");
  comm->add_option("--device", co->device, "auto | cpu (MPI) | cuda (NCCL)");
  comm->add_option("--min-mb", co->min_mb, "smallest bucket, MiB");
  comm->add_option("--max-mb", co->max_mb, "largest bucket, MiB");
  comm->add_option("--iters", co->iters, "timed repetitions per size (median reported)");
  comm->callback([co] { bench_comm(*co); });
}

}  // namespace bt

// `bt train --config FILE [section.key=value ...] [--resume auto|PATH] [--init-from FILE]
// [--init-only]`: load, validate, print, write the starting weights, or train. SIGTERM / SIGUSR1
// save a checkpoint and exit 0 (preemption; launch/slurm.sbatch requeues the job).
// BT_STEP_DELAY_MS (tests only) sleeps after every step and before the checkpoint of a stop.
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <iostream>

#include "core/log.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "train/comm.h"
#include "train/commands.h"
#include "train/trainer.h"

namespace bt {

void add_train_command(CLI::App& app) {
  struct Args {
    std::string config;
    std::vector<std::string> overrides;
    bool print_config = false;
    std::string resume;
    std::string init_from;
    bool overwrite = false;
    bool init_only = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("train", "train a Block Transformer or a vanilla model from a YAML config");
  cmd->add_option("-c,--config", args->config,
                  "YAML config (configs/tiny/block_b4.yaml, configs/paper/...); optional with --resume PATH, "
                  "which then uses the checkpoint's config.yaml");
  cmd->add_option("overrides", args->overrides, "overrides: section.key=value (e.g. train.steps=200)");
  cmd->add_flag("--print-config", args->print_config, "print the resolved config and exit");
  cmd->add_option("--resume", args->resume,
                  "continue from a checkpoint: 'auto' (train.out_dir/checkpoints/latest when present, else a fresh "
                  "start) or a checkpoint directory");
  cmd->add_option("--init-from", args->init_from,
                  "start from the weights of a safetensors file in the official PyTorch naming (fine-tuning); "
                  "tensors this model does not use are reported and ignored");
  cmd->add_flag("--overwrite", args->overwrite,
                "start afresh in a train.out_dir that holds an earlier run: deletes its checkpoints, metrics.jsonl and "
                "tensorboard logs first (without it such a run is refused; --resume auto continues it instead)");
  cmd->add_flag("--init-only", args->init_only,
                "build the starting weights (init, --init-from, load_from_vanilla), write them as the step-0 "
                "checkpoint and exit without training");
  cmd->callback([args] {
    Config cfg;
    if (!args->config.empty()) {
      cfg = load_config(args->config, args->overrides);
    } else {
      BT_CHECK(!args->resume.empty() && args->resume != "auto",
               "bt train needs --config FILE (or --resume CHECKPOINT, which uses the checkpoint's config.yaml)");
      const std::string dir = resolve_checkpoint(args->resume);
      cfg = load_config(dir + "/config.yaml", args->overrides);
    }
    if (args->print_config) {
      std::cout << to_yaml(cfg);
      return;
    }
    BT_CHECK(args->resume.empty() || args->init_from.empty(),
             "--resume and --init-from exclude each other: a resumed run continues from its own weights");
    install_stop_signal_handlers();
    // Collectives run where the gradients live: MPI for the CPU backend, NCCL for CUDA.
    auto comm = make_communicator(resolve_device(cfg.train.device));
    TrainOptions opt;
    opt.resume = args->resume;
    opt.init_from = args->init_from;
    if (const char* d = std::getenv("BT_STEP_DELAY_MS"); d && *d) {
      char* end = nullptr;
      const long ms = std::strtol(d, &end, 10);
      BT_CHECK(*end == 0 && ms >= 0 && ms <= 600000, "BT_STEP_DELAY_MS='", d,
               "' is not a number of milliseconds in [0, 600000] (unset it for normal training)");
      opt.step_delay_ms = int(ms);
    }
    opt.overwrite = args->overwrite;
    Trainer trainer(cfg, *comm, opt);
    if (args->init_only) {
      BT_CHECK(args->resume.empty(), "--init-only writes the starting weights of a fresh run; drop --resume");
      const std::string dir = trainer.save_checkpoint();
      if (!dir.empty()) log_info("--init-only: the starting weights are in {}", dir);
      return;
    }
    trainer.run();
    if (stop_requested()) log_info("stopped by signal at step {}; resume with --resume auto", trainer.step());
  });
}

}  // namespace bt

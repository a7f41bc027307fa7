// The training loop (DESIGN 5, 8): data-parallel steps with gradient accumulation, global-norm
// clipping, AdamW with the lr schedule, logging to the console and metrics.jsonl, periodic
// validation. One Trainer per process; ranks talk through a Communicator.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "data/loader.h"
#include "model/backend.h"
#include "model/config.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "train/comm.h"
#include "train/metrics.h"

namespace bt {

struct TrainOptions {
  int64_t stop_after = -1;  // stop (as if preempted) after this many steps in this process; -1: run to the end
  bool quiet = false;       // no console progress lines (tests)
};

class Trainer {
 public:
  Trainer(const Config& cfg, Communicator& comm, TrainOptions opt = {});
  ~Trainer();
  // Trains from the current step to train.steps (or stop_after more steps).
  void run();
  // One optimizer step; returns the mean training loss over the global batch.
  double train_step();
  // Validation loss over eval_batches micro-batches per rank of the val set (from its start).
  LossStats evaluate();

  Model& model() { return *model_; }
  AdamW& optimizer() { return *opt_; }
  Loader& loader() { return *loader_; }
  int64_t step() const { return step_; }
  const std::vector<double>& losses() const { return losses_; }
  double last_grad_norm() const { return last_grad_norm_; }

 private:
  void log_start() const;
  Config cfg_;
  Communicator& comm_;
  TrainOptions topt_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<AdamW> opt_;
  std::unique_ptr<Loader> loader_, val_loader_;
  std::shared_ptr<const TokenStream> train_stream_, val_stream_;
  std::unique_ptr<MetricsWriter> metrics_;  // rank 0 only
  int accum_ = 1;
  int64_t step_ = 0;
  std::vector<double> losses_;
  double last_grad_norm_ = 0;
};

// Number of loss targets in a micro-batch of `rows` windows (pads are never targets).
int64_t count_targets(const ModelConfig& m, const uint8_t* mask, int rows);

}  // namespace bt

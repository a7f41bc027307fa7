// The training loop (docs/design.md §5, 6, 8): data-parallel steps with gradient accumulation, global-norm
// clipping, AdamW with the lr schedule, logging to the console and metrics.jsonl, periodic
// validation, checkpoints (every train.checkpoint_every steps, at the end, and when preempted by
// SIGTERM / SIGUSR1) and exact resume. One Trainer per process; ranks talk through a Communicator.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "data/loader.h"
#include "model/backend.h"
#include "model/config.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "train/comm.h"
#include "train/ddp.h"
#include "train/metrics.h"
#include "train/run_lock.h"
#include "train/tensorboard.h"
#include "train/train_tasks.h"

namespace bt {

struct TrainOptions {
  int64_t stop_after = -1;  // stop (as if preempted: checkpoint saved) after this many steps; -1: run to the end
  bool quiet = false;       // no console progress lines (tests)
  std::string resume;       // "" (fresh run), "auto" (out_dir/checkpoints/latest if present) or a checkpoint path
  std::string init_from;    // a safetensors file in the official naming to start from (fine-tuning)
  int step_delay_ms = 0;    // sleep after every step and before a stop's checkpoint (BT_STEP_DELAY_MS):
                            // tests of preemption stretch a tiny run and its stop
  bool overwrite = false;   // a fresh run may replace an earlier run's checkpoints, metrics and logs in out_dir
};

// SIGTERM / SIGUSR1 (preemption) set a flag that the training loop checks between steps: it saves a
// checkpoint and returns. Installed by `bt train`; tests may call request_stop() instead.
void install_stop_signal_handlers();
bool stop_requested();
void request_stop(bool on = true);

class Trainer {
 public:
  Trainer(const Config& cfg, Communicator& comm, TrainOptions opt = {});
  ~Trainer();
  // Trains from the current step to train.stop_step (when set, else train.steps; or stop_after
  // more steps), under the lr schedule of train.steps.
  void run();
  // One optimizer step; returns the mean training loss over the global batch.
  double train_step();
  // Validation loss over eval_batches micro-batches per rank of the val set (from its start).
  LossStats evaluate();
  // Writes a checkpoint of the current step under out_dir/checkpoints (rank 0 writes; every rank
  // must call it). Returns the directory ("" on other ranks or without out_dir).
  std::string save_checkpoint();
  // Restores weights, optimizer moments and steps, loader position, RNG and step from a checkpoint.
  void restore(const std::string& checkpoint_dir);
  // Loads official-named weights from a safetensors file, or a checkpoint directory's
  // model.safetensors (extras are reported and ignored).
  void init_from(const std::string& safetensors_file_or_checkpoint);
  // load_from_vanilla (model/uptrain.h): the block model from the configured vanilla checkpoint.
  void uptrain();
  std::string checkpoint_root() const;
  // Why run() returned: finished train.steps, stop_after reached, or a stop signal.
  bool stopped_early() const { return stopped_early_; }

  Model& model() { return *model_; }
  AdamW& optimizer() { return *opt_; }
  Loader& loader() { return *loader_; }
  int64_t step() const { return step_; }
  int64_t tokens_seen() const { return tokens_seen_; }
  const std::vector<double>& losses() const { return losses_; }
  double last_grad_norm() const { return last_grad_norm_; }

 private:
  void log_start() const;
  void evaluate_tasks();
  void sync_weights();
  size_t allocated_bytes() const;
  void plan_memory(size_t model_bytes);
  struct MemoryPlan {
    size_t fixed = 0, per_sequence = 0, capacity = 0;
  } mem_;
  static size_t bucket_elems();
  void prepare_out_dir_for(bool fresh);
  void check_tokenizers(const std::string& resume_dir) const;
  void check_finite_weights(const float* params, const char* what) const;
  Config cfg_;
  Communicator& comm_;
  TrainOptions topt_;
  std::unique_ptr<RunLock> lock_;  // rank 0 with an out_dir: held for the Trainer's life
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<AdamW> opt_;
  std::unique_ptr<Loader> loader_, val_loader_;
  std::shared_ptr<const TokenStream> train_stream_, val_stream_;
  std::unique_ptr<GradReducer> reducer_;  // data parallel without ZeRO
  std::unique_ptr<ZeroShard> zero_;       // train.zero = 1 on several ranks
  std::unique_ptr<MetricsWriter> metrics_;  // rank 0 only
  std::unique_ptr<TensorBoardWriter> tb_;    // rank 0 only: out_dir/tensorboard
  std::unique_ptr<TrainTaskEval> tasks_;     // rank 0 only: train.eval_tasks
  int accum_ = 1;
  int64_t step_ = 0;
  int64_t tokens_seen_ = 0;    // non-pad tokens consumed by training steps, all ranks
  int64_t last_saved_step_ = -1;
  bool stopped_early_ = false;
  Rng rng_;                    // trainer-level randomness (saved in checkpoints)
  std::vector<double> losses_;
  double last_grad_norm_ = 0;
  double peak_flops_ = 0;  // dense bf16 peak of the GPU (0: unknown, MFU not shown)
};

// Number of loss targets in a micro-batch of `rows` windows (pads are never targets).
int64_t count_targets(const ModelConfig& m, const uint8_t* mask, int rows);

}  // namespace bt

// Zero-shot tasks during training (train.eval_tasks, every train.eval_tasks_every steps and at the
// last step): the official ZeroshotEvalCallback, scored exactly as `bt eval --task` scores a
// checkpoint (infer/tasks, infer/lm_scorer; docs/evaluation.md), on rank 0, with the weights the
// training model holds at that step. Block models use the context mode their data implies: pad
// when trained with data.random_pad_first_block, else nopad (what the official eval config asks
// for checkpoints trained without the front pads).
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "infer/lm_scorer.h"
#include "infer/tasks/tasks.h"
#include "model/config.h"
#include "model/model.h"

namespace bt {

class TrainTaskEval {
 public:
  // Checks the task names and loads their files (data.task_data) and the tokenizer of the
  // training shards up front, so that a typo fails before the first step. eos_id: the data's EOS
  // (resolves the config's special tokens as the training model's).
  TrainTaskEval(const Config& cfg, int eos_id);
  ~TrainTaskEval();
  // Scores every task with the current weights of `trained` (copied into a model of the task
  // windows on the same backend, built at the first call and kept). Returns
  // {"TASK": {"METRIC": value, ...}, ...} (no standard errors: bootstrap off, as a training
  // callback only logs the values) and the seconds it took in `seconds`.
  nlohmann::json run(Model& trained, double* seconds = nullptr);
  // One line per task: "lambada_openai acc 0.3120 perplexity 80.11".
  static std::string summary(const nlohmann::json& results);

 private:
  Config cfg_;
  ModelConfig model_cfg_;  // the window model's config (context_length: the scorer window)
  std::vector<std::string> names_;
  std::vector<LoadedTask> data_;
  std::unique_ptr<Tokenizer> tok_;
  BlockContext mode_ = BlockContext::pad;
  std::unique_ptr<Model> model_;
  std::vector<float> weights_;  // host copy of the weights, one per run
};

}  // namespace bt

// `bt eval --task NAME[,NAME...] --task-data DIR`: zero-shot tasks scored as lm-evaluation-harness
// scores them (infer/tasks/), for block and vanilla checkpoints, on any backend. cmd_eval.cpp
// parses the options and calls run_task_eval. See docs/evaluation.md.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace bt {

struct TaskEvalArgs {
  std::string ckpt, config, device = "auto", precision, tokenizer;
  std::vector<std::string> overrides;
  std::string tasks, task_data, output;
  std::string context_mode = "pad";  // block models: pad | nopad
  int batch_size = 0;                // rows of max_length per forward (default: train.micro_batch)
  int max_length = 0;                // default: model.context_length
  int pad_id = -1;                   // block models' pad token (default: the tokenizer's EOS)
  double limit = 0;
  int64_t bootstrap_iters = 100000;
  bool log_samples = false, json = false, share_context = true;
  bool quiet = false;  // print nothing (bt eval --run gathers the results)
};

// Scores the tasks, prints the table (or the JSON with json) and returns the results JSON.
nlohmann::json run_task_eval(const TaskEvalArgs& a);

}  // namespace bt

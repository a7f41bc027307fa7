// Runs one task: documents -> requests (lm_requests.h) -> LMScorer -> per-document metrics ->
// aggregates, as lm-evaluation-harness's evaluator does for a zero-shot task; and writes the
// results in the harness's layout (results JSON, samples, the printed table).
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "infer/lm_scorer.h"
#include "infer/tasks/metrics.h"
#include "infer/tasks/tasks.h"

namespace bt {

struct TaskEvalOptions {
  double limit = 0;                 // 0: every document; >= 1: the first N; in (0, 1): that fraction
  int64_t bootstrap_iters = 100000; // the harness's default; 0: no standard errors
  bool samples = false;             // keep per-document records (TaskResult::samples)
};

struct TaskResult {
  std::string name;
  std::string data_path;
  int64_t docs_total = 0, docs_used = 0;
  int64_t requests = 0;
  double seconds = 0;               // scoring time (model calls), without loading and metrics
  std::vector<std::pair<std::string, Aggregate>> metrics;  // in the task's metric order
  nlohmann::json samples = nlohmann::json::array();        // one object per document
};

// Documents of `task` must be loaded already (load_task). progress(done, total) as LMScorer's.
TaskResult evaluate_task(const std::string& task, const LoadedTask& data, LMScorer& scorer, const Tokenizer& tok,
                         const TaskEvalOptions& o);

// The harness's results layout: {"results": {task: {"alias", "metric,none", "metric_stderr,none"}},
// "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples"}; the caller
// adds "config" and run information.
nlohmann::json results_json(const std::vector<TaskResult>& results);
// The harness's make_table: | Tasks | Version | Filter | n-shot | Metric | Value | | Stderr |.
std::string results_table(const std::vector<TaskResult>& results);

}  // namespace bt

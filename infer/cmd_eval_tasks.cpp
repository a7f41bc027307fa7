// `bt eval --task ...`: loads the task data, the model (sized for the task windows) and its
// tokenizer, scores every task, prints the harness's table and writes its results JSON. See
// eval_tasks.h and docs/evaluation.md.
#include <fmt/core.h>

#include <ctime>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "core/progress.h"
#include "core/timer.h"
#include "data/shard.h"
#include "infer/eval_tasks.h"
#include "infer/lm_scorer.h"
#include "infer/load.h"
#include "infer/tasks/evaluate.h"

namespace bt {

namespace fs = std::filesystem;
using nlohmann::json;

nlohmann::json run_task_eval(const TaskEvalArgs& a) {
  const bool say = !a.json && !a.quiet;  // the progress and the table
  // Everything that can be checked without the model first.
  const std::vector<std::string> tasks = parse_task_list(a.tasks);
  BT_CHECK(!a.task_data.empty(), "--task needs --task-data DIR (the directory with the tasks' JSONL files)");
  BT_CHECK(fs::is_directory(a.task_data), "--task-data ", a.task_data, ": not a directory");
  BT_CHECK(a.limit >= 0, "--limit must be >= 0 (a count, or a fraction below 1), got ", a.limit);
  BT_CHECK(a.bootstrap_iters >= 0, "--bootstrap-iters must be >= 0, got ", a.bootstrap_iters);
  BT_CHECK(a.max_length >= 0, "--max-length must be positive, got ", a.max_length);
  BT_CHECK(a.batch_size >= 0, "--batch-size must be positive, got ", a.batch_size);
  BT_CHECK(!a.log_samples || !a.output.empty(), "--log-samples needs --output (the samples go next to the results)");
  const BlockContext mode = parse_block_context(a.context_mode);
  std::vector<LoadedTask> data;
  for (const auto& t : tasks) data.push_back(load_task(t, a.task_data));

  InferenceModel im = open_inference_model(a.ckpt, a.config, a.overrides, a.device, a.precision);
  ModelConfig& mc = im.config.model;
  std::unique_ptr<Tokenizer> tok = find_tokenizer(im, a.tokenizer);
  BT_CHECK(tok, "no tokenizer for ", a.ckpt, ": give --tokenizer byte|spm:PATH|DATA_DIR");
  BT_CHECK(tok->vocab_size() <= mc.vocab_size, "the tokenizer (", tok->name(), ") has ", tok->vocab_size(),
           " ids but model.vocab_size is ", mc.vocab_size, ": not this model's tokenizer");
  const int trained_length = mc.context_length;
  const int max_length = a.max_length > 0 ? a.max_length : trained_length;
  if (mc.is_block() && mode == BlockContext::pad && !im.config.data.random_pad_first_block && !a.quiet)
    log_warn(
        "--context-mode pad on a block model trained without data.random_pad_first_block: its first "
        "block never held pads in training (the official code evaluates such checkpoints with no-pad)");
  // The model holds whole task windows: max_length tokens of input (plus the left pads of the
  // pad mode), any number of rows up to batch x window tokens per forward.
  mc.context_length = scorer_window(mc, max_length, mode);
  const int B = a.batch_size > 0 ? a.batch_size : std::max(1, im.config.train.micro_batch);
  load_inference_weights(im, B);
  if (!im.ignored.empty() && !a.quiet)
    log_warn("{}: ignored {} tensors this model does not use: {}", im.weights, im.ignored.size(),
             summarize_names(im.ignored));

  ScorerOptions so;
  so.max_length = max_length;
  so.block_context = mode;
  so.pad_id = a.pad_id >= 0 ? a.pad_id : tok->eos_id();
  so.share_context = a.share_context;
  LMScorer scorer(*im.model, so);
  TaskEvalOptions to;
  to.limit = a.limit;
  to.bootstrap_iters = a.bootstrap_iters;
  to.samples = a.log_samples;

  const std::string model_name = im.dir.empty() ? im.weights : im.dir;
  if (say)
    log_info("eval {}: {} model, {} backend, max length {}{}, {} x {} tokens per forward", model_name, mc.kind,
             im.backend->name(), max_length,
             mc.is_block() ? fmt::format(", context mode {}", to_string(mode)) : std::string(), B, mc.context_length);
  Timer total_timer;
  std::vector<TaskResult> results;
  for (size_t i = 0; i < tasks.size(); ++i) {
    // On a terminal only: each task prints its own summary line.
    ProgressBar bar(tasks[i], "req", 0, {.enabled = say, .log_every = 0, .clear_on_finish = true});
    scorer.set_progress([&bar](int64_t done, int64_t total) {
      bar.set_total(uint64_t(total));
      bar.update(uint64_t(done));
    });
    TaskResult r = evaluate_task(tasks[i], data[i], scorer, *tok, to);
    bar.finish(0);
    scorer.set_progress(nullptr);
    if (say)
      log_info("{}: {} of {} documents, {} requests in {:.1f} s ({:.1f} requests/s) from {}", r.name, r.docs_used,
               r.docs_total, r.requests, r.seconds, r.requests / std::max(r.seconds, 1e-9), r.data_path);
    results.push_back(std::move(r));
  }

  const ScorerStats& st = scorer.stats();
  double scoring_seconds = 0;
  for (const auto& r : results) scoring_seconds += r.seconds;
  if (st.dropped_tokens > 0 && say)
    log_warn(
        "context mode nopad: {} continuation tokens in the first block of their row were not scored "
        "({} requests had none left and scored 0), as the official no-pad evaluation drops them",
        st.dropped_tokens, st.unscorable);

  json j = results_json(results);
  j["config"] = {{"model", "blockformer"},
                 {"model_args", fmt::format("ckpt={}", model_name)},
                 {"model_kind", mc.kind},
                 {"batch_size", B},
                 {"device", im.backend->name()},
                 {"limit", a.limit > 0 ? json(a.limit) : json(nullptr)},
                 {"bootstrap_iters", a.bootstrap_iters},
                 {"max_length", max_length},
                 {"context_mode", mc.is_block() ? json(to_string(mode)) : json(nullptr)},
                 {"pad_id", mc.is_block() ? json(so.pad_id) : json(nullptr)},
                 {"share_context", !mc.is_block() && a.share_context},
                 {"tokenizer", tok->name()}};
  json per_task = json::object();
  for (const auto& r : results)
    per_task[r.name] = {{"requests", r.requests},
                        {"seconds", r.seconds},
                        {"requests_per_second", r.requests / std::max(r.seconds, 1e-9)}};
  j["timing"] = {{"tasks", per_task},
                 {"seconds", total_timer.seconds()},
                 {"requests", st.requests},
                 {"requests_per_second", st.requests / std::max(scoring_seconds, 1e-9)},
                 {"forwards", st.forwards},
                 {"rows", st.rows},
                 {"positions", st.positions},
                 {"tokens", st.tokens},
                 {"shared_context_requests", st.shared_requests},
                 {"nopad_dropped_tokens", st.dropped_tokens},
                 {"nopad_unscorable_requests", st.unscorable}};
  j["date"] = static_cast<double>(std::time(nullptr));

  if (!a.output.empty()) {
    fs::path out = a.output;
    if (fs::is_directory(out) || out.extension() != ".json") {
      fs::create_directories(out);
      out /= "results.json";
    } else if (out.has_parent_path()) {
      fs::create_directories(out.parent_path());
    }
    write_file_atomic(out.string(), j.dump(2) + "\n");
    if (a.log_samples)
      for (const auto& r : results) {
        std::string lines;
        for (const auto& s : r.samples) lines += s.dump() + "\n";
        write_file_atomic((out.parent_path() / ("samples_" + r.name + ".jsonl")).string(), lines);
      }
    if (say) log_info("results written to {}", out.string());
  }
  if (a.json) {
    fmt::print("{}\n", j.dump());
  } else if (!a.quiet) {
    fmt::print("{}", results_table(results));
    log_info("{} requests in {:.1f} s: {:.1f} requests/s, {} forwards, {:.2f} positions computed per request token",
             st.requests, scoring_seconds, st.requests / std::max(scoring_seconds, 1e-9), st.forwards,
             st.tokens ? double(st.positions) / double(st.tokens) : 0.0);
  }
  return j;
}

}  // namespace bt

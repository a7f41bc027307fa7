// Zero-shot tasks during training: see train_tasks.h.
#include "train/train_tasks.h"

#include "core/error.h"
#include "core/log.h"
#include "core/timer.h"
#include "infer/tasks/evaluate.h"

namespace bt {

TrainTaskEval::TrainTaskEval(const Config& cfg, int eos_id) : cfg_(cfg) {
  const TrainConfig& t = cfg.train;
  names_ = parse_task_list(t.eval_tasks);
  for (const auto& n : names_) data_.push_back(load_task(n, cfg.data.task_data));
  BT_CHECK(!cfg.data.train.empty(), "train.eval_tasks needs the text of the tasks turned into tokens: data.train must "
           "be shards made by bt prepare with a tokenizer (synthetic data has none)");
  tok_ = load_tokenizer_for_shards(cfg.data.train);
  BT_CHECK(tok_, "train.eval_tasks: the shards of data.train '", cfg.data.train, "' carry no tokenizer (bare token "
           "ids); zero-shot tasks need the tokenizer that made them");
  BT_CHECK(tok_->vocab_size() <= cfg.model.vocab_size, "train.eval_tasks: the tokenizer of data.train (",
           tok_->name(), ") has ", tok_->vocab_size(), " ids but model.vocab_size is ", cfg.model.vocab_size);
  const ModelConfig& m = cfg.model;
  mode_ = m.is_block() && !cfg.data.random_pad_first_block ? BlockContext::nopad : BlockContext::pad;
  model_cfg_ = with_token_ids(m, eos_id);
  model_cfg_.context_length = scorer_window(m, m.context_length, mode_);
}

TrainTaskEval::~TrainTaskEval() = default;

nlohmann::json TrainTaskEval::run(Model& trained, double* seconds) {
  Timer timer;
  if (!model_) model_ = std::make_unique<Model>(model_cfg_, trained.backend(), cfg_.train.micro_batch);
  weights_.resize(trained.table().total());
  trained.get_params(weights_.data(), DType::f32);
  model_->set_params(weights_.data(), DType::f32);

  ScorerOptions so;
  so.max_length = cfg_.model.context_length;
  so.block_context = mode_;
  so.pad_id = tok_->eos_id();
  LMScorer scorer(*model_, so);
  TaskEvalOptions to;
  to.limit = cfg_.train.eval_tasks_limit;
  to.bootstrap_iters = 0;
  nlohmann::json out = nlohmann::json::object();
  for (size_t i = 0; i < names_.size(); ++i) {
    const TaskResult r = evaluate_task(names_[i], data_[i], scorer, *tok_, to);
    nlohmann::json& j = out[r.name];
    for (const auto& [metric, agg] : r.metrics) j[metric] = agg.value;
  }
  if (seconds) *seconds = timer.seconds();
  return out;
}

std::string TrainTaskEval::summary(const nlohmann::json& results) {
  std::string s;
  for (const auto& [task, metrics] : results.items()) {
    s += (s.empty() ? "" : " | ") + task;
    for (const auto& [metric, v] : metrics.items()) s += fmt::format(" {} {:.4f}", metric, v.get<double>());
  }
  return s;
}

}  // namespace bt

// The training loop: see trainer.h.
#include "train/trainer.h"

#include <fmt/core.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/log.h"
#include "core/timer.h"
#include "optim/lr_schedule.h"

namespace bt {

namespace fs = std::filesystem;

int64_t count_targets(const ModelConfig& m, const uint8_t* mask, int rows) {
  const int L = m.context_length;
  const int first = m.is_block() ? m.block_length : 1;  // block 0 / token 0 are never targets
  int64_t n = 0;
  for (int b = 0; b < rows; ++b)
    for (int p = first; p < L; ++p) n += mask ? (mask[size_t(b) * L + p] != 0) : 1;
  return n;
}

Trainer::Trainer(const Config& cfg, Communicator& comm, TrainOptions opt) : cfg_(cfg), comm_(comm), topt_(opt) {
  const TrainConfig& t = cfg_.train;
  const int world = comm_.world();
  BT_CHECK(t.global_batch % (t.micro_batch * world) == 0, "train.global_batch (", t.global_batch,
           ") must be divisible by train.micro_batch (", t.micro_batch, ") x ranks (", world, ")");
  accum_ = t.global_batch / (t.micro_batch * world);

  // Every rank must run the same config.
  std::vector<uint64_t> hashes(world);
  comm_.all_gather_host_u64(config_hash(cfg_), hashes.data());
  for (int r = 0; r < world; ++r)
    BT_CHECK(hashes[r] == hashes[0], "rank ", r, " runs a different config than rank 0 (config hash ", hashes[r],
             " vs ", hashes[0], "): launch every rank with the same file and overrides");

  BackendOptions bo;
  bo.device = t.device;
  bo.precision = t.precision;
  bo.cuda_device = comm_.local_rank();
  backend_ = make_backend(bo);
  model_ = std::make_unique<Model>(cfg_.model, *backend_, t.micro_batch);
  model_->init(t.seed);
  opt_ = std::make_unique<AdamW>(*model_, cfg_.optim);

  // Data: shards, or a synthetic stream when no shards are configured.
  if (!cfg_.data.train.empty()) {
    train_stream_ = std::make_shared<const TokenStream>(read_shards(cfg_.data.train, cfg_.model.vocab_size));
  } else {
    BT_CHECK(!cfg_.data.synthetic.empty(), "data.train is empty: give a shard glob (or data.synthetic for tests)");
    train_stream_ = std::make_shared<const TokenStream>(
        synthetic_stream(cfg_.data.synthetic, cfg_.model.vocab_size, t.seed));
  }
  LoaderOptions lo;
  lo.context_length = cfg_.model.context_length;
  lo.block_length = cfg_.model.is_block() ? cfg_.model.block_length : 1;
  lo.global_batch = t.global_batch;
  lo.micro_batch = t.micro_batch;
  lo.rank = comm_.rank();
  lo.world = world;
  lo.seed = t.seed;
  lo.random_pad_first_block = cfg_.data.random_pad_first_block;
  lo.pad_to_block_boundary = cfg_.data.pad_to_block_boundary;
  lo.vocab_size = cfg_.model.vocab_size;
  loader_ = std::make_unique<Loader>(train_stream_, lo);
  if (!cfg_.data.val.empty()) {
    val_stream_ = std::make_shared<const TokenStream>(read_shards(cfg_.data.val, cfg_.model.vocab_size));
    LoaderOptions vo = lo;
    vo.global_batch = t.micro_batch * world;
    vo.shuffle = false;
    vo.prefetch = false;
    val_loader_ = std::make_unique<Loader>(val_stream_, vo);
  }

  if (comm_.rank() == 0 && !t.out_dir.empty()) {
    fs::create_directories(t.out_dir);
    std::ofstream(fs::path(t.out_dir) / "config.yaml") << to_yaml(cfg_);
    metrics_ = std::make_unique<MetricsWriter>((fs::path(t.out_dir) / "metrics.jsonl").string());
  }
  if (!topt_.quiet) log_start();
}

Trainer::~Trainer() = default;

void Trainer::log_start() const {
  const ParamTable& tb = model_->table();
  const ModelConfig& m = cfg_.model;
  log_info("blockformer: {} ({} model) on {} x {} [{}], world {}", cfg_.name, m.kind, comm_.world(),
           backend_->name(), dtype_name(backend_->act_dtype()), comm_.world());
  log_info("parameters: total {} | non-embedding {}", format_count(double(tb.total_params())),
           format_count(double(tb.non_embedding())));
  if (m.is_block())
    log_info("  embedder {} | block decoder {} | prefix expansion {} | token decoder {}",
             format_count(double(tb.count(ParamPart::embedder))), format_count(double(tb.count(ParamPart::block_decoder))),
             format_count(double(tb.count(ParamPart::prefix))), format_count(double(tb.count(ParamPart::token_decoder))));
  log_info("batch: global {} = micro {} x accum {} x ranks {} | {} tokens/step | {} steps", cfg_.train.global_batch,
           cfg_.train.micro_batch, accum_, comm_.world(),
           format_count(double(cfg_.train.global_batch) * m.context_length), cfg_.train.steps);
  log_info("data: {} tokens in {} windows/epoch", format_count(double(train_stream_->tokens.size())),
           loader_->windows_per_epoch());
}

double Trainer::train_step() {
  StepBatch sb = loader_->next();
  double count = 0;
  for (const MicroBatch& mb : sb.micro) count += double(count_targets(cfg_.model, mb.mask.data(), mb.rows));
  comm_.all_reduce_host(&count, 1, ReduceOp::sum);
  BT_CHECK(count > 0, "step ", step_, ": the global batch has no loss targets (all padding?)");

  model_->zero_grads();
  LossStats st;
  for (const MicroBatch& mb : sb.micro) {
    st.add(model_->forward(mb.tokens.data(), mb.mask.data(), mb.rows, /*with_grad=*/true, 1.0 / count));
    model_->backward();
  }
  if (comm_.world() > 1) comm_.all_reduce(model_->grads(), ReduceOp::sum);
  double sums[2] = {st.loss_sum, double(st.targets)};
  comm_.all_reduce_host(sums, 2, ReduceOp::sum);

  last_grad_norm_ = grad_norm(*backend_, model_->grads());
  const double f = clip_factor(last_grad_norm_, cfg_.optim.grad_clip);
  if (f != 1.0) backend_->scale(model_->grads(), f);
  const double lr = lr_at(cfg_.optim, step_, cfg_.train.steps);
  opt_->step(lr);
  ++step_;
  const double loss = sums[0] / sums[1];
  losses_.push_back(loss);
  BT_CHECK(std::isfinite(loss), "step ", step_, ": the loss is not finite (", loss,
           "); lower optim.lr or check the data");
  return loss;
}

LossStats Trainer::evaluate() {
  LossStats total;
  if (!val_loader_) return total;
  val_loader_->set_state(LoaderState{});
  for (int i = 0; i < cfg_.train.eval_batches; ++i) {
    StepBatch sb = val_loader_->next();
    for (const MicroBatch& mb : sb.micro) total.add(model_->forward(mb.tokens.data(), mb.mask.data(), mb.rows));
  }
  std::vector<double> buf;
  buf.push_back(total.loss_sum);
  buf.push_back(double(total.targets));
  for (size_t i = 0; i < total.pos_sum.size(); ++i) {
    buf.push_back(total.pos_sum[i]);
    buf.push_back(double(total.pos_count[i]));
  }
  comm_.all_reduce_host(buf.data(), buf.size(), ReduceOp::sum);
  total.loss_sum = buf[0];
  total.targets = int64_t(buf[1]);
  for (size_t i = 0; i < total.pos_sum.size(); ++i) {
    total.pos_sum[i] = buf[2 + 2 * i];
    total.pos_count[i] = int64_t(buf[3 + 2 * i]);
  }
  return total;
}

void Trainer::run() {
  const TrainConfig& t = cfg_.train;
  const double tokens_per_step = double(t.global_batch) * cfg_.model.context_length;
  const double flops_per_token = model_->flops_per_token();
  Timer total, window;
  int64_t window_steps = 0;
  const int64_t start = step_;
  while (step_ < t.steps) {
    if (topt_.stop_after >= 0 && step_ - start >= topt_.stop_after) break;
    const double loss = train_step();
    ++window_steps;
    const bool last = step_ == t.steps;
    if (step_ % t.log_every == 0 || last || step_ == 1) {
      const double dt = window.seconds() / double(window_steps);
      const double tps = tokens_per_step / dt;
      const double eta = dt * double(t.steps - step_);
      const double lr = lr_at(cfg_.optim, step_ - 1, t.steps);
      if (!topt_.quiet)
        log_info("step {:>6}/{} | loss {:.4f} | lr {:.2e} | gnorm {:.3f} | {} tok/s | {:.1f} GFLOP/s | ETA {}", step_,
                 t.steps, loss, lr, last_grad_norm_, format_count(tps), tps * flops_per_token / 1e9,
                 format_duration(eta));
      if (metrics_)
        metrics_->write({{"step", step_}, {"loss", loss}, {"lr", lr}, {"grad_norm", last_grad_norm_},
                        {"tokens_per_s", tps}, {"tokens", double(step_) * tokens_per_step},
                        {"elapsed_s", total.seconds()}});
      window.reset();
      window_steps = 0;
    }
    if (val_loader_ && (step_ % t.eval_every == 0 || last)) {
      LossStats v = evaluate();
      std::vector<double> by_pos;
      std::string pos_str;
      for (size_t i = 0; i < v.pos_sum.size(); ++i) {
        by_pos.push_back(v.pos_count[i] ? v.pos_sum[i] / double(v.pos_count[i]) : 0.0);
        pos_str += fmt::format("{}{:.3f}", i ? " " : "", by_pos.back());
      }
      if (!topt_.quiet)
        log_info("eval  {:>6} | val_loss {:.4f} | ppl {:.2f}{}", step_, v.mean(), std::exp(v.mean()),
                 cfg_.model.is_block() ? " | by position " + pos_str : "");
      if (metrics_)
        metrics_->write({{"step", step_}, {"val_loss", v.mean()}, {"val_loss_by_position", by_pos}});
      window.reset();
      window_steps = 0;
    }
  }
}

}  // namespace bt

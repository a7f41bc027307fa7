// The training loop: see trainer.h.
#include "train/trainer.h"

#include <fmt/core.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <thread>

#include "core/format.h"
#include "core/log.h"
#include "core/timer.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "model/checkpoint.h"
#include "model/uptrain.h"
#include "optim/lr_schedule.h"
#include "train/device_info.h"
#include "model/cuda/cuda_backend.h"

namespace bt {

namespace fs = std::filesystem;

namespace {
volatile std::sig_atomic_t g_stop = 0;
extern "C" void on_stop_signal(int) { g_stop = 1; }
}  // namespace

void install_stop_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
}
bool stop_requested() { return g_stop != 0; }
void request_stop(bool on) { g_stop = on ? 1 : 0; }

int64_t count_targets(const ModelConfig& m, const uint8_t* mask, int rows) {
  const int L = m.context_length;
  const int first = m.is_block() ? m.block_length : 1;  // block 0 / token 0 are never targets
  int64_t n = 0;
  for (int b = 0; b < rows; ++b)
    for (int p = first; p < L; ++p) n += mask ? (mask[size_t(b) * L + p] != 0) : 1;
  return n;
}

Trainer::Trainer(const Config& cfg, Communicator& comm, TrainOptions opt)
    : cfg_(cfg), comm_(comm), topt_(opt), rng_(cfg.train.seed, hash_name("trainer")) {
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
  // One run per out_dir: rank 0 (the only writer) holds its lock for the life of the run.
  if (comm_.rank() == 0 && !t.out_dir.empty()) lock_ = std::make_unique<RunLock>(t.out_dir);

  // Data: shards (read lazily, train_stream_ stays null), or a synthetic stream in memory when no
  // shards are configured.
  if (cfg_.data.train.empty()) {
    BT_CHECK(!cfg_.data.synthetic.empty(), "data.train is empty: give a shard glob (or data.synthetic for tests)");
    train_stream_ = std::make_shared<const TokenStream>(
        synthetic_stream(cfg_.data.synthetic, cfg_.model.vocab_size, t.seed));
  }
  LoaderOptions lo;
  lo.verify_checksums = cfg_.data.verify_checksums;
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
  lo.pad_id = cfg_.model.pad_token_id;  // -1: the data's EOS
  loader_ = train_stream_ ? std::make_unique<Loader>(train_stream_, lo)
                         : std::make_unique<Loader>(open_shard_source(cfg_.data.train, lo), lo);
  if (!cfg_.data.val.empty()) {
    LoaderOptions vo = lo;
    vo.global_batch = t.micro_batch * world;
    vo.shuffle = false;
    vo.prefetch = false;
    val_loader_ = std::make_unique<Loader>(open_shard_source(cfg_.data.val, vo), vo);
  }

  BackendOptions bo;
  bo.device = t.device;
  bo.precision = t.precision;
  bo.cuda_device = comm_.local_rank();
  backend_ = make_backend(bo);
  peak_flops_ = device_peak_flops(*backend_, bo.cuda_device);
  const size_t before_model = allocated_bytes();
  const int shard_parts = world > 1 && t.zero == 1 ? world : 1;  // ZeRO-1 pads the flat buffers
  // The special tokens the config leaves at -1 are the data's EOS (docs/configs.md).
  model_ = std::make_unique<Model>(with_token_ids(cfg_.model, loader_->source().eos_id()), *backend_, t.micro_batch,
                                   shard_parts);
  const size_t model_bytes = allocated_bytes() - before_model;
  model_->init(t.seed);
  comm_.set_compute_stream(cuda_stream(*backend_));
  // Data parallelism: ZeRO-1 shards the optimizer over ranks; otherwise gradients are summed in
  // buckets that start during the backward pass.
  if (world > 1 && t.zero == 1) {
    zero_ = std::make_unique<ZeroShard>(comm_, model_->table().total());
    opt_ = std::make_unique<AdamW>(*model_, cfg_.optim, zero_->begin(), zero_->end());
  } else {
    opt_ = std::make_unique<AdamW>(*model_, cfg_.optim);
    if (world > 1) reducer_ = std::make_unique<GradReducer>(comm_, model_->grads(), bucket_elems());
  }

  // Where to start from: a checkpoint (resume), official weights (fine-tuning), or the init.
  std::string resume_dir;
  if (topt_.resume == "auto") {
    BT_CHECK(!t.out_dir.empty(), "--resume auto needs train.out_dir (checkpoints live in out_dir/checkpoints)");
    resume_dir = find_latest_checkpoint(checkpoint_root());
    if (resume_dir.empty() && !topt_.quiet) log_info("resume auto: no checkpoint in {} yet, starting fresh", checkpoint_root());
  } else if (!topt_.resume.empty()) {
    resume_dir = resolve_checkpoint(topt_.resume);
  }
  check_tokenizers(resume_dir);
  if (lock_) prepare_out_dir_for(resume_dir.empty());
  if (!resume_dir.empty()) {
    restore(resume_dir);
  } else {
    BT_CHECK(topt_.init_from.empty() || !cfg_.load_from_vanilla.enable,
             "--init-from and load_from_vanilla.enable exclude each other: both set the starting weights");
    if (!topt_.init_from.empty()) init_from(topt_.init_from);
    if (cfg_.load_from_vanilla.enable) uptrain();
  }

  if (world > 1) sync_weights();

  // Zero-shot tasks during training: the task files and the tokenizer are checked now.
  if (comm_.rank() == 0 && !t.eval_tasks.empty())
    tasks_ = std::make_unique<TrainTaskEval>(cfg_, loader_->source().eos_id());

  if (comm_.rank() == 0 && !t.out_dir.empty()) {
    write_file_atomic((fs::path(t.out_dir) / "config.yaml").string(), to_yaml(cfg_));
    metrics_ = std::make_unique<MetricsWriter>((fs::path(t.out_dir) / "metrics.jsonl").string());
    tb_ = std::make_unique<TensorBoardWriter>((fs::path(t.out_dir) / "tensorboard").string());
  }
  if (!topt_.quiet) log_start();
  plan_memory(model_bytes);
}

void Trainer::prepare_out_dir_for(bool fresh) {
  // Under the lock no other writer can be at work here: every leftover of an interrupted save
  // goes, before this run writes anything (a run restarted on a full disk frees that space first).
  clean_checkpoint_leftovers(checkpoint_root(), true);
  if (!fresh) return;
  const auto existing = list_checkpoints(checkpoint_root());
  if (existing.empty()) return;
  BT_CHECK(topt_.overwrite, cfg_.train.out_dir, " holds the checkpoints of an earlier run (up to ",
           existing.back().second, "): continue it with --resume auto, start over with --overwrite (deletes its "
           "checkpoints, metrics.jsonl and tensorboard logs), or set another train.out_dir");
  if (!topt_.quiet)
    log_warn("--overwrite: deleting the earlier run in {} (checkpoints up to step {}, metrics.jsonl, tensorboard)",
             cfg_.train.out_dir, existing.back().first);
  std::error_code ec;
  fs::remove_all(checkpoint_root(), ec);
  fs::remove(fs::path(cfg_.train.out_dir) / "metrics.jsonl", ec);
  fs::remove_all(fs::path(cfg_.train.out_dir) / "tensorboard", ec);
}

namespace {
// The checkpoint `latest` points at, or "" (also when it cannot be resolved): for error messages.
std::string latest_checkpoint_or_none(const std::string& root) {
  if (root.empty()) return "";
  try {
    return find_latest_checkpoint(root);
  } catch (const Error&) {
    return "";
  }
}

}  // namespace

void Trainer::check_tokenizers(const std::string& resume_dir) const {
  if (cfg_.data.train.empty()) return;  // synthetic data has no tokenizer
  const TokenSource& tr = loader_->source();
  if (val_loader_) {
    const TokenSource& va = val_loader_->source();
    BT_CHECK(va.tokenizer() == tr.tokenizer() && va.vocab_size() == tr.vocab_size() && va.eos_id() == tr.eos_id(),
             "data.val '", cfg_.data.val, "' was made with tokenizer ", va.tokenizer(), " (vocab ", va.vocab_size(),
             ") but data.train '", cfg_.data.train, "' with ", tr.tokenizer(), " (vocab ", tr.vocab_size(),
             "): its losses would mean nothing; prepare both with one tokenizer");
  }
  std::string ck;
  try {
    ck = tokenizer_name_in_dir(resume_dir);
  } catch (const Error&) {  // a damaged tokenizer.json: the checkpoint's own checks speak of it
  }
  BT_CHECK(ck.empty() || ck == tr.tokenizer(), "checkpoint ", resume_dir, " was trained on data of tokenizer ", ck,
           " but data.train '", cfg_.data.train, "' was made with ", tr.tokenizer(),
           ": resume on shards prepared with the checkpoint's tokenizer (its tokenizer.json)");
}

void Trainer::check_finite_weights(const float* params, const char* what) const {
  for (const auto& p : model_->table().entries())
    for (size_t i = 0; i < p.numel; ++i)
      if (!std::isfinite(params[p.offset + i])) {
        const std::string latest = latest_checkpoint_or_none(checkpoint_root());
        BT_FAIL("step ", step_, ": tensor '", p.name, "' holds a non-finite value (", params[p.offset + i],
                " at index ", i, "): the run diverged; not ", what, " (",
                latest.empty() ? std::string("no earlier checkpoint") : "latest stays at " + latest,
                "); lower optim.lr, raise optim.warmup_steps or check the data");
      }
}

std::string Trainer::checkpoint_root() const {
  return cfg_.train.out_dir.empty() ? "" : (fs::path(cfg_.train.out_dir) / "checkpoints").string();
}

std::string Trainer::save_checkpoint() {
  std::string dir;
  if (cfg_.train.out_dir.empty()) {
    last_saved_step_ = step_;
    return dir;
  }
  Timer timer;
  const ParamTable& tb = model_->table();
  const size_t total = tb.total();
  // Checkpoints hold full tensors so that any world size can resume: with ZeRO-1 every rank
  // contributes its slice of the optimizer state.
  std::vector<float> m(total, 0.f), v(total, 0.f), master;
  const size_t b = opt_->begin();
  const bool has_master = !opt_->master().empty();
  if (has_master) master.assign(total, 0.f);
  opt_->get_state(m.data() + b, v.data() + b, has_master ? master.data() + b : nullptr);
  if (zero_) {
    zero_->all_gather_host(m.data());
    zero_->all_gather_host(v.data());
    if (has_master) zero_->all_gather_host(master.data());
  }
  if (comm_.rank() == 0) {
    std::vector<float> params(total, 0.f);
    model_->get_params(params.data(), DType::f32);
    check_finite_weights(params.data(), "saving a checkpoint");
    CheckpointContents c;
    c.step = step_;
    c.config = &cfg_;
    c.table = &tb;
    c.params = params.data();
    c.optimizer = flat_tensors(tb, m.data(), ".exp_avg");
    for (auto& x : flat_tensors(tb, v.data(), ".exp_avg_sq")) c.optimizer.push_back(x);
    if (has_master)
      for (auto& x : flat_tensors(tb, master.data(), ".master")) c.optimizer.push_back(x);
    const Rng::State rs = rng_.state();
    c.trainer_state = {
        {"step", step_},
        {"optimizer_steps", opt_->steps_done()},
        {"tokens_seen", tokens_seen_},
        {"loader", loader_->state().to_json()},
        {"rng", {{"s", {rs.s[0], rs.s[1], rs.s[2], rs.s[3]}}, {"spare", rs.spare}, {"has_spare", rs.has_spare}}},
        {"lr", step_ > 0 ? lr_at(cfg_.optim, step_ - 1, cfg_.train.steps) : 0.0},
        {"config_hash", config_hash(cfg_)},
        {"world_size", comm_.world()},
        {"precision", cfg_.train.precision},
        {"data_train", cfg_.data.train},
        // the data's EOS and the id its pads (and generation's prompt pads) use
        {"eos_id", loader_->source().eos_id()},
        {"pad_id", loader_->source().pad_id()},
    };
    // The tokenizer files of the data, so generate / eval need only the checkpoint.
    if (!cfg_.data.train.empty()) {
      try {
        const fs::path shard_dir = fs::path(expand_shard_list(cfg_.data.train).front()).parent_path();
        for (const char* f : kTokenizerFiles)
          if (fs::exists(shard_dir / f)) c.copy_files.push_back((shard_dir / f).string());
      } catch (const Error&) {
      }
    }
    dir = bt::save_checkpoint(checkpoint_root(), c, cfg_.train.keep_checkpoints, cfg_.train.keep_every);
    if (!topt_.quiet) log_info("checkpoint: {} ({:.2f} s)", dir, timer.seconds());
  }
  last_saved_step_ = step_;
  comm_.barrier();
  return dir;
}

void Trainer::restore(const std::string& dir) {
  if (!verify_checkpoint(dir) && !topt_.quiet)
    log_warn("checkpoint {} has no checksums.json (written by an older bt): its files are not verified", dir);
  const Config ck = load_checkpoint_config(dir);
  check_same_model(ck.model, cfg_.model, "checkpoint " + dir);
  if (config_hash(ck) != config_hash(cfg_) && !topt_.quiet) {
    std::vector<std::string> diff;
    if (!(ck.data == cfg_.data)) diff.push_back("data");
    if (!(ck.optim == cfg_.optim)) diff.push_back("optim");
    if (!(ck.train == cfg_.train)) diff.push_back("train");
    std::string d;
    for (auto& x : diff) d += (d.empty() ? "" : ", ") + x;
    log_warn("resuming {} with a config that differs from the checkpoint's in: {}", dir, d.empty() ? "name" : d);
  }
  const nlohmann::json st = load_trainer_state(dir);
  const ParamTable& tb = model_->table();
  const size_t total = tb.total();
  std::vector<float> params(total, 0.f);
  const std::string model_file = (fs::path(dir) / "model.safetensors").string();
  load_weights(model_file, tb, params.data());
  model_->set_params(params.data(), DType::f32);

  const std::string opt_file = (fs::path(dir) / "optimizer.safetensors").string();
  BT_CHECK(fs::exists(opt_file), "checkpoint ", dir, " has no optimizer.safetensors: it holds weights only "
           "(use --init-from ", model_file, " to fine-tune from it)");
  {
    SafetensorsReader f(opt_file);
    std::vector<float> m(total, 0.f), v(total, 0.f), master(total, 0.f);
    BT_CHECK(load_flat_by_suffix(f, tb, ".exp_avg", m.data()) && load_flat_by_suffix(f, tb, ".exp_avg_sq", v.data()),
             opt_file, ": no AdamW moments (NAME.exp_avg, NAME.exp_avg_sq)");
    const bool has_master = load_flat_by_suffix(f, tb, ".master", master.data());
    const size_t b = opt_->begin();
    opt_->set_state(m.data() + b, v.data() + b, has_master ? master.data() + b : nullptr);
  }
  auto get_i64 = [&](const char* k) -> int64_t {
    BT_CHECK(st.contains(k) && st[k].is_number_integer(), dir, "/trainer_state.json: missing or bad '", k, "'");
    return st[k].get<int64_t>();
  };
  step_ = get_i64("step");
  opt_->set_steps_done(st.contains("optimizer_steps") ? get_i64("optimizer_steps") : step_);
  tokens_seen_ = st.contains("tokens_seen") ? get_i64("tokens_seen") : 0;
  BT_CHECK(st.contains("loader"), dir, "/trainer_state.json: missing 'loader'");
  const LoaderState ls = LoaderState::from_json(st["loader"]);
  if (ls.windows_per_epoch != 0 && ls.windows_per_epoch != loader_->windows_per_epoch())
    log_warn("the training data changed since the checkpoint ({} windows per epoch then, {} now): the loader "
             "continues at the same position of a different permutation", ls.windows_per_epoch,
             loader_->windows_per_epoch());
  loader_->set_state(ls);
  if (st.contains("rng") && st["rng"].contains("s")) {
    Rng::State rs{};
    for (int i = 0; i < 4; ++i) rs.s[i] = st["rng"]["s"][i].get<uint64_t>();
    rs.spare = st["rng"].value("spare", 0.0);
    rs.has_spare = st["rng"].value("has_spare", false);
    rng_.set_state(rs);
  }
  last_saved_step_ = step_;
  if (!topt_.quiet) log_info("resumed from {} at step {}", dir, step_);
}

void Trainer::uptrain() {
  const ParamTable& tb = model_->table();
  std::vector<float> params(tb.total(), 0.f);
  model_->get_params(params.data(), DType::f32);  // the fresh init, for what the procedure leaves alone
  const UptrainReport r = load_from_vanilla(cfg_.load_from_vanilla, cfg_.model, tb, params.data());
  model_->set_params(params.data(), DType::f32);
  // The master copy (CUDA bf16) takes the vanilla weights in fp32, not their bf16 rounding.
  const size_t n = opt_->end() - opt_->begin();
  const std::vector<float> zeros(n, 0.f);
  opt_->set_state(zeros.data(), zeros.data(), params.data() + opt_->begin());
  if (!topt_.quiet) {
    log_info("load_from_vanilla ({}): {} tensors from {} ({} vanilla layers){}", cfg_.load_from_vanilla.method,
             r.written.size(), r.weights, r.vanilla_layers,
             cfg_.load_from_vanilla.initialize_mean_embedder_projection ||
                     cfg_.load_from_vanilla.initialize_identity_expansion_layer
                 ? "; mean projection / identity expansion as configured"
                 : "");
    for (const auto& w : r.warnings) log_warn("load_from_vanilla: {}", w);
  }
}

void Trainer::init_from(const std::string& path) {
  // A checkpoint directory (or latest link, or run directory) stands for its model.safetensors.
  std::error_code ec;
  const std::string file =
      fs::is_directory(path, ec) ? (fs::path(resolve_checkpoint(path)) / "model.safetensors").string() : path;
  const ParamTable& tb = model_->table();
  std::vector<float> params(tb.total(), 0.f);
  const std::vector<std::string> extra = load_weights(file, tb, params.data());
  model_->set_params(params.data(), DType::f32);
  opt_->sync_master_from_params();
  if (!topt_.quiet) {
    log_info("init-from {}: loaded {} tensors", file, tb.entries().size());
    if (!extra.empty()) {
      std::string names;
      for (size_t i = 0; i < extra.size() && i < 6; ++i) names += (i ? ", " : "") + extra[i];
      if (extra.size() > 6) names += ", ...";
      log_info("init-from {}: ignored {} tensors this model does not use: {}", file, extra.size(), names);
    }
  }
}

Trainer::~Trainer() = default;

size_t Trainer::allocated_bytes() const {
  if (backend_ && backend_->device() == Device::cuda) return cuda_memory_stats(*backend_).arena_used;
  return backend_ ? backend_->bytes_allocated() : 0;
}

void Trainer::plan_memory(size_t model_bytes) {
  // Parameters and gradients are fixed; the rest of what the model reserved is activations for
  // micro_batch sequences, so it scales per sequence.
  const size_t total = model_->table().total();
  const size_t fixed = total * (dtype_size(backend_->act_dtype()) + dtype_size(backend_->grad_dtype()));
  const size_t acts = model_bytes > fixed ? model_bytes - fixed : 0;
  mem_.per_sequence = acts / size_t(cfg_.train.micro_batch);
  mem_.fixed = allocated_bytes() - acts;  // params, grads, optimizer state, communication buffers
  mem_.capacity = 0;
  if (backend_->device() == Device::cuda) mem_.capacity = cuda_memory_stats(*backend_).device_total;
  if (topt_.quiet || comm_.rank() != 0) return;
  const double gib = double(1ull << 30);
  if (mem_.capacity > 0 && mem_.per_sequence > 0) {
    // Leave 10% of the device for the CUDA context, cuBLASLt workspace and fragmentation.
    const double room = 0.9 * double(mem_.capacity) - double(mem_.fixed);
    const long fits = room > 0 ? long(room / double(mem_.per_sequence)) : 0;
    log_info("memory: {:.2f} GiB fixed (weights, gradients, optimizer) + {:.1f} MiB per sequence of {} tokens; "
             "micro batch {} uses {:.2f} GiB; up to {} sequences fit in {:.0f} GiB",
             double(mem_.fixed) / gib, double(mem_.per_sequence) / (1 << 20), cfg_.model.context_length,
             cfg_.train.micro_batch, double(allocated_bytes()) / gib, fits, double(mem_.capacity) / gib);
  } else if (mem_.per_sequence > 0) {
    log_info("memory: {:.2f} GiB fixed (weights, gradients, optimizer) + {:.1f} MiB per sequence of {} tokens",
             double(mem_.fixed) / gib, double(mem_.per_sequence) / (1 << 20), cfg_.model.context_length);
  }
}

size_t Trainer::bucket_elems() {
  // 25 MiB buckets by default (as PyTorch DDP); BT_BUCKET_MB overrides.
  const char* e = std::getenv("BT_BUCKET_MB");
  const double mb = e ? std::atof(e) : 25.0;
  return static_cast<size_t>(std::max(1.0, mb * 1024 * 1024 / double(dtype_size(DType::f32))));
}

void Trainer::sync_weights() {
  // Rank 0's weights go to every rank (init is seeded identically, but a resume or --init-from
  // read on each rank must agree too), then a hash proves every rank holds the same bytes.
  comm_.broadcast(model_->params(), 0);
  opt_->sync_master_from_params();
  std::vector<float> w(model_->table().total());
  model_->get_params(w.data(), DType::f32);
  uint64_t h = 1469598103934665603ull;
  const auto* bytes = reinterpret_cast<const unsigned char*>(w.data());
  for (size_t i = 0; i < w.size() * sizeof(float); ++i) h = (h ^ bytes[i]) * 1099511628211ull;
  std::vector<uint64_t> all(comm_.world());
  comm_.all_gather_host_u64(h, all.data());
  for (int r = 0; r < comm_.world(); ++r)
    BT_CHECK(all[r] == all[0], "rank ", r, " holds different initial weights than rank 0 after the broadcast "
             "(weights hash ", all[r], " vs ", all[0], ")");
}

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
  const TrainConfig& t = cfg_.train;
  log_info("batch: global {} = micro {} x accum {} x ranks {} | {} tokens/step | {} steps{}", t.global_batch,
           t.micro_batch, accum_, comm_.world(), format_count(double(t.global_batch) * m.context_length), t.steps,
           t.stop_step > 0 && t.stop_step < t.steps
               ? fmt::format(" (lr schedule), stopping after step {} (train.stop_step)", t.stop_step)
               : std::string());
  log_info("data: {} tokens in {} windows/epoch", format_count(double(loader_->stream_tokens())),
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
  for (size_t i = 0; i < sb.micro.size(); ++i) {
    const MicroBatch& mb = sb.micro[i];
    st.add(model_->forward(mb.tokens.data(), mb.mask.data(), mb.rows, /*with_grad=*/true, 1.0 / count));
    // In the last micro-batch, each bucket's reduction starts as soon as its gradients are final.
    if (reducer_ && i + 1 == sb.micro.size())
      model_->backward([this](const Tensor& ready) { reducer_->on_ready(ready); });
    else
      model_->backward();
  }
  if (reducer_) reducer_->finish();
  if (zero_) zero_->reduce_scatter_grads(model_->grads_padded());
  double sums[2] = {st.loss_sum, double(st.targets)};
  comm_.all_reduce_host(sums, 2, ReduceOp::sum);

  // One global norm: with ZeRO-1 each rank holds the summed gradients of its slice only.
  Tensor g = zero_ ? flat_slice(model_->grads(), zero_->begin(), zero_->end() - zero_->begin()) : model_->grads();
  double sq = backend_->sum_squares(g);
  if (zero_) comm_.all_reduce_host(&sq, 1, ReduceOp::sum);
  last_grad_norm_ = std::sqrt(sq);
  const double f = clip_factor(last_grad_norm_, cfg_.optim.grad_clip);
  if (f != 1.0) backend_->scale(g, f);
  const double lr = lr_at(cfg_.optim, step_, cfg_.train.steps);
  opt_->step(lr);
  if (zero_) zero_->all_gather_params(model_->params_padded());
  ++step_;
  tokens_seen_ += int64_t(cfg_.train.global_batch) * cfg_.model.context_length;
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
  stopped_early_ = false;
  auto stop_now = [&] {
    double flag = stop_requested() ? 1.0 : 0.0;
    if (comm_.world() > 1) comm_.all_reduce_host(&flag, 1, ReduceOp::sum);  // every rank stops at the same step
    return flag > 0;
  };
  // The run ends at train.stop_step (the official stop_steps) when set, else at train.steps; the lr
  // schedule is always that of train.steps.
  const int64_t end = t.end_step();
  if (step_ >= end) {
    BT_CHECK(step_ <= t.steps, "the checkpoint is at step ", step_, ", past train.steps = ", t.steps,
             ": raise train.steps (e.g. train.steps=", 2 * step_, ") to continue training, or resume an earlier "
             "checkpoint");
    BT_CHECK(step_ == end, "the checkpoint is at step ", step_, ", past train.stop_step = ", t.stop_step,
             ": raise train.stop_step (0: train to train.steps = ", t.steps, ") to continue, or resume an earlier "
             "checkpoint");
    if (step_ > 0 && !topt_.quiet) {
      if (end < t.steps)
        log_info("the run is already at train.stop_step = {} (of the {}-step schedule): nothing to train (raise "
                 "train.stop_step, or set it to 0, to go on)", step_, t.steps);
      else
        log_info("the run is already at train.steps = {}: nothing to train (raise train.steps to go on)", step_);
    }
  }
  while (step_ < end) {
    const bool by_signal = stop_now();
    if (by_signal || (topt_.stop_after >= 0 && step_ - start >= topt_.stop_after)) {
      if (!topt_.quiet)
        log_info("{} at step {}: saving a checkpoint", by_signal ? "stop signal received" : "stopping", step_);
      if (topt_.step_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(topt_.step_delay_ms));
      if (last_saved_step_ != step_) save_checkpoint();
      stopped_early_ = true;
      return;
    }
    const double loss = train_step();
    if (topt_.step_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(topt_.step_delay_ms));
    ++window_steps;
    const bool last = step_ == end;
    if (step_ % t.log_every == 0 || last || step_ == 1) {
      const double dt = window.seconds() / double(window_steps);
      const double tps = tokens_per_step / dt;
      const double eta = dt * double(end - step_);
      const double lr = lr_at(cfg_.optim, step_ - 1, t.steps);
      // Model FLOP/s of this rank (tokens/s is global): MFU against the device's dense peak.
      const double flops = tps / comm_.world() * flops_per_token;
      const double mfu = peak_flops_ > 0 ? flops / peak_flops_ : -1.0;
      const double mem_gib = double(memory_in_use(*backend_)) / double(1ull << 30);
      if (!topt_.quiet)
        log_info("step {:>6}/{} | loss {:.4f} | lr {:.2e} | gnorm {:.3f} | {} tok/s | {} | mem {:.2f} GiB | ETA {}",
                 step_, end, loss, lr, last_grad_norm_, format_count(tps),
                 mfu >= 0 ? fmt::format("MFU {:.1f}%", 100 * mfu) : fmt::format("{:.1f} GFLOP/s", flops / 1e9),
                 mem_gib, format_duration(eta));
      if (metrics_)
        metrics_->write({{"step", step_}, {"loss", loss}, {"lr", lr}, {"grad_norm", last_grad_norm_},
                        {"tokens_per_s", tps}, {"tokens", double(step_) * tokens_per_step},
                        {"elapsed_s", total.seconds()}, {"mfu", mfu >= 0 ? mfu : 0.0},
                        {"model_flops_per_s", flops}, {"memory_bytes", memory_in_use(*backend_)}});
      if (tb_) {
        tb_->add_scalar("train/loss", loss, step_);
        tb_->add_scalar("train/lr", lr, step_);
        tb_->add_scalar("train/grad_norm", last_grad_norm_, step_);
        tb_->add_scalar("train/tokens_per_s", tps, step_);
      }
      window.reset();
      window_steps = 0;
    }
    if (val_loader_ && (step_ % t.eval_every == 0 || last)) {
      LossStats v = evaluate();
      if (!std::isfinite(v.mean())) {
        const std::string latest = latest_checkpoint_or_none(checkpoint_root());
        BT_FAIL("step ", step_, ": the validation loss is not finite (", v.mean(), "): the run diverged; no "
                "checkpoint of this step is saved (",
                latest.empty() ? std::string("no earlier checkpoint") : "latest stays at " + latest,
                "); lower optim.lr, raise optim.warmup_steps or check the data");
      }
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
      if (tb_) {
        tb_->add_scalar("val/loss", v.mean(), step_);
        for (size_t i = 0; i < by_pos.size() && by_pos.size() > 1; ++i)
          tb_->add_scalar("val/loss_position_" + std::to_string(i + 1), by_pos[i], step_);
      }
      window.reset();
      window_steps = 0;
    }
    if (!t.eval_tasks.empty() && (step_ % t.eval_tasks_every == 0 || last)) {
      evaluate_tasks();
      window.reset();
      window_steps = 0;
    }
    if (t.checkpoint_every > 0 && (step_ % t.checkpoint_every == 0 || last)) {
      save_checkpoint();
      window.reset();
      window_steps = 0;
    }
  }
  if (step_ > 0 && last_saved_step_ != step_ && !cfg_.train.out_dir.empty()) save_checkpoint();
  if (end < t.steps && step_ > start && !topt_.quiet)
    log_info("stopped at train.stop_step = {} of the {}-step lr schedule (lr {:.3e}); raise train.stop_step and "
             "--resume auto to go on", step_, t.steps, lr_at(cfg_.optim, step_ - 1, t.steps));
}

void Trainer::evaluate_tasks() {
  // Rank 0 scores the tasks; the others wait for it (the official callback runs on the main
  // process only).
  if (tasks_) {
    double seconds = 0;
    const nlohmann::json r = tasks_->run(*model_, &seconds);
    if (!topt_.quiet) log_info("tasks {:>6} | {} | {:.1f} s", step_, TrainTaskEval::summary(r), seconds);
    if (metrics_) metrics_->write({{"step", step_}, {"eval_tasks", r}, {"eval_tasks_seconds", seconds}});
    if (tb_)
      for (const auto& [task, metrics] : r.items())
        for (const auto& [metric, v] : metrics.items()) tb_->add_scalar("tasks/" + task + "/" + metric, v, step_);
  }
  comm_.barrier();
}

}  // namespace bt

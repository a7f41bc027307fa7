// `bt eval --ckpt DIR --data GLOB [--batches N]`: loss, perplexity and (block models) the loss per
// position inside the block over shards, read in order (no shuffling), with the padding options of
// the checkpoint's config; every window of the set, whatever the batch size. `--tokens-file`
// evaluates raw int32 windows instead (with `--mask-file`: their pad mask), `--dump-logits` writes
// every logit row (float32, the Model's row order) and `--grads` the gradient of the mean loss for
// every parameter (safetensors, official names): the peer tests compare them with PyTorch, in
// double with `--precision fp64`.
// `bt eval --task NAME --task-data DIR`: zero-shot tasks (infer/eval_tasks.h).
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "core/timer.h"
#include "data/loader.h"
#include "infer/commands.h"
#include "infer/eval_position.h"
#include "infer/eval_tasks.h"
#include "infer/load.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"

namespace bt {

namespace {

struct EvalArgs {
  std::string ckpt, config, data, tokens_file, mask_file, dump_logits, grads, device = "auto", precision;
  std::vector<std::string> overrides;
  int batches = 0, batch_size = 0;
  bool json = false;
  int by_position = 0;  // --by-position BUCKET
  std::string run;      // --run DIR
  TaskEvalArgs task;    // --task mode
};

// grads * scale for every parameter, in the official names and file shapes, to a safetensors file
// (F64 when the backend computes in double), written through a temporary file.
void write_grads(Model& model, Backend& be, double scale, const std::string& path) {
  std::vector<double> g(model.table().total());
  be.download(g.data(), DType::f64, model.grads());
  for (double& x : g) x *= scale;
  const bool f64 = be.grad_dtype() == DType::f64;
  std::vector<float> gf;
  if (!f64) gf.assign(g.begin(), g.end());
  std::vector<SafetensorOut> out;
  for (const ParamInfo& p : model.table().entries()) {
    SafetensorOut t;
    t.name = p.name;
    t.shape = p.file_shape;
    if (f64)
      t.data_f64 = g.data() + p.offset;
    else
      t.data = gf.data() + p.offset;
    out.push_back(t);
  }
  const std::string tmp = path + ".tmp";
  write_safetensors(tmp, out, {{"format", "pt"}, {"what", "gradient of the mean loss"}});
  std::filesystem::rename(tmp, path);
}

// Loss, perplexity and the loss per position in block of checkpoint `ckpt` over the data (--data,
// --tokens-file, or the config's data.val): the JSON that --json prints.
nlohmann::json eval_data(const EvalArgs& a, const std::string& ckpt) {
    // The config first, to size the model's micro batch.
    BT_CHECK(a.mask_file.empty() || !a.tokens_file.empty(), "--mask-file goes with --tokens-file");
    InferenceModel im = open_inference_model(ckpt, a.config, a.overrides, a.device, a.precision);
    const ModelConfig& mc = im.config.model;
    const int L = mc.context_length;
    int B = a.batch_size > 0 ? a.batch_size : std::max(1, im.config.train.micro_batch);

    // Windows to evaluate: [n, L] tokens and mask.
    std::vector<int32_t> tokens;
    std::vector<uint8_t> mask;
    // Every window of the set is evaluated, in stream order, whatever the batch size: the loader
    // hands out one window at a time and the last batch may be partial.
    std::unique_ptr<Loader> loader;
    int64_t windows = 0, tail_tokens = 0;
    if (!a.tokens_file.empty()) {
      std::ifstream f(a.tokens_file, std::ios::binary | std::ios::ate);
      BT_CHECK(f.good(), "--tokens-file ", a.tokens_file, ": cannot read");
      const auto size = static_cast<size_t>(f.tellg());
      BT_CHECK(size > 0 && size % (size_t(L) * 4) == 0, "--tokens-file ", a.tokens_file, ": ", size,
               " bytes is not a whole number of windows of ", L, " int32 tokens");
      tokens.resize(size / 4);
      f.seekg(0);
      f.read(reinterpret_cast<char*>(tokens.data()), static_cast<std::streamsize>(size));
      mask.assign(tokens.size(), 1);
      if (!a.mask_file.empty()) {
        std::ifstream m(a.mask_file, std::ios::binary | std::ios::ate);
        BT_CHECK(m.good(), "--mask-file ", a.mask_file, ": cannot read");
        BT_CHECK(static_cast<size_t>(m.tellg()) == mask.size(), "--mask-file ", a.mask_file, ": ",
                 static_cast<size_t>(m.tellg()), " bytes, expected one per token (", mask.size(), ")");
        m.seekg(0);
        m.read(reinterpret_cast<char*>(mask.data()), static_cast<std::streamsize>(mask.size()));
      }
      windows = static_cast<int64_t>(tokens.size()) / L;
    } else {
      const std::string glob = a.data.empty() ? im.config.data.val : a.data;
      BT_CHECK(!glob.empty(), "no data to evaluate: give --data GLOB (the config has no data.val)");
      LoaderOptions lo;
      lo.context_length = L;
      lo.block_length = mc.is_block() ? mc.block_length : 1;
      lo.seed = im.config.train.seed;
      lo.random_pad_first_block = im.config.data.random_pad_first_block;
      lo.pad_to_block_boundary = im.config.data.pad_to_block_boundary;
      lo.vocab_size = mc.vocab_size;
      lo.pad_id = mc.pad_token_id;  // -1: the shards' EOS, as in training
      lo.shuffle = false;
      lo.prefetch = false;
      lo.verify_checksums = im.config.data.verify_checksums;
      lo.global_batch = lo.micro_batch = 1;
      // Windows are read lazily from the shards, as in training.
      std::shared_ptr<const TokenSource> stream = open_shard_source(glob, lo);
      // Shards of another tokenizer than the checkpoint's would give a meaningless loss.
      const std::string ck_tok = checkpoint_tokenizer_name(im);
      BT_CHECK(ck_tok.empty() || ck_tok == stream->tokenizer(), "the shards '", glob, "' were made with tokenizer ",
               stream->tokenizer(), " but the checkpoint ", im.dir, " was trained with ", ck_tok,
               ": evaluate on shards prepared with the checkpoint's tokenizer (its tokenizer.json)");
      loader = std::make_unique<Loader>(stream, lo);
      windows = static_cast<int64_t>(loader->windows_per_epoch());
      BT_CHECK(windows > 0, glob, ": fewer than ", L, " tokens, not one window of model.context_length");
      tail_tokens = static_cast<int64_t>(loader->padded_tokens()) - windows * L;
    }
    B = static_cast<int>(std::min<int64_t>(B, windows));
    int64_t n_batches = (windows + B - 1) / B;
    if (a.batches > 0) n_batches = std::min<int64_t>(n_batches, a.batches);

    load_inference_weights(im, B);
    Model& model = *im.model;
    if (!im.ignored.empty() && !a.json)
      log_info("{}: ignored {} tensors this model does not use: {}", im.weights, im.ignored.size(),
               summarize_names(im.ignored));
    std::FILE* dump = nullptr;
    if (!a.dump_logits.empty()) {
      dump = std::fopen(a.dump_logits.c_str(), "wb");
      BT_CHECK(dump, "--dump-logits ", a.dump_logits, ": cannot create");
    }
    const bool with_grad = !a.grads.empty();
    if (with_grad) model.zero_grads();
    Timer timer;
    LossStats total;
    int64_t windows_done = 0;
    std::vector<float> h_logits;
    std::vector<int32_t> batch_tokens;
    std::vector<uint8_t> batch_mask;
    for (int64_t i = 0; i < n_batches; ++i) {
      const int64_t first = i * B;
      const int rows = static_cast<int>(std::min<int64_t>(B, windows - first));
      const int32_t* tk;
      const uint8_t* mk;
      if (loader) {
        batch_tokens.clear();
        batch_mask.clear();
        for (int r = 0; r < rows; ++r) {
          StepBatch sb = loader->next();
          batch_tokens.insert(batch_tokens.end(), sb.micro[0].tokens.begin(), sb.micro[0].tokens.end());
          batch_mask.insert(batch_mask.end(), sb.micro[0].mask.begin(), sb.micro[0].mask.end());
        }
        tk = batch_tokens.data();
        mk = batch_mask.data();
      } else {
        tk = tokens.data() + first * L;
        mk = mask.data() + first * L;
      }
      total.add(model.forward(tk, mk, rows, with_grad, 1.0));
      windows_done += rows;
      if (with_grad) model.backward();  // d(loss sum), scaled to the mean below
      if (dump) {
        Tensor lg = model.logits();
        h_logits.resize(lg.numel());
        im.backend->download(h_logits.data(), DType::f32, lg);
        BT_CHECK(std::fwrite(h_logits.data(), 4, h_logits.size(), dump) == h_logits.size(), "--dump-logits ",
                 a.dump_logits, ": write failed");
      }
    }
    if (dump) std::fclose(dump);
    BT_CHECK(total.targets > 0, "no loss targets in the evaluated data (all padding?)");
    const double loss = total.mean();
    BT_CHECK(std::isfinite(loss), "the loss is not finite (", loss, "): the weights of ", im.weights,
             " are corrupt or come from a run that diverged");
    if (with_grad) write_grads(model, *im.backend, 1.0 / double(total.targets), a.grads);
    std::vector<double> by_pos;
    for (size_t i = 0; i < total.pos_sum.size(); ++i)
      by_pos.push_back(total.pos_count[i] ? total.pos_sum[i] / double(total.pos_count[i]) : 0.0);
  return {{"checkpoint", im.dir.empty() ? im.weights : im.dir},
          {"loss", loss},
          {"ppl", std::exp(loss)},
          {"targets", total.targets},
          {"windows", windows_done},
          {"windows_total", windows},
          {"context_length", L},
          {"tail_tokens", tail_tokens},
          {"loss_by_position", by_pos},
          {"model", mc.kind},
          {"seconds", timer.seconds()}};
}

void print_data_loss(const nlohmann::json& j, bool json) {
  if (json) {
    fmt::print("{}\n", j.dump());
    return;
  }
  const double loss = j["loss"].get<double>(), ppl = std::exp(loss);
  const int64_t windows_done = j["windows"].get<int64_t>(), windows = j["windows_total"].get<int64_t>(),
                tail_tokens = j["tail_tokens"].get<int64_t>();
  std::string pos;
  const auto& by_pos = j["loss_by_position"];
  for (size_t i = 0; i < by_pos.size(); ++i) pos += fmt::format("{}{:.4f}", i ? " " : "", by_pos[i].get<double>());
  // Which windows: the first `windows_done` of the set, in stream order.
  const std::string which = windows_done == windows ? fmt::format("all {} windows", windows)
                                                    : fmt::format("windows 1-{} of {}", windows_done, windows);
  fmt::print("eval {}: {} of {} tokens{}, {} targets | loss {:.4f} | ppl {}{} | {:.1f} s\n",
             j["checkpoint"].get<std::string>(), which, j["context_length"].get<int>(),
             tail_tokens > 0 ? fmt::format(" (the last {} tokens fill no window)", tail_tokens) : "",
             j["targets"].get<int64_t>(), loss, ppl < 1e6 ? fmt::format("{:.2f}", ppl) : fmt::format("{:.3e}", ppl),
             j["model"] == "block" ? " | loss by position in block " + pos : "", j["seconds"].get<double>());
}

// --by-position BUCKET: the loss per absolute position over whole windows of each document.
void eval_by_position(const EvalArgs& a) {
  BT_CHECK(a.tokens_file.empty() && a.dump_logits.empty() && a.grads.empty() && a.task.tasks.empty(),
           "--by-position does not combine with --tokens-file, --dump-logits, --grads or --task");
  InferenceModel im = open_inference_model(a.ckpt, a.config, a.overrides, a.device, a.precision);
  const std::string glob = a.data.empty() ? im.config.data.val : a.data;
  BT_CHECK(!glob.empty(), "--by-position: no data: give --data GLOB (the config has no data.val)");
  const int B = a.batch_size > 0 ? a.batch_size : std::max(1, im.config.train.micro_batch);
  load_inference_weights(im, B);
  const int64_t max_windows = int64_t(a.batches) * B;
  nlohmann::json j = position_json(loss_by_position(*im.model, glob, B, max_windows), a.by_position);
  j["checkpoint"] = im.dir.empty() ? im.weights : im.dir;
  j["data"] = glob;
  if (!a.task.output.empty()) {
    const std::filesystem::path out = a.task.output;
    if (out.has_parent_path()) std::filesystem::create_directories(out.parent_path());
    write_file_atomic(out.string(), j.dump(2) + "\n");
  }
  if (a.json)
    fmt::print("{}\n", j.dump());
  else
    fmt::print("eval {}: {}", im.dir.empty() ? im.weights : im.dir, position_table(j));
}

// --run DIR: every checkpoint of a run, in step order, into one table (and --output FILE: .csv,
// else JSON).
void eval_run(const EvalArgs& a) {
  namespace fs = std::filesystem;
  BT_CHECK(a.tokens_file.empty() && a.dump_logits.empty() && a.grads.empty() && a.by_position == 0,
           "--run does not combine with --tokens-file, --dump-logits, --grads or --by-position");
  const fs::path root =
      fs::is_directory(fs::path(a.run) / "checkpoints") ? fs::path(a.run) / "checkpoints" : fs::path(a.run);
  const auto checkpoints = list_checkpoints(root.string());
  BT_CHECK(!checkpoints.empty(), "--run ", a.run, ": no complete checkpoint under ", root.string(),
           " (give a run directory, i.e. train.out_dir, or its checkpoints/)");
  // The loss on the data unless only tasks were asked for.
  const bool with_data = a.task.tasks.empty() || !a.data.empty();
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& [step, dir] : checkpoints) {
    nlohmann::json row = {{"step", step}, {"checkpoint", dir}};
    row["tokens"] = load_trainer_state(dir).value("tokens_seen", int64_t(0));
    if (with_data) {
      const nlohmann::json d = eval_data(a, dir);
      for (const char* k : {"loss", "ppl", "targets", "windows", "loss_by_position"}) row[k] = d[k];
    }
    if (!a.task.tasks.empty()) {
      TaskEvalArgs t = a.task;
      t.ckpt = dir;
      t.config = a.config;
      t.device = a.device;
      t.precision = a.precision;
      t.overrides = a.overrides;
      t.batch_size = a.batch_size;
      t.output.clear();
      t.quiet = true;
      const nlohmann::json r = run_task_eval(t);
      for (const auto& [task, metrics] : r["results"].items())
        for (const auto& [k, v] : metrics.items())
          if (v.is_number() && k.find("_stderr") == std::string::npos) row["tasks"][task][k.substr(0, k.find(','))] = v;
    }
    rows.push_back(row);
    if (!a.json) log_info("eval --run: step {} ({} of {} checkpoints)", step, rows.size(), checkpoints.size());
  }
  // Columns: step, tokens, the loss, its loss per position in block, one per task metric.
  std::vector<std::string> header = {"step", "tokens"}, task_cols;
  if (with_data) header.insert(header.end(), {"val_loss", "ppl"});
  size_t positions = 0;
  for (const auto& r : rows) {
    if (r.contains("loss_by_position") && r["loss_by_position"].size() > 1)
      positions = std::max(positions, r["loss_by_position"].size());
    if (r.contains("tasks"))
      for (const auto& [task, metrics] : r["tasks"].items())
        for (const auto& [m, v] : metrics.items())
          if (std::find(task_cols.begin(), task_cols.end(), task + "/" + m) == task_cols.end())
            task_cols.push_back(task + "/" + m);
  }
  for (size_t i = 0; i < positions; ++i) header.push_back(fmt::format("val_loss_pos{}", i + 1));
  header.insert(header.end(), task_cols.begin(), task_cols.end());
  std::vector<std::vector<std::string>> cells;
  for (const auto& r : rows) {
    std::vector<std::string> c = {std::to_string(r["step"].get<int64_t>()), std::to_string(r["tokens"].get<int64_t>())};
    if (with_data) {
      c.push_back(fmt::format("{:.6f}", r["loss"].get<double>()));
      c.push_back(fmt::format("{:.4f}", r["ppl"].get<double>()));
      for (size_t i = 0; i < positions; ++i)
        c.push_back(i < r["loss_by_position"].size() ? fmt::format("{:.6f}", r["loss_by_position"][i].get<double>())
                                                     : "");
    }
    for (const auto& col : task_cols) {
      const std::string task = col.substr(0, col.find('/')), m = col.substr(col.find('/') + 1);
      const bool has = r.contains("tasks") && r["tasks"].contains(task) && r["tasks"][task].contains(m);
      c.push_back(has ? fmt::format("{:.6f}", r["tasks"][task][m].get<double>()) : "");
    }
    cells.push_back(std::move(c));
  }
  std::string csv, md = "|";
  for (size_t i = 0; i < header.size(); ++i) {
    csv += (i ? "," : "") + header[i];
    md += " " + header[i] + " |";
  }
  csv += "\n";
  md += "\n|";
  for (size_t i = 0; i < header.size(); ++i) md += "---:|";
  md += "\n";
  for (const auto& c : cells) {
    md += "|";
    for (size_t i = 0; i < c.size(); ++i) {
      csv += (i ? "," : "") + c[i];
      md += " " + c[i] + " |";
    }
    csv += "\n";
    md += "\n";
  }
  const nlohmann::json out = {{"run", a.run}, {"checkpoints", rows}};
  if (!a.task.output.empty()) {
    const fs::path p = a.task.output;
    if (p.has_parent_path()) fs::create_directories(p.parent_path());
    write_file_atomic(p.string(), p.extension() == ".csv" ? csv : out.dump(2) + "\n");
  }
  if (a.json)
    fmt::print("{}\n", out.dump());
  else
    fmt::print("{}", md);
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand("eval", "loss and perplexity of a checkpoint on token shards");
  cmd->add_option("--ckpt", a->ckpt, "checkpoint directory (or runs/NAME/checkpoints/latest, or a .safetensors "
                                     "file with --config); not with --run");
  cmd->add_option("--config", a->config, "config describing the weights (default: the checkpoint's config.yaml)");
  cmd->add_option("--data", a->data, "shard glob (default: the config's data.val)");
  CLI::Option* batches = cmd->add_option("--batches", a->batches, "evaluate at most this many batches (0: the whole set)");
  CLI::Option* batch_size = cmd->add_option("--batch-size", a->batch_size, "windows per forward (default: train.micro_batch)");
  cmd->add_option("--tokens-file", a->tokens_file,
                  "evaluate raw little-endian int32 tokens, context_length per window, instead of shards");
  cmd->add_option("--mask-file", a->mask_file,
                  "with --tokens-file: the pad mask, one uint8 per token (1 = real, 0 = pad: hidden from attention, "
                  "never a target)");
  cmd->add_option("--dump-logits", a->dump_logits, "write all logit rows as raw float32 to this file");
  cmd->add_option("--grads", a->grads,
                  "write the gradient of the mean loss for every parameter to this safetensors file (official "
                  "names; F64 with --precision fp64)");
  cmd->add_option("--precision", a->precision, "fp32 | bf16 (CUDA) | fp64 (CPU; default: the config's)");
  cmd->add_flag("--json", a->json, "print the result as one JSON object");
  cmd->add_option("--device", a->device, "auto | cpu | cuda");
  cmd->add_option("overrides", a->overrides, "config overrides section.key=value");
  CLI::Option* by_position = cmd->add_option(
      "--by-position", a->by_position,
      "the mean loss per absolute position, in buckets of this many positions, over whole windows cut from each "
      "document (long-context analysis; --output FILE.json keeps it)");
  cmd->add_option("--run", a->run,
                  "evaluate every checkpoint of a run (its directory, train.out_dir) into one table: loss on the "
                  "data, and the tasks with --task; --output FILE.csv or FILE.json keeps it");
  // Zero-shot tasks (docs/evaluation.md).
  TaskEvalArgs& t = a->task;
  cmd->add_option("--task", t.tasks, "zero-shot tasks, comma-separated (lambada_openai, wikitext, hellaswag, piqa, "
                                     "arc_easy, arc_challenge, sciq, winogrande, or all)");
  cmd->add_option("--task-data", t.task_data, "directory with the tasks' JSONL files (docs/evaluation.md)");
  cmd->add_option("--limit", t.limit, "--task: the first N documents of each task (a fraction if below 1)");
  cmd->add_option("--output", t.output, "--task: write the results JSON here (a .json file, or a directory)");
  cmd->add_flag("--log-samples", t.log_samples, "--task: also write samples_TASK.jsonl next to the results");
  cmd->add_option("--context-mode", t.context_mode,
                  "--task, block models: pad (L_B - 1 pads before each row, the official default) | nopad (checkpoints trained without data.random_pad_first_block)");
  cmd->add_option("--max-length", t.max_length, "--task: tokens of model input per request (default: "
                                                "model.context_length)");
  cmd->add_option("--pad-id", t.pad_id, "--task, block models: the pad token (default: the tokenizer's EOS)");
  cmd->add_option("--bootstrap-iters", t.bootstrap_iters, "--task: bootstrap resamples for perplexity's stderr "
                                                          "(default 100000, 0: no stderr)");
  cmd->add_flag("!--no-share-context", t.share_context,
                "--task, vanilla models: score each multiple-choice choice from scratch instead of from the "
                "question's cached context");
  cmd->add_option("--tokenizer", t.tokenizer, "--task: byte | spm:PATH | DATA_DIR (default: the checkpoint's)");
  cmd->callback([a, batches, batch_size, by_position] {
    BT_CHECK(batches->count() == 0 || a->batches >= 0, "--batches must be >= 0 (0: the whole set; got ", a->batches,
             ")");
    BT_CHECK(batch_size->count() == 0 || a->batch_size >= 1, "--batch-size must be >= 1 (got ", a->batch_size, ")");
    BT_CHECK(a->run.empty() != a->ckpt.empty(), a->run.empty() ? "bt eval needs --ckpt CHECKPOINT (or --run DIR)"
                                                                 : "--run DIR evaluates the checkpoints of a run: "
                                                                   "drop --ckpt");
    BT_CHECK(by_position->count() == 0 || a->by_position >= 1, "--by-position BUCKET must be >= 1 position (got ",
             a->by_position, ")");
    if (!a->run.empty()) return eval_run(*a);
    if (!a->task.tasks.empty()) {
      BT_CHECK(a->data.empty() && a->tokens_file.empty() && a->mask_file.empty() && a->dump_logits.empty() &&
                   a->grads.empty() && a->batches == 0,
               "--task does not combine with --data, --tokens-file, --mask-file, --dump-logits, --grads or --batches");
      TaskEvalArgs t = a->task;
      t.ckpt = a->ckpt;
      t.config = a->config;
      t.device = a->device;
      t.precision = a->precision;
      t.overrides = a->overrides;
      t.batch_size = a->batch_size;
      t.json = a->json;
      run_task_eval(t);
      return;
    }
    if (a->by_position > 0) return eval_by_position(*a);
    print_data_loss(eval_data(*a, a->ckpt), a->json);
  });
}

}  // namespace bt

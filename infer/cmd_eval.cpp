// `bt eval --ckpt DIR --data GLOB [--batches N]`: loss, perplexity and (block models) the loss per
// position inside the block over shards, read in order (no shuffling), with the padding options of
// the checkpoint's config. `--tokens-file` evaluates raw int32 windows instead (with `--mask-file`:
// their pad mask), `--dump-logits` writes every logit row (float32, the Model's row order) and
// `--grads` the gradient of the mean loss for every parameter (safetensors, official names): the
// peer tests compare them with PyTorch, in double with `--precision fp64`.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "core/timer.h"
#include "data/loader.h"
#include "infer/load.h"
#include "model/safetensors.h"

namespace bt {

namespace {

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

}  // namespace

void add_eval_command(CLI::App& app) {
  struct Args {
    std::string ckpt, config, data, tokens_file, mask_file, dump_logits, grads, device = "auto", precision;
    std::vector<std::string> overrides;
    int batches = 0, batch_size = 0;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("eval", "loss and perplexity of a checkpoint on token shards");
  cmd->add_option("--ckpt", a->ckpt, "checkpoint directory (or runs/NAME/checkpoints/latest, or a .safetensors "
                                     "file with --config)")
      ->required();
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
  cmd->callback([a, batches, batch_size] {
    BT_CHECK(batches->count() == 0 || a->batches >= 0, "--batches must be >= 0 (0: the whole set; got ", a->batches,
             ")");
    BT_CHECK(batch_size->count() == 0 || a->batch_size >= 1, "--batch-size must be >= 1 (got ", a->batch_size, ")");
    // The config first, to size the model's micro batch.
    BT_CHECK(a->mask_file.empty() || !a->tokens_file.empty(), "--mask-file goes with --tokens-file");
    InferenceModel im = open_inference_model(a->ckpt, a->config, a->overrides, a->device, a->precision);
    const ModelConfig& mc = im.config.model;
    const int L = mc.context_length;
    int B = a->batch_size > 0 ? a->batch_size : std::max(1, im.config.train.micro_batch);

    // Windows to evaluate: [n, L] tokens and mask.
    std::vector<int32_t> tokens;
    std::vector<uint8_t> mask;
    std::unique_ptr<Loader> loader;
    int64_t n_batches = 0;
    if (!a->tokens_file.empty()) {
      std::ifstream f(a->tokens_file, std::ios::binary | std::ios::ate);
      BT_CHECK(f.good(), "--tokens-file ", a->tokens_file, ": cannot read");
      const auto size = static_cast<size_t>(f.tellg());
      BT_CHECK(size > 0 && size % (size_t(L) * 4) == 0, "--tokens-file ", a->tokens_file, ": ", size,
               " bytes is not a whole number of windows of ", L, " int32 tokens");
      tokens.resize(size / 4);
      f.seekg(0);
      f.read(reinterpret_cast<char*>(tokens.data()), static_cast<std::streamsize>(size));
      mask.assign(tokens.size(), 1);
      if (!a->mask_file.empty()) {
        std::ifstream m(a->mask_file, std::ios::binary | std::ios::ate);
        BT_CHECK(m.good(), "--mask-file ", a->mask_file, ": cannot read");
        BT_CHECK(static_cast<size_t>(m.tellg()) == mask.size(), "--mask-file ", a->mask_file, ": ",
                 static_cast<size_t>(m.tellg()), " bytes, expected one per token (", mask.size(), ")");
        m.seekg(0);
        m.read(reinterpret_cast<char*>(mask.data()), static_cast<std::streamsize>(mask.size()));
      }
      const int64_t windows = static_cast<int64_t>(tokens.size()) / L;
      B = static_cast<int>(std::min<int64_t>(B, windows));
      n_batches = (windows + B - 1) / B;
    } else {
      const std::string glob = a->data.empty() ? im.config.data.val : a->data;
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
      // Windows are read lazily from the shards, as in training.
      std::shared_ptr<const TokenSource> stream = open_shard_source(glob, lo);
      // Shards of another tokenizer than the checkpoint's would give a meaningless loss.
      const std::string ck_tok = checkpoint_tokenizer_name(im);
      BT_CHECK(ck_tok.empty() || ck_tok == stream->tokenizer(), "the shards '", glob, "' were made with tokenizer ",
               stream->tokenizer(), " but the checkpoint ", im.dir, " was trained with ", ck_tok,
               ": evaluate on shards prepared with the checkpoint's tokenizer (its tokenizer.json)");
      // Probe the number of windows with a batch of 1, then size the batch to the data.
      lo.global_batch = lo.micro_batch = 1;
      const uint64_t windows = Loader(stream, lo).windows_per_epoch();
      BT_CHECK(windows > 0, glob, ": fewer than ", L, " tokens, not one window of model.context_length");
      B = static_cast<int>(std::min<uint64_t>(B, windows));
      lo.global_batch = lo.micro_batch = B;
      loader = std::make_unique<Loader>(stream, lo);
      n_batches = static_cast<int64_t>(loader->steps_per_epoch());
    }
    if (a->batches > 0) n_batches = std::min<int64_t>(n_batches, a->batches);

    load_inference_weights(im, B);
    Model& model = *im.model;
    if (!im.ignored.empty() && !a->json)
      log_info("{}: ignored {} tensors this model does not use: {}", im.weights, im.ignored.size(),
               summarize_names(im.ignored));
    std::FILE* dump = nullptr;
    if (!a->dump_logits.empty()) {
      dump = std::fopen(a->dump_logits.c_str(), "wb");
      BT_CHECK(dump, "--dump-logits ", a->dump_logits, ": cannot create");
    }
    const bool with_grad = !a->grads.empty();
    if (with_grad) model.zero_grads();
    Timer timer;
    LossStats total;
    int64_t windows_done = 0;
    std::vector<float> h_logits;
    for (int64_t i = 0; i < n_batches; ++i) {
      const int32_t* tk;
      const uint8_t* mk;
      int rows;
      StepBatch sb;
      if (loader) {
        sb = loader->next();
        tk = sb.micro[0].tokens.data();
        mk = sb.micro[0].mask.data();
        rows = sb.micro[0].rows;
      } else {
        const int64_t first = i * B;
        rows = static_cast<int>(std::min<int64_t>(B, static_cast<int64_t>(tokens.size()) / L - first));
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
                 a->dump_logits, ": write failed");
      }
    }
    if (dump) std::fclose(dump);
    BT_CHECK(total.targets > 0, "no loss targets in the evaluated data (all padding?)");
    const double loss = total.mean();
    BT_CHECK(std::isfinite(loss), "the loss is not finite (", loss, "): the weights of ", im.weights,
             " are corrupt or come from a run that diverged");
    if (with_grad) write_grads(model, *im.backend, 1.0 / double(total.targets), a->grads);
    std::vector<double> by_pos;
    for (size_t i = 0; i < total.pos_sum.size(); ++i)
      by_pos.push_back(total.pos_count[i] ? total.pos_sum[i] / double(total.pos_count[i]) : 0.0);
    if (a->json) {
      nlohmann::json j = {{"loss", loss},       {"ppl", std::exp(loss)},         {"targets", total.targets},
                          {"windows", windows_done}, {"loss_by_position", by_pos}, {"model", mc.kind},
                          {"seconds", timer.seconds()}};
      fmt::print("{}\n", j.dump());
    } else {
      std::string pos;
      for (size_t i = 0; i < by_pos.size(); ++i) pos += fmt::format("{}{:.4f}", i ? " " : "", by_pos[i]);
      const double ppl = std::exp(loss);
      fmt::print("eval {}: {} windows, {} targets | loss {:.4f} | ppl {}{} | {:.1f} s\n",
                 im.dir.empty() ? im.weights : im.dir, windows_done, total.targets, loss,
                 ppl < 1e6 ? fmt::format("{:.2f}", ppl) : fmt::format("{:.3e}", ppl),
                 mc.is_block() ? " | loss by position in block " + pos : "", timer.seconds());
    }
  });
}

}  // namespace bt

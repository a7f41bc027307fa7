// Tests of the experiment config (model/config.h, docs/design.md §7): every kind of bad input gives a
// one-line error naming the key (and file:line for file values), overrides, defaults, the
// to_yaml round trip, and every file under configs/ loads, validates and has the paper's size.
#include "model/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"

namespace fs = std::filesystem;
using bt::Config;

namespace {

fs::path source_dir() {
  if (const char* env = std::getenv("BT_SOURCE_DIR"); env && *env) return env;
  return fs::path(__FILE__).parent_path().parent_path().parent_path();  // tests/unit/ -> root
}

// The message of the bt::Error that f throws ("" and a test failure when it throws none).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const bt::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected bt::Error, got another exception: " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected a bt::Error, got none";
  return "";
}

#define EXPECT_CONTAINS(haystack, needle) \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << "message: " << (haystack)

// A valid tiny block config; line numbers below refer to this text (line 1 = `name:`).
const char* kBlock =
    "name: t\n"                                                                         // 1
    "model:\n"                                                                          // 2
    "  kind: block\n"                                                                   // 3
    "  vocab_size: 512\n"                                                               // 4
    "  context_length: 64\n"                                                            // 5
    "  block_length: 4\n"                                                               // 6
    "  embedder: {kind: lookup, dim: 16}\n"                                             // 7
    "  block_decoder: {layers: 2, dim: 64, heads: 2}\n"                                 // 8
    "  token_decoder: {layers: 1, dim: 32, heads: 1, ffn_dim: 96, prefix_length: 2}\n"  // 9
    "data:\n"                                                                           // 10
    "  train: shards/train-*.h5\n"                                                      // 11
    "train:\n"                                                                          // 12
    "  global_batch: 8\n"                                                               // 13
    "  micro_batch: 4\n";                                                               // 14

// `text` (kBlock by default) with the first `from` replaced by `to`.
std::string with(const std::string& from, const std::string& to, std::string text = kBlock) {
  size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) text.replace(at, from.size(), to);
  return text;
}

Config parse(const std::string& text, const std::vector<std::string>& ov = {}) {
  return bt::parse_config(text, "x.yaml", ov);
}

std::string parse_error(const std::string& text, const std::vector<std::string>& ov = {}) {
  return error_of([&] { parse(text, ov); });
}

// Non-embedding parameters of one decoder stack (docs/design.md §2.1): per layer 2 LayerNorms, QKV,
// dense, fc, proj (weights and biases), plus the final LayerNorm.
int64_t stack_params(const bt::DecoderConfig& d) {
  const int64_t D = d.dim, F = d.ffn_dim;
  const int64_t layer = 2 * 2 * D + (3 * D * D + 3 * D) + (D * D + D) + (D * F + F) + (F * D + D);
  return d.layers * layer + 2 * D;
}

int64_t non_embedding_params(const bt::ModelConfig& m) {
  if (m.is_block()) return stack_params(m.block_decoder) + stack_params(m.token_decoder);
  return stack_params(m.decoder);
}

std::vector<fs::path> config_files() {
  std::vector<fs::path> out;
  for (const char* sub : {"configs/paper", "configs/tiny"}) {
    fs::path dir = source_dir() / sub;
    if (!fs::is_directory(dir)) continue;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".yaml") out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

// ---- defaults -------------------------------------------------------------------------------

TEST(Config, DefaultsOfTheStruct) {
  Config c;
  EXPECT_EQ(c.name, "default");
  EXPECT_EQ(c.model.kind, "block");
  EXPECT_EQ(c.model.vocab_size, 50304);
  EXPECT_EQ(c.model.context_length, 2048);
  EXPECT_EQ(c.model.block_length, 4);
  EXPECT_EQ(c.model.embedder_kind, "lookup");
  EXPECT_DOUBLE_EQ(c.model.rotary_pct, 0.25);
  EXPECT_DOUBLE_EQ(c.model.rotary_base, 10000);
  EXPECT_DOUBLE_EQ(c.model.layernorm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.model.init_std, 0.02);
  EXPECT_DOUBLE_EQ(c.optim.lr, 6e-4);
  EXPECT_DOUBLE_EQ(c.optim.min_lr_ratio, 0.1);
  EXPECT_EQ(c.optim.warmup_steps, 3000);
  EXPECT_EQ(c.optim.schedule, "cosine");
  EXPECT_DOUBLE_EQ(c.optim.beta1, 0.9);
  EXPECT_DOUBLE_EQ(c.optim.beta2, 0.95);
  EXPECT_DOUBLE_EQ(c.optim.eps, 1e-8);
  EXPECT_DOUBLE_EQ(c.optim.weight_decay, 0.1);
  EXPECT_EQ(c.optim.decay, "all");
  EXPECT_DOUBLE_EQ(c.optim.grad_clip, 1.0);
  EXPECT_EQ(c.train.global_batch, 256);
  EXPECT_EQ(c.train.micro_batch, 8);
  EXPECT_EQ(c.train.device, "auto");
  EXPECT_EQ(c.train.precision, "bf16");
  EXPECT_EQ(c.train.zero, 0);
  EXPECT_EQ(c.train.seed, 1234u);
}

TEST(Config, MissingKeysTakeDefaults) {
  Config c = parse(kBlock);
  EXPECT_EQ(c.name, "t");
  EXPECT_EQ(c.source, "x.yaml");
  EXPECT_EQ(c.model.vocab_size, 512);
  EXPECT_EQ(c.model.block_decoder.ffn_dim, 256);  // 4 x dim when absent
  EXPECT_EQ(c.model.token_decoder.ffn_dim, 96);   // given
  EXPECT_EQ(c.model.token_decoder.prefix_length, 2);
  EXPECT_EQ(c.model.num_blocks(), 16);
  EXPECT_EQ(c.model.decoder, bt::DecoderConfig{});
  EXPECT_EQ(c.data.val, "");
  EXPECT_FALSE(c.data.random_pad_first_block);
  Config d;  // everything not in the file keeps the struct's default
  EXPECT_EQ(c.optim, d.optim);
  EXPECT_EQ(c.train.steps, d.train.steps);
  EXPECT_EQ(c.train.out_dir, d.train.out_dir);
  EXPECT_DOUBLE_EQ(c.model.rotary_pct, 0.25);
}

TEST(Config, EmptySectionIsAllowed) {
  Config c = parse(std::string(kBlock) + "optim:\n  # nothing yet\n");
  EXPECT_EQ(c.optim, Config{}.optim);
}

// ---- unknown keys, types, syntax ------------------------------------------------------------

TEST(Config, UnknownKeyNamesFileLineAndSuggestion) {
  std::string m = parse_error(with("  block_decoder:", "  block_decodr:"));
  EXPECT_EQ(m, "x.yaml:8: unknown key 'model.block_decodr' (did you mean 'model.block_decoder'?)");
  m = parse_error(with("model:\n", "modle:\n"));
  EXPECT_EQ(m, "x.yaml:2: unknown key 'modle' (did you mean 'model'?)");
  m = parse_error(with("{layers: 2, dim: 64", "{layer: 2, dim: 64"));
  EXPECT_EQ(m,
            "x.yaml:8: unknown key 'model.block_decoder.layer' (did you mean 'model.block_decoder.layers'?)");
  // The right name in the wrong section.
  m = parse_error(with("  vocab_size: 512\n", "  vocab_size: 512\n  lr: 0.1\n"));
  EXPECT_EQ(m, "x.yaml:5: unknown key 'model.lr' (did you mean 'optim.lr'?)");
  // prefix_length is a token-decoder key only.
  m = parse_error(with("heads: 2}", "heads: 2, prefix_length: 2}"));
  EXPECT_CONTAINS(m, "x.yaml:8: unknown key 'model.block_decoder.prefix_length'");
  // Nothing close: no suggestion.
  m = parse_error(std::string(kBlock) + "zzzzzzzz: 1\n");
  EXPECT_EQ(m, "x.yaml:15: unknown key 'zzzzzzzz'");
}

TEST(Config, WrongTypeNamesFileLineKeyAndValue) {
  EXPECT_EQ(parse_error(with("block_length: 4", "block_length: four")),
            "x.yaml:6: model.block_length: expected an integer, got 'four'");
  EXPECT_EQ(parse_error(with("block_length: 4", "block_length: 4.5")),
            "x.yaml:6: model.block_length: expected an integer, got '4.5'");
  EXPECT_EQ(parse_error(with("block_length: 4", "block_length: 99999999999")),
            "x.yaml:6: model.block_length: expected an integer, got '99999999999' (out of range)");
  EXPECT_EQ(parse_error(with("block_length: 4", "block_length: [4]")),
            "x.yaml:6: model.block_length: expected an integer, got a list");
  EXPECT_EQ(parse_error(with("block_length: 4", "block_length:")),
            "x.yaml:6: model.block_length: expected an integer, got nothing");
  EXPECT_EQ(parse_error(std::string(kBlock) + "optim:\n  lr: fast\n"),
            "x.yaml:16: optim.lr: expected a number, got 'fast'");
  EXPECT_EQ(parse_error(std::string(kBlock) + "optim:\n  lr: .nan\n"),
            "x.yaml:16: optim.lr: expected a number, got '.nan'");
  EXPECT_EQ(parse_error(std::string(kBlock) + "  deterministic: yes\n"),
            "x.yaml:15: train.deterministic: expected true or false, got 'yes'");
  EXPECT_EQ(parse_error(std::string(kBlock) + "  seed: -1\n"),
            "x.yaml:15: train.seed: expected a non-negative integer, got '-1'");
  EXPECT_EQ(parse_error(with("  train: shards/train-*.h5", "  train: [a, b]")),
            "x.yaml:11: data.train: expected a string, got a list");
  EXPECT_CONTAINS(parse_error(std::string(kBlock) + "optim:\n  betas: [0.9]\n"),
                  "x.yaml:16: optim.betas: expected a list of 2 numbers");
  EXPECT_CONTAINS(parse_error(std::string(kBlock) + "optim:\n  betas: [0.9, x]\n"),
                  "x.yaml:16: optim.betas: expected a list of 2 numbers like [0.9, 0.95], got 'x'");
  EXPECT_EQ(parse_error(with("  embedder: {kind: lookup, dim: 16}", "  embedder: 16")),
            "x.yaml:7: model.embedder: expected a mapping, got '16'");
  EXPECT_CONTAINS(parse_error("- a\n- b\n"), "x.yaml:1: expected a mapping of sections");
}

TEST(Config, DuplicateKey) {
  EXPECT_EQ(parse_error(with("  vocab_size: 512\n", "  vocab_size: 512\n  vocab_size: 1024\n")),
            "x.yaml:5: duplicate key 'model.vocab_size'");
}

TEST(Config, YamlSyntaxErrorHasLine) {
  std::string m =
      parse_error(with("  embedder: {kind: lookup, dim: 16}", "  embedder: {kind: lookup, dim: 16"));
  EXPECT_CONTAINS(m, "x.yaml:");
  EXPECT_CONTAINS(m, "YAML syntax error");
  m = parse_error("name: t\nmodel:\n  kind: block\n   vocab_size: 3\n");
  EXPECT_CONTAINS(m, "x.yaml:4: YAML syntax error");
}

TEST(Config, MissingFile) {
  EXPECT_EQ(error_of([] { bt::load_config("no/such/config.yaml"); }),
            "config file 'no/such/config.yaml' not found");
}

TEST(Config, LoadConfigFromFileUsesPathInMessages) {
  fs::path dir = fs::temp_directory_path() / ("bt_test_config_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::path file = dir / "bad.yaml";
  std::ofstream(file) << with("block_length: 4", "block_length: four");
  EXPECT_EQ(error_of([&] { bt::load_config(file.string()); }),
            file.string() + ":6: model.block_length: expected an integer, got 'four'");
  std::ofstream(file) << kBlock;
  Config c = bt::load_config(file.string(), {"train.steps=7"});
  EXPECT_EQ(c.source, file.string());
  EXPECT_EQ(c.train.steps, 7);
  fs::remove_all(dir);
}

// ---- invariants -----------------------------------------------------------------------------

TEST(Config, InvariantsNameTheKeyAndLine) {
  EXPECT_EQ(parse_error(with("dim: 16}", "dim: 8}")),
            "x.yaml:7: model.embedder.dim (8) x model.block_length (4) = 32 must equal "
            "model.block_decoder.dim (64); the concat embedder puts L_B token embeddings side by side "
            "(projection_method: projection_layer maps any embedder.dim to the block decoder's width)");
  // projection_layer: any embedder width
  EXPECT_NO_THROW(parse(with("dim: 16}", "dim: 8, projection_method: projection_layer}")));
  // summation: prefix_length (the expansion ratio) is L_B, filled in when absent
  EXPECT_EQ(parse_error(with("prefix_length: 2}", "prefix_length: 2, decoding_strategy: summation}")),
            "x.yaml:9: model.token_decoder.prefix_length (2) is the expansion ratio; decoding_strategy summation "
            "adds one expanded vector to each of the L_B inputs, so it must be model.block_length (4) or left out");
  EXPECT_EQ(parse(with(", prefix_length: 2}", ", decoding_strategy: summation}")).model.token_decoder.prefix_length,
            4);
  EXPECT_EQ(parse_error(with("  block_length: 4\n", "  block_length: 4\n  pad_token_id: 512\n")),
            "x.yaml:7: model.pad_token_id must be -1 (the tokenizer's EOS) or a token id below model.vocab_size "
            "(512), got 512");
  EXPECT_EQ(parse(with("  block_length: 4\n", "  block_length: 4\n  bos_token_id: 3\n")).model.bos_token_id, 3);
  // uptraining
  const std::string up = std::string(kBlock) + "load_from_vanilla:\n  enable: true\n";
  EXPECT_EQ(parse_error(up), "x.yaml:16: load_from_vanilla.checkpoint_path is empty: give the vanilla checkpoint "
                             "directory or its model.safetensors (ours, or an HF GPT-NeoX / Pythia file)");
  EXPECT_EQ(parse_error(up + "  checkpoint_path: v/model.safetensors\n  initialize_mean_embedder_projection: true\n"),
            "x.yaml:18: load_from_vanilla.initialize_mean_embedder_projection needs "
            "model.embedder.projection_method: projection_layer (the concat embedder has no projection)");
  EXPECT_EQ(parse_error(up + "  checkpoint_path: v\n  method: stack\n"),
            "x.yaml:18: load_from_vanilla.method must be one of partition | skip | duplicate (got 'stack')");
  EXPECT_EQ(parse_error(with("context_length: 64", "context_length: 66")),
            "x.yaml:5: model.context_length (66) must be divisible by model.block_length (4)");
  EXPECT_EQ(parse_error(with("dim: 64, heads: 2}", "dim: 64, heads: 3}")),
            "x.yaml:8: model.block_decoder.heads (3) must divide model.block_decoder.dim (64)");
  // hd = 32 / 1 = 32, int(32 * 0.3) = 9 rotary dims: odd.
  EXPECT_CONTAINS(parse_error(with("  vocab_size: 512\n", "  vocab_size: 512\n  rotary_pct: 0.3\n")),
                  "x.yaml:5: model.rotary_pct (0.3) gives an odd rotary dim 9 for model.block_decoder");
  EXPECT_EQ(parse_error(with("prefix_length: 2", "prefix_length: 0")),
            "x.yaml:9: model.token_decoder.prefix_length must be at least 1 (got 0)");
  EXPECT_EQ(parse_error(with("micro_batch: 4", "micro_batch: 3")),
            "x.yaml:13: train.global_batch (8) must be divisible by train.micro_batch (3)");
  EXPECT_EQ(parse_error(with("layers: 1,", "layers: 0,")),
            "x.yaml:9: model.token_decoder.layers must be positive (got 0)");
  EXPECT_EQ(parse_error(std::string(kBlock) + "optim:\n  warmup_steps: -1\n"),
            "x.yaml:16: optim.warmup_steps must be >= 0 (got -1)");
  EXPECT_EQ(parse_error(std::string(kBlock) + "optim:\n  min_lr_ratio: 1.5\n"),
            "x.yaml:16: optim.min_lr_ratio must be in [0, 1] (got 1.5)");
  EXPECT_EQ(parse_error(std::string(kBlock) + "optim:\n  betas: [0.9, 1.0]\n"),
            "x.yaml:16: optim.betas must both be in [0, 1) (got [0.9, 1])");
  // train.stop_step: a stop inside the schedule of train.steps
  EXPECT_EQ(parse_error(with("micro_batch: 4", "micro_batch: 4\n  steps: 100\n  stop_step: 101")),
            "x.yaml:16: train.stop_step (101) is past train.steps (100), the length of the lr schedule; raise "
            "train.steps or lower train.stop_step (0: stop at train.steps)");
  EXPECT_EQ(parse(with("micro_batch: 4", "micro_batch: 4\n  steps: 100\n  stop_step: 40")).train.end_step(), 40);
  EXPECT_EQ(parse(with("micro_batch: 4", "micro_batch: 4\n  steps: 100")).train.end_step(), 100);
  EXPECT_EQ(parse_error(with("micro_batch: 4", "micro_batch: 4\n  checkpoint_every: 30\n  keep_every: 100")),
            "x.yaml:16: train.keep_every (100) must be a multiple of train.checkpoint_every (30): only steps with a "
            "checkpoint can be kept");
  EXPECT_EQ(parse_error(with("micro_batch: 4", "micro_batch: 4\n  eval_tasks: piqa",
                             with("  train: shards/train-*.h5\n", "  train: shards/train-*.h5\n  task_data: \"\"\n"))),
            "x.yaml:12: train.eval_tasks is set (piqa) but data.task_data is empty: give the directory of the tasks' "
            "files (docs/evaluation.md)");
  EXPECT_EQ(parse_error(with("micro_batch: 4", "micro_batch: 4\n  eval_tasks_limit: -1")),
            "x.yaml:15: train.eval_tasks_limit must be >= 0 (0: every document; a count, or a fraction below 1; "
            "got -1)");
  // A key the file does not have: the file name only.
  EXPECT_EQ(parse_error(with("  block_decoder: {layers: 2, dim: 64, heads: 2}\n", "")),
            "x.yaml: model.block_decoder.layers must be positive (got 0)");
  EXPECT_CONTAINS(parse_error(with("  train: shards/train-*.h5\n", "")), "x.yaml: data.train is empty");
}

TEST(Config, EnumsAreChecked) {
  EXPECT_EQ(parse_error(with("kind: block", "kind: blok")),
            "x.yaml:3: model.kind must be one of block | vanilla (got 'blok')");
  EXPECT_EQ(parse_error(with("kind: lookup", "kind: roberta")),
            "x.yaml:7: model.embedder.kind must be one of lookup (got 'roberta')");
  EXPECT_EQ(parse_error(with("dim: 16}", "dim: 16, projection_method: mean}")),
            "x.yaml:7: model.embedder.projection_method must be one of concat | projection_layer (got 'mean')");
  EXPECT_EQ(parse_error(with("prefix_length: 2}", "prefix_length: 2, decoding_strategy: cross_attention}")),
            "x.yaml:9: model.token_decoder.decoding_strategy must be one of prefix | summation (got "
            "'cross_attention')");
  EXPECT_CONTAINS(parse_error(std::string(kBlock) + "optim:\n  schedule: linear\n"),
                  "x.yaml:16: optim.schedule must be one of cosine | constant");
  EXPECT_CONTAINS(parse_error(std::string(kBlock) + "optim:\n  decay: some\n"),
                  "x.yaml:16: optim.decay must be one of all | matrices");
  EXPECT_CONTAINS(parse_error(std::string(kBlock) + "  device: tpu\n"),
                  "x.yaml:15: train.device must be one of auto | cpu | cuda");
  EXPECT_CONTAINS(parse_error(std::string(kBlock) + "  precision: fp16\n"),
                  "x.yaml:15: train.precision must be one of bf16 | fp32");
  EXPECT_EQ(parse_error(std::string(kBlock) + "  zero: 2\n"), "x.yaml:15: train.zero must be 0 or 1 (got 2)");
  EXPECT_EQ(
      parse_error(with("  train: shards/train-*.h5", "  synthetic: zipf:3")),
      "x.yaml:11: data.synthetic must be repeat:<period>[:<tokens>] or random[:<tokens>] (got 'zipf:3')");
  EXPECT_NO_THROW(parse(with("  train: shards/train-*.h5", "  synthetic: random:4096")));
  EXPECT_EQ(parse_error(std::string(kBlock) + "  eval_every: 0\n"),
            "x.yaml:15: train.eval_every must be positive (got 0)");
}

TEST(Config, KindSpecificSectionsMustNotBeMixed) {
  std::string stray =
      with("  block_length: 4\n", "  block_length: 4\n  decoder: {layers: 1, dim: 32, heads: 1}\n");
  EXPECT_EQ(parse_error(stray),
            "x.yaml:7: model.decoder is set but model.kind is block; remove it "
            "(only vanilla models use it)");
  const char* vanilla =
      "name: v\nmodel:\n  kind: vanilla\n  vocab_size: 512\n  context_length: 64\n"
      "  decoder: {layers: 2, dim: 64, heads: 2}\n"
      "  token_decoder: {layers: 1, dim: 32, heads: 1}\ndata:\n  synthetic: repeat:7\n";
  EXPECT_EQ(parse_error(vanilla),
            "x.yaml:7: model.token_decoder is set but model.kind is vanilla; remove it "
            "(only block models use it)");
}

TEST(Config, ValidateOfACodeBuiltConfig) {
  Config c = parse(kBlock);
  EXPECT_NO_THROW(bt::validate(c));
  c.train.micro_batch = 3;
  EXPECT_EQ(error_of([&] { bt::validate(c); }),
            "x.yaml: train.global_batch (8) must be divisible by train.micro_batch (3)");
  c.source = "";
  EXPECT_EQ(error_of([&] { bt::validate(c); }),
            "train.global_batch (8) must be divisible by train.micro_batch (3)");
}

// ---- overrides ------------------------------------------------------------------------------

TEST(Config, OverridesApply) {
  Config c = parse(kBlock, {"optim.lr=3e-4", "model.block_decoder.layers=4", "optim.betas=[0.8, 0.99]",
                            "train.deterministic=true", "data.val=shards/val-*.h5", "name=other",
                            "train.seed=18446744073709551615", "train.steps=123456789012"});
  EXPECT_DOUBLE_EQ(c.optim.lr, 3e-4);
  EXPECT_EQ(c.model.block_decoder.layers, 4);
  EXPECT_EQ(c.model.block_decoder.dim, 64);  // the rest of the section is untouched
  EXPECT_DOUBLE_EQ(c.optim.beta1, 0.8);
  EXPECT_DOUBLE_EQ(c.optim.beta2, 0.99);
  EXPECT_TRUE(c.train.deterministic);
  EXPECT_EQ(c.data.val, "shards/val-*.h5");
  EXPECT_EQ(c.name, "other");
  EXPECT_EQ(c.train.seed, 18446744073709551615ull);
  EXPECT_EQ(c.train.steps, 123456789012ll);
}

TEST(Config, OverridesOrderSectionsAndOddValues) {
  // Later wins; a whole section as a flow map; a glob that YAML would read as an alias.
  Config c = parse(kBlock, {"train.steps=5", "train.steps=6", "model.embedder={kind: lookup, dim: 32}",
                            "model.block_decoder.dim=128", "data.train=*.h5", "data.synthetic=repeat:3"});
  EXPECT_EQ(c.train.steps, 6);
  EXPECT_EQ(c.model.embedder_dim, 32);
  EXPECT_EQ(c.model.block_decoder.dim, 128);
  EXPECT_EQ(c.model.block_decoder.ffn_dim, 512);  // still 4 x dim
  EXPECT_EQ(c.data.train, "*.h5");
  EXPECT_EQ(c.data.synthetic, "repeat:3");
  // A section the file does not have; an empty value for a string.
  c = parse(kBlock, {"optim.schedule=constant", "data.train=", "data.synthetic=repeat:5"});
  EXPECT_EQ(c.optim.schedule, "constant");
  EXPECT_EQ(c.data.train, "");
  // Overrides on an empty file build the config.
  c = parse(
      "", {"model.kind=vanilla", "model.decoder={layers: 1, dim: 32, heads: 1}", "data.synthetic=repeat:2"});
  EXPECT_EQ(c.model.decoder.ffn_dim, 128);
}

TEST(Config, BadOverrides) {
  EXPECT_EQ(parse_error(kBlock, {"model.foo=3"}), "override 'model.foo=3': unknown key 'model.foo'");
  EXPECT_EQ(parse_error(kBlock, {"model.block_decodr.layers=3"}),
            "override 'model.block_decodr.layers=3': unknown key 'model.block_decodr' "
            "(did you mean 'model.block_decoder'?)");
  EXPECT_EQ(
      parse_error(kBlock, {"optim.betas.0=0.8"}),
      "override 'optim.betas.0=0.8': unknown key 'optim.betas.0' ('optim.betas' is a value, not a section)");
  EXPECT_EQ(parse_error(kBlock, {"model.block_length=four"}),
            "override 'model.block_length=four': model.block_length: expected an integer, got 'four'");
  EXPECT_EQ(
      parse_error(kBlock, {"optim.betas=0.9"}),
      "override 'optim.betas=0.9': optim.betas: expected a list of 2 numbers like [0.9, 0.95], got '0.9'");
  EXPECT_CONTAINS(parse_error(kBlock, {"optim.lr"}), "override 'optim.lr': expected section.key=value");
  EXPECT_CONTAINS(parse_error(kBlock, {"=3"}), "override '=3': expected section.key=value");
  EXPECT_CONTAINS(parse_error(kBlock, {"optim..lr=3"}), "override 'optim..lr=3': expected section.key=value");
  // A section override brings its own unknown keys and invariants; both name the override.
  EXPECT_EQ(parse_error(kBlock, {"model.embedder={kind: lookup, dimm: 16}"}),
            "override 'model.embedder={kind: lookup, dimm: 16}': unknown key 'model.embedder.dimm' "
            "(did you mean 'model.embedder.dim'?)");
  EXPECT_CONTAINS(parse_error(kBlock, {"model.block_length=8"}),
                  "override 'model.block_length=8': model.embedder.dim (16) x model.block_length (8)");
  EXPECT_CONTAINS(parse_error(kBlock, {"train.micro_batch=3"}),
                  "override 'train.micro_batch=3': train.global_batch (8) must be divisible");
}

// Values quoted in messages may hold line breaks (found by tests/fuzz/fuzz_config.cpp); the
// message stays one line, with them escaped.
TEST(Config, MessagesQuotingLineBreaksStayOneLine) {
  EXPECT_EQ(parse_error(kBlock, {"model.foo\nbar=3"}), "override 'model.foo\\nbar=3': unknown key 'model.foo\\nbar'");
  EXPECT_EQ(parse_error(with("  block_length: 4\n", "  block_length: |\n    4\n    5\n")),
            "x.yaml:6: model.block_length: expected an integer, got '4\\n5\\n'");
  EXPECT_EQ(parse_error(with("kind: block", "kind: \"blo\\r\\nck\\x01\"")),
            "x.yaml:3: model.kind must be one of block | vanilla (got 'blo\\r\\nck\\x01')");
  Config c = parse(kBlock);
  c.train.device = "cpu\ngpu";
  EXPECT_EQ(error_of([&] { bt::validate(c); }), "x.yaml: train.device must be one of auto | cpu | cuda (got 'cpu\\ngpu')");
}

// ---- to_yaml, hash --------------------------------------------------------------------------

TEST(Config, RoundTripEveryFieldChanged) {
  Config c;
  c.name = "all fields: \"quoted\"";
  c.model.kind = "block";
  c.model.vocab_size = 1000;
  c.model.context_length = 96;
  c.model.block_length = 8;
  c.model.embedder_dim = 12;
  c.model.projection_method = "projection_layer";
  c.model.block_decoder = {3, 96, 3, 100, 0};
  c.model.token_decoder = {2, 40, 5, 77, 8};
  c.model.decoding_strategy = "summation";
  c.model.pad_token_id = 7;
  c.model.bos_token_id = 0;
  c.load_from_vanilla = {true, "v/model.safetensors", "skip", false, false};
  c.model.rotary_pct = 0.5;
  c.model.rotary_base = 12345.678;
  c.model.layernorm_eps = 1.0 / 3.0 * 1e-6;
  c.model.init_std = 0.1 + 0.2;  // 0.30000000000000004
  c.data = {"a/train-*.h5", "*.h5", true, true, "repeat:9"};
  c.data.task_data = "task files";
  c.optim.lr = 1e-3 / 7;
  c.optim.min_lr_ratio = 0;
  c.optim.warmup_steps = 0;
  c.optim.schedule = "constant";
  c.optim.beta1 = 0.85;
  c.optim.beta2 = 0.999;
  c.optim.eps = 1e-12;
  c.optim.weight_decay = 0;
  c.optim.decay = "matrices";
  c.optim.grad_clip = 0;
  c.train.steps = 1ll << 40;
  c.train.stop_step = 1ll << 39;
  c.train.eval_tasks = "piqa,arc_easy";
  c.train.eval_tasks_every = 5;
  c.train.eval_tasks_limit = 0.25;
  c.train.keep_every = 9;
  c.train.global_batch = 12;
  c.train.micro_batch = 3;
  c.train.device = "cpu";
  c.train.precision = "fp32";
  c.train.zero = 1;
  c.train.seed = 18446744073709551615ull;
  c.train.log_every = 1;
  c.train.eval_every = 7;
  c.train.eval_batches = 1;
  c.train.checkpoint_every = 3;
  c.train.keep_checkpoints = 1;
  c.train.out_dir = "runs/x y";
  c.train.deterministic = true;
  c.source = "mem";
  ASSERT_NO_THROW(bt::validate(c));
  std::string y = bt::to_yaml(c);
  Config back = bt::parse_config(y, "mem");
  EXPECT_EQ(back, c) << y;
  EXPECT_EQ(bt::to_yaml(back), y);
  EXPECT_EQ(bt::config_hash(back), bt::config_hash(c));
  // Readable: doubles in their shortest form, exponents with a dot (YAML 1.1 readers).
  EXPECT_CONTAINS(y, "  init_std: 0.30000000000000004\n");
  EXPECT_CONTAINS(y, "  eps: 1.0e-12\n");
  EXPECT_CONTAINS(y, "  betas: [0.85, 0.999]\n");
  EXPECT_CONTAINS(y, "  train: a/train-*.h5\n");
  EXPECT_CONTAINS(y, "  val: \"*.h5\"\n");
}

TEST(Config, RoundTripVanillaAndLayout) {
  Config c = parse(
      "name: v\nmodel:\n  kind: vanilla\n  vocab_size: 512\n  context_length: 64\n"
      "  decoder: {layers: 2, dim: 64, heads: 2}\ndata:\n  synthetic: repeat:7\n");
  std::string y = bt::to_yaml(c);
  EXPECT_EQ(bt::parse_config(y, "x.yaml"), c) << y;
  EXPECT_CONTAINS(y, "  decoder: {layers: 2, dim: 64, heads: 2, ffn_dim: 256}\n");
  EXPECT_EQ(y.find("token_decoder"), std::string::npos) << y;  // block-only sections left out
  EXPECT_CONTAINS(y, "  synthetic: \"repeat:7\"\n");
  y = bt::to_yaml(parse(kBlock));
  EXPECT_EQ(y.rfind("name: t\nmodel:\n  kind: block\n", 0), 0u) << y;
  EXPECT_CONTAINS(y, "  embedder: {kind: lookup, dim: 16, projection_method: concat}\n");
  EXPECT_CONTAINS(y, "  token_decoder: {layers: 1, dim: 32, heads: 1, ffn_dim: 96, prefix_length: 2, "
                     "decoding_strategy: prefix}\n");
  EXPECT_CONTAINS(y, "  pad_token_id: -1\n  bos_token_id: -1\nload_from_vanilla:\n  enable: false\n");
  EXPECT_EQ(y.find("  decoder:"), std::string::npos) << y;
  for (const char* key : {"\ndata:\n", "\noptim:\n", "\ntrain:\n", "  rotary_base: 10000.0\n",
                          "  grad_clip: 1.0\n", "  layernorm_eps: 1.0e-05\n", "  betas: [0.9, 0.95]\n",
                          "  seed: 1234\n", "  deterministic: false\n", "  random_pad_first_block: false\n"})
    EXPECT_CONTAINS(y, key);
}

TEST(Config, HashIsFnv1aOfTheYaml) {
  Config c = parse(kBlock);
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : bt::to_yaml(c)) h = (h ^ ch) * 1099511628211ull;
  EXPECT_EQ(bt::config_hash(c), h);
  Config d = c;
  d.source = "elsewhere.yaml";  // where it came from does not matter
  EXPECT_EQ(bt::config_hash(d), h);
  d.optim.lr = std::nextafter(d.optim.lr, 1.0);  // one ulp does
  EXPECT_NE(bt::config_hash(d), h);
}

// ---- the files in configs/ ------------------------------------------------------------------

TEST(ConfigFiles, EveryFileLoadsValidatesAndRoundTrips) {
  std::vector<fs::path> files = config_files();
  ASSERT_GE(files.size(), 16u) << "configs/ not found under " << source_dir();
  for (const fs::path& f : files) {
    SCOPED_TRACE(f.string());
    Config c;
    ASSERT_NO_THROW(c = bt::load_config(f.string())) << error_of([&] { bt::load_config(f.string()); });
    EXPECT_NO_THROW(bt::validate(c));
    Config back = bt::parse_config(bt::to_yaml(c), c.source);
    EXPECT_EQ(back, c);
    const std::string stem = f.stem().string();
    // The values of each paper file against the official configs: tests/unit/test_paper_configs.py.
    if (f.parent_path().filename() == "paper") {
      EXPECT_EQ(c.name, stem);
      EXPECT_EQ(c.train.out_dir, "runs/" + stem);
      EXPECT_EQ(c.data.train, "data/pile/train-*.h5");
      EXPECT_EQ(c.data.val, "data/pile/val-*.h5");
      EXPECT_GT(c.train.stop_step, 0) << "the official files all carry stop_steps";
    }
  }
}

// Non-embedding sizes of docs/design.md §2.3 (the model tests check the real parameter table).
TEST(ConfigFiles, NonEmbeddingParameterCounts) {
  const std::map<std::string, double> millions = {
      {"block_main_b4_5", 4.74},    {"block_main_b4_19", 18.9},   {"block_main_b4_85", 85.1},
      {"block_main_b4_300", 302.3}, {"block_main_b4_800", 805.7}, {"block_main_b4_1.2b", 1208.6},
      {"vanilla_31", 4.74},         {"vanilla_70", 18.9},         {"vanilla_160", 85.1},
      {"vanilla_410", 302.3},       {"block_b1_85", 85.1},        {"block_b2_85", 85.1},
      {"block_b4_85", 85.1},        {"block_b8_85", 85.1},        {"block_vanilla_ablation_b1_85", 85.1},
      {"block_main_b4_85_flop_v70", 85.1}, {"block_main_b4_300_flop_v70", 302.3},
      {"block_main_b4_800_flop_v70", 805.7}, {"block_main_b4_1.2b_flop_v70", 1208.6},
  };
  for (const auto& [name, expect] : millions) {
    SCOPED_TRACE(name);
    Config c = bt::load_config((source_dir() / "configs/paper" / (name + ".yaml")).string());
    double got = non_embedding_params(c.model) / 1e6;
    EXPECT_NEAR(got, expect, expect * 0.005) << got << "M";
  }
  // The tiny pair has the same non-embedding size: 4 layers of width 256.
  Config b = bt::load_config((source_dir() / "configs/tiny/block_b4.yaml").string());
  Config v = bt::load_config((source_dir() / "configs/tiny/vanilla.yaml").string());
  EXPECT_EQ(non_embedding_params(b.model), non_embedding_params(v.model) + 2 * 256);  // one more final LN
  EXPECT_EQ(non_embedding_params(v.model), 4 * (12 * 256 * 256 + 13 * 256) + 2 * 256);
}

TEST(ConfigFiles, TinyConfigsAreAsDesigned) {
  Config b = bt::load_config((source_dir() / "configs/tiny/block_b4.yaml").string());
  EXPECT_EQ(b.name, "tiny_block_b4");
  EXPECT_EQ(b.model.vocab_size, 4096);
  EXPECT_EQ(b.model.context_length, 256);
  EXPECT_EQ(b.model.block_length, 4);
  EXPECT_EQ(b.model.embedder_dim, 64);
  EXPECT_EQ(b.model.block_decoder, (bt::DecoderConfig{2, 256, 8, 1024, 0}));
  EXPECT_EQ(b.model.token_decoder, (bt::DecoderConfig{2, 256, 8, 1024, 2}));
  Config v = bt::load_config((source_dir() / "configs/tiny/vanilla.yaml").string());
  EXPECT_EQ(v.name, "tiny_vanilla");
  EXPECT_EQ(v.model.kind, "vanilla");
  EXPECT_EQ(v.model.vocab_size, 4096);
  EXPECT_EQ(v.model.context_length, 256);
  EXPECT_EQ(v.model.decoder, (bt::DecoderConfig{4, 256, 8, 1024, 0}));
  for (const Config* c : {&b, &v}) {
    EXPECT_EQ(c->train.global_batch, 16);
    EXPECT_EQ(c->train.micro_batch, 16);
    EXPECT_DOUBLE_EQ(c->optim.lr, 1e-3);
    EXPECT_EQ(c->optim.warmup_steps, 50);
    EXPECT_EQ(c->train.device, "auto");
    EXPECT_EQ(c->train.precision, "fp32");
    EXPECT_EQ(c->train.steps, 2000);
    EXPECT_EQ(c->train.eval_every, 200);
    EXPECT_EQ(c->train.eval_batches, 8);
    EXPECT_EQ(c->train.log_every, 10);
    EXPECT_EQ(c->train.checkpoint_every, 500);
    EXPECT_EQ(c->train.out_dir, "runs/" + c->name);
    EXPECT_EQ(c->data.train, "out/quickstart/data/train-*.h5");
    EXPECT_EQ(c->data.val, "out/quickstart/data/val-*.h5");
  }
}

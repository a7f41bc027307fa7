// The experiment config (docs/design.md §7): one YAML file per experiment, `section.key=value`
// overrides, strict validation. Every field has the default shown in docs/design.md §7's example where
// one exists; a config file only has to name what differs.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace bt {

struct DecoderConfig {
  int layers = 0;
  int dim = 0;
  int heads = 0;
  int ffn_dim = 0;        // 4 * dim when 0 in the file
  int prefix_length = 0;  // token decoder only: R

  friend bool operator==(const DecoderConfig&, const DecoderConfig&) = default;
};

struct ModelConfig {
  std::string kind = "block";  // block | vanilla
  int vocab_size = 50304;      // V
  int context_length = 2048;   // L
  int block_length = 4;        // L_B (block only)
  std::string embedder_kind = "lookup";
  int embedder_dim = 0;        // E, the lookup table's width (block only); D_B / L_B with concat
  // The official embedder option: concat (the L_B vectors side by side: D_B = L_B * E) or
  // projection_layer (Conv1d(E, D_B, kernel L_B, stride L_B) with bias).
  std::string projection_method = "concat";
  DecoderConfig block_decoder; // block only
  DecoderConfig token_decoder; // block only; prefix_length is R (the official expansion_ratio)
  // The official token-decoder option: prefix (R expanded vectors in front of the block's tokens)
  // or summation (L_B expanded vectors added to [e(BOS), e(t_1), ..]; R = L_B).
  std::string decoding_strategy = "prefix";
  DecoderConfig decoder;       // vanilla only
  double rotary_pct = 0.25;
  double rotary_base = 10000;
  double layernorm_eps = 1e-5;
  double init_std = 0.02;
  // Special tokens (HF config names); -1: the tokenizer's EOS, as the official pipeline sets them
  // for Pythia's tokenizer (no pad token: pad = eos; GPT-NeoX's bos = eos). pad_token_id fills the
  // loader's pads and the front of prompts in generation; bos_token_id starts each token-decoder
  // row of the summation strategy. with_token_ids() resolves them.
  int pad_token_id = -1;
  int bos_token_id = -1;

  bool is_block() const { return kind == "block"; }
  int num_blocks() const { return context_length / block_length; }  // N
  bool summation() const { return decoding_strategy == "summation"; }
  bool projection_layer() const { return projection_method == "projection_layer"; }

  friend bool operator==(const ModelConfig&, const ModelConfig&) = default;
};

struct DataConfig {
  std::string train;  // glob of shards
  std::string val;    // glob of shards (may be empty: no validation)
  bool random_pad_first_block = false;
  bool pad_to_block_boundary = false;
  std::string synthetic;  // when train is empty: a synthetic stream (tests),
                          // "repeat:<period>[:<tokens>]" or "random[:<tokens>]" (data/token_stream.h)
  bool verify_checksums = true;  // check each shard's XXH3 against manifest.json when the run opens it
  std::string task_data = "tasks";  // the zero-shot tasks' files (train.eval_tasks; docs/evaluation.md)

  friend bool operator==(const DataConfig&, const DataConfig&) = default;
};

struct OptimConfig {
  double lr = 6e-4;
  double min_lr_ratio = 0.1;
  int warmup_steps = 3000;
  std::string schedule = "cosine";  // cosine | constant
  double beta1 = 0.9, beta2 = 0.95;  // `betas: [b1, b2]` in YAML
  double eps = 1e-8;
  double weight_decay = 0.1;
  std::string decay = "all";  // all | matrices
  double grad_clip = 1.0;     // 0 disables clipping

  friend bool operator==(const OptimConfig&, const OptimConfig&) = default;
};

struct TrainConfig {
  int64_t steps = 1000;   // the length of the lr schedule
  int64_t stop_step = 0;  // stop after this step (with a checkpoint) under the schedule of `steps`; 0: at `steps`
  int global_batch = 256;
  int micro_batch = 8;
  std::string device = "auto";     // auto | cpu | cuda
  std::string precision = "bf16";  // bf16 | fp32 (CPU always computes in fp32)
  int zero = 0;                    // 0 | 1
  uint64_t seed = 1234;
  int log_every = 10;
  int eval_every = 1000;
  int eval_batches = 50;
  // Zero-shot tasks during training (the official ZeroshotEvalCallback): comma-separated task
  // names ("" = none), every eval_tasks_every steps and at the last step, on the first
  // eval_tasks_limit documents of each (0: all; below 1: that fraction).
  std::string eval_tasks;
  int eval_tasks_every = 1000;
  double eval_tasks_limit = 0;
  int checkpoint_every = 10000;  // 0: only at the end (and when stopped)
  int keep_checkpoints = 3;      // <= 0: keep all
  int keep_every = 0;            // > 0: also keep every checkpoint whose step is a multiple of this
  std::string out_dir = "runs/default";
  bool deterministic = false;

  // The step the run ends at: stop_step when set, else steps.
  int64_t end_step() const { return stop_step > 0 ? stop_step : steps; }

  friend bool operator==(const TrainConfig&, const TrainConfig&) = default;
};

// Uptraining (the paper's uptraining experiments; the official `load_from_vanilla`): a block model
// initialised from a vanilla checkpoint, ours or an HF GPT-NeoX / Pythia safetensors file.
struct LoadFromVanillaConfig {
  bool enable = false;
  std::string checkpoint_path;  // a checkpoint directory or a model.safetensors file
  // partition: block decoder <- vanilla layers 0..Lb-1, token decoder <- Lb..Lb+Lt-1;
  // skip: both <- vanilla layers 0, 2, 4, ...; duplicate: both <- vanilla layers 0..L-1.
  std::string method = "partition";
  bool initialize_mean_embedder_projection = false;  // projection_layer = the mean of the L_B vectors
  bool initialize_identity_expansion_layer = false;  // each expanded vector = the context embedding

  friend bool operator==(const LoadFromVanillaConfig&, const LoadFromVanillaConfig&) = default;
};

struct Config {
  std::string name = "default";
  ModelConfig model;
  LoadFromVanillaConfig load_from_vanilla;
  DataConfig data;
  OptimConfig optim;
  TrainConfig train;
  std::string source;  // the file it was loaded from ("" when built in code)

  // Field-wise, `source` included (compare to_yaml texts to ignore where a config came from).
  friend bool operator==(const Config&, const Config&) = default;
};

// Loads a YAML file, applies `section.key=value` overrides in order, validates. Any problem is
// a bt::Error with a one-line message naming the key (and, for file values, the file and line).
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// Parses YAML text (path is used in messages only).
Config parse_config(const std::string& yaml_text, const std::string& path,
                    const std::vector<std::string>& overrides = {});
// Checks the invariants (docs/design.md §7) that do not depend on the number of ranks.
void validate(const Config& c);
// The resolved config as YAML (every key, defaults included); parse_config(to_yaml(c)) == c.
std::string to_yaml(const Config& c);
// A stable hash of the resolved config (of to_yaml), for rank agreement and checkpoints.
uint64_t config_hash(const Config& c);
// m with pad_token_id and bos_token_id set: -1 becomes eos_id (the tokenizer's EOS); eos_id < 0
// leaves them unresolved (-1).
ModelConfig with_token_ids(ModelConfig m, int eos_id);

}  // namespace bt

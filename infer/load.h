// Loading a model for inference (`bt generate`, `bt eval`, `bt bench infer`): from a checkpoint
// directory (config.yaml + model.safetensors), or from a bare safetensors file in the official
// naming plus a config that describes it (official released checkpoints).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "model/backend.h"
#include "model/config.h"
#include "model/model.h"

namespace bt {

struct InferenceModel {
  std::string dir;      // the checkpoint directory ("" for a bare safetensors file)
  std::string weights;  // the safetensors file that was loaded
  Config config;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Model> model;
  std::vector<std::string> ignored;  // tensors in the file that the model does not use
  // The EOS that the config's special tokens left at -1 (model.pad_token_id, model.bos_token_id)
  // stand for: the one the checkpoint's training data used (trainer_state.json), else the EOS of
  // the checkpoint's tokenizer (find_tokenizer), else -1 (unknown; set it before
  // load_inference_weights when the caller knows better). The model is built with them resolved.
  int eos_id = -1;
};

// ckpt: a checkpoint directory / latest link / run directory, or a .safetensors file (then
// config_path is required). A checkpoint's files are verified against its checksums.json. config_path, when given, overrides the checkpoint's config.yaml.
// device: auto | cpu | cuda. max_batch: 0 for cached decoding only, else the micro batch of
// Model::forward (eval, naive generation).
InferenceModel load_inference_model(const std::string& ckpt, const std::string& config_path,
                                    const std::vector<std::string>& overrides, const std::string& device,
                                    int max_batch);
// The same in two steps: resolve the checkpoint, its config and the backend; then build the model
// with a micro batch known only after reading the config, and load the weights. precision: ""
// (the config's train.precision on CUDA, fp32 on the CPU), or fp32 | bf16 | fp64 (CPU only).
InferenceModel open_inference_model(const std::string& ckpt, const std::string& config_path,
                                    const std::vector<std::string>& overrides, const std::string& device,
                                    const std::string& precision = "");
void load_inference_weights(InferenceModel& m, int max_batch);

// The tokenizer for a checkpoint: `spec` when given ("byte", "spm:PATH", "hf:PATH" or a directory
// with tokenizer.json), else the checkpoint's own tokenizer.json, else the one of the shards it
// was trained on. Returns null when none is found (or the data holds bare token ids). A tokenizer
// whose vocabulary is larger than model.vocab_size is refused, naming it.
std::unique_ptr<Tokenizer> find_tokenizer(const InferenceModel& m, const std::string& spec);

// The name ("byte", "spm:<sha256>", ...) in the checkpoint directory's tokenizer.json: the
// tokenizer of the data it was trained on. "" for a bare weights file or when it has none.
std::string checkpoint_tokenizer_name(const InferenceModel& m);

// "a, b, c (and N more)"
std::string summarize_names(const std::vector<std::string>& names, size_t max_shown = 6);

}  // namespace bt

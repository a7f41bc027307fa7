// Loading a model and its tokenizer for inference: see load.h.
#include "infer/load.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "data/token_stream.h"
#include "data/tokenizer.h"
#include "model/checkpoint.h"

namespace bt {

namespace fs = std::filesystem;

std::string summarize_names(const std::vector<std::string>& names, size_t max_shown) {
  std::string s;
  for (size_t i = 0; i < names.size() && i < max_shown; ++i) s += (i ? ", " : "") + names[i];
  if (names.size() > max_shown) s += ", ... (" + std::to_string(names.size() - max_shown) + " more)";
  return s;
}

InferenceModel load_inference_model(const std::string& ckpt, const std::string& config_path,
                                    const std::vector<std::string>& overrides, const std::string& device,
                                    int max_batch) {
  InferenceModel r = open_inference_model(ckpt, config_path, overrides, device);
  load_inference_weights(r, max_batch);
  return r;
}

InferenceModel open_inference_model(const std::string& ckpt, const std::string& config_path,
                                    const std::vector<std::string>& overrides, const std::string& device,
                                    const std::string& precision) {
  InferenceModel r;
  const bool bare = fs::is_regular_file(ckpt) && fs::path(ckpt).extension() == ".safetensors";
  if (bare) {
    BT_CHECK(!config_path.empty(), ckpt, " is a bare weights file: give --config with the model it holds");
    r.weights = ckpt;
    r.config = load_config(config_path, overrides);
  } else {
    r.dir = resolve_checkpoint(ckpt);
    r.weights = (fs::path(r.dir) / "model.safetensors").string();
    BT_CHECK(fs::exists(r.weights), "checkpoint ", r.dir, " has no model.safetensors");
    if (!verify_checkpoint(r.dir))
      log_warn("checkpoint {} has no checksums.json (written by an older bt): its files are not verified", r.dir);
    r.config = config_path.empty() ? load_config((fs::path(r.dir) / "config.yaml").string(), overrides)
                                   : load_config(config_path, overrides);
  }
  BackendOptions bo;
  bo.device = device;
  bo.precision = r.config.train.precision;
  const bool on_cpu = device == "cpu" || (device == "auto" && !cuda_available());
  if (on_cpu) bo.precision = "fp32";
  if (!precision.empty()) {
    BT_CHECK(precision == "fp32" || precision == "bf16" || precision == "fp64", "--precision ", precision,
             ": expected fp32, bf16 or fp64");
    BT_CHECK(precision != "fp64" || on_cpu, "--precision fp64 runs on the CPU only: add --device cpu");
    BT_CHECK(precision != "bf16" || !on_cpu, "--precision bf16 needs the CUDA backend (the CPU computes in fp32)");
    bo.precision = precision;
    if (on_cpu) bo.device = "cpu";
  }
  r.backend = make_backend(bo);
  // The EOS of the data the checkpoint was trained on, else of its tokenizer.
  if (!r.dir.empty()) {
    try {
      const nlohmann::json st = load_trainer_state(r.dir);
      if (st.contains("eos_id") && st["eos_id"].is_number_integer()) r.eos_id = st["eos_id"].get<int>();
    } catch (const Error&) {
    }
  }
  if (r.eos_id < 0) {
    try {  // a missing or mismatching tokenizer only leaves the EOS unknown here
      if (auto tok = find_tokenizer(r, "")) r.eos_id = tok->eos_id();
    } catch (const Error&) {
    }
  }
  return r;
}

void load_inference_weights(InferenceModel& r, int max_batch) {
  r.model = std::make_unique<Model>(with_token_ids(r.config.model, r.eos_id), *r.backend, max_batch);
  std::vector<float> flat(r.model->table().total(), 0.f);
  r.ignored = load_weights(r.weights, r.model->table(), flat.data());
  r.model->set_params(flat.data(), DType::f32);
}

std::string checkpoint_tokenizer_name(const InferenceModel& m) {
  try {
    return tokenizer_name_in_dir(m.dir);
  } catch (const Error& e) {
    BT_FAIL(e.what(), ": the checkpoint is damaged");
  }
}

namespace {
std::unique_ptr<Tokenizer> find_tokenizer_unchecked(const InferenceModel& m, const std::string& spec);
}  // namespace

std::unique_ptr<Tokenizer> find_tokenizer(const InferenceModel& m, const std::string& spec) {
  std::unique_ptr<Tokenizer> tok = find_tokenizer_unchecked(m, spec);
  if (tok)
    BT_CHECK(tok->vocab_size() <= m.config.model.vocab_size, "tokenizer ", tok->name(), " has vocab_size ",
             tok->vocab_size(), " > model.vocab_size ", m.config.model.vocab_size,
             "; the model cannot use it (wrong --tokenizer, or a model made for another vocabulary)");
  return tok;
}

namespace {
std::unique_ptr<Tokenizer> find_tokenizer_unchecked(const InferenceModel& m, const std::string& spec) {
  if (!spec.empty()) {
    if (fs::is_directory(spec)) return load_tokenizer_from_dir(spec);
    return make_tokenizer(spec);
  }
  if (!m.dir.empty() && fs::exists(fs::path(m.dir) / kTokenizerJsonFile)) return load_tokenizer_from_dir(m.dir);
  // The shards the run trained on (when still present).
  std::vector<std::string> globs = {m.config.data.train, m.config.data.val};
  for (const auto& g : globs) {
    if (g.empty()) continue;
    try {
      const auto shards = expand_shard_list(g);
      if (!shards.empty()) return load_tokenizer_for_shard_file(shards.front());
    } catch (const Error&) {
    }
  }
  return nullptr;
}
}  // namespace

}  // namespace bt

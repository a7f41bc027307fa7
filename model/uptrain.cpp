// Uptraining: a block model initialised from a vanilla GPT-NeoX checkpoint. See uptrain.h.
#include "model/uptrain.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"

namespace bt {

namespace fs = std::filesystem;

namespace {

// What is known about the vanilla model besides its tensors: from our config.yaml or an HF
// config.json next to the weights (either may be absent).
struct VanillaMeta {
  int heads = 0;  // 0: unknown
  double rotary_pct = -1, rotary_base = -1, eps = -1;
  std::string from;
};

VanillaMeta read_meta(const fs::path& dir, const std::string& what) {
  VanillaMeta m;
  if (fs::exists(dir / "config.yaml")) {
    const Config c = load_checkpoint_config(dir.string());
    BT_CHECK(c.model.kind == "vanilla", "load_from_vanilla.checkpoint_path: ", what, " holds a ", c.model.kind,
             " model; uptraining starts from a vanilla one");
    m.heads = c.model.decoder.heads;
    m.rotary_pct = c.model.rotary_pct;
    m.rotary_base = c.model.rotary_base;
    m.eps = c.model.layernorm_eps;
    m.from = (dir / "config.yaml").string();
  } else if (fs::exists(dir / "config.json")) {  // an HF model directory (Pythia)
    nlohmann::json j;
    try {
      std::ifstream in(dir / "config.json");
      j = nlohmann::json::parse(in);
    } catch (const std::exception& e) {
      BT_FAIL((dir / "config.json").string(), ": not valid JSON (", e.what(), ")");
    }
    auto num = [&](const char* k, double dflt) { return j.contains(k) && j[k].is_number() ? j[k].get<double>() : dflt; };
    m.heads = static_cast<int>(num("num_attention_heads", 0));
    m.rotary_pct = num("rotary_pct", -1);
    m.rotary_base = num("rotary_emb_base", -1);
    m.eps = num("layer_norm_eps", -1);
    m.from = (dir / "config.json").string();
  }
  return m;
}

const char* kLayerTensors[] = {
    "input_layernorm.weight",          "input_layernorm.bias",          "post_attention_layernorm.weight",
    "post_attention_layernorm.bias",   "attention.query_key_value.weight", "attention.query_key_value.bias",
    "attention.dense.weight",          "attention.dense.bias",          "mlp.dense_h_to_4h.weight",
    "mlp.dense_h_to_4h.bias",          "mlp.dense_4h_to_h.weight",      "mlp.dense_4h_to_h.bias",
};

}  // namespace

UptrainReport load_from_vanilla(const LoadFromVanillaConfig& u, const ModelConfig& block, const ParamTable& table,
                                float* flat) {
  BT_CHECK(block.is_block(), "load_from_vanilla initialises a block model (model.kind is ", block.kind, ")");
  UptrainReport r;
  // The weights file and the directory that may describe it.
  fs::path dir;
  if (fs::is_directory(u.checkpoint_path)) {
    dir = resolve_checkpoint(u.checkpoint_path);
    r.weights = (dir / "model.safetensors").string();
  } else {
    BT_CHECK(fs::is_regular_file(u.checkpoint_path), "load_from_vanilla.checkpoint_path '", u.checkpoint_path,
             "' is neither a checkpoint directory nor a file");
    r.weights = u.checkpoint_path;
    dir = fs::path(u.checkpoint_path).parent_path();
  }
  BT_CHECK(fs::exists(r.weights), "load_from_vanilla.checkpoint_path: ", r.weights, " does not exist");
  verify_checkpoint_file(r.weights);  // against our checkpoint's checksums.json, when it has one
  const VanillaMeta meta = read_meta(dir.empty() ? fs::path(".") : dir, u.checkpoint_path);
  SafetensorsReader f(r.weights);
  while (f.contains("gpt_neox.layers." + std::to_string(r.vanilla_layers) + ".input_layernorm.weight"))
    ++r.vanilla_layers;
  BT_CHECK(r.vanilla_layers > 0, r.weights, ": no gpt_neox.layers.0.* tensors: not a GPT-NeoX (vanilla) checkpoint");

  // The layer maps of the official methods, with its layer-count checks.
  const int bl = block.block_decoder.layers, tl = block.token_decoder.layers, vl = r.vanilla_layers;
  auto counts = [&](bool ok, const std::string& rule) {
    BT_CHECK(ok, "load_from_vanilla.method ", u.method, " needs ", rule, ": the vanilla model has ", vl,
             " layers, model.block_decoder.layers is ", bl, " and model.token_decoder.layers ", tl);
  };
  std::vector<int> bmap(bl), tmap(tl);
  if (u.method == "partition") {
    counts(bl + tl == vl, "block + token decoder layers = vanilla layers");
    for (int i = 0; i < bl; ++i) bmap[i] = i;
    for (int i = 0; i < tl; ++i) tmap[i] = bl + i;
  } else if (u.method == "skip") {
    counts(2 * bl == vl && 2 * tl == vl, "each decoder to have half the vanilla layers");
    for (int i = 0; i < bl; ++i) bmap[i] = 2 * i;
    for (int i = 0; i < tl; ++i) tmap[i] = 2 * i;
  } else if (u.method == "duplicate") {
    counts(bl == vl && tl == vl, "each decoder to have the vanilla layers");
    for (int i = 0; i < bl; ++i) bmap[i] = i;
    for (int i = 0; i < tl; ++i) tmap[i] = i;
  } else {
    BT_FAIL("load_from_vanilla.method must be partition, skip or duplicate (got '", u.method, "')");
  }

  // Copies vanilla tensor `src` into the block model's `dst` (same shape, as load_state_dict).
  auto copy = [&](const std::string& dst, const std::string& src) {
    const ParamInfo& p = table.find(dst);
    BT_CHECK(f.contains(src), r.weights, ": missing tensor '", src, "' (needed for ", dst, ")");
    const SafetensorInfo& t = f.info(src);
    BT_CHECK(t.shape == p.file_shape, "load_from_vanilla: ", r.weights, " tensor '", src, "' has shape ",
             shape_str(t.shape), " but ", dst, " has ", shape_str(p.file_shape),
             " (the decoders' dim and ffn_dim, and embedder.dim, must equal the vanilla model's)");
    f.read_f32(src, flat + p.offset);
    r.written.push_back(dst);
  };
  copy("embedder.embeddings.weight", "gpt_neox.embed_in.weight");
  for (int i = 0; i < bl; ++i)
    for (const char* t : kLayerTensors)
      copy("block_decoder.gpt_neox.layers." + std::to_string(i) + "." + t,
           "gpt_neox.layers." + std::to_string(bmap[i]) + "." + t);
  copy("token_decoder.gpt_neox.embed_in.weight", "gpt_neox.embed_in.weight");
  for (int i = 0; i < tl; ++i)
    for (const char* t : kLayerTensors)
      copy("token_decoder.gpt_neox.layers." + std::to_string(i) + "." + t,
           "gpt_neox.layers." + std::to_string(tmap[i]) + "." + t);
  copy("token_decoder.gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.weight");
  copy("token_decoder.gpt_neox.final_layer_norm.bias", "gpt_neox.final_layer_norm.bias");
  copy("token_decoder.embed_out.weight", "embed_out.weight");

  const int64_t LB = block.block_length, E = block.embedder_dim, DB = block.block_decoder.dim;
  const int64_t DT = block.token_decoder.dim, R = block.token_decoder.prefix_length;
  if (u.initialize_mean_embedder_projection) {
    // weight [D_B, E, L_B]: each block vector is the mean of its L_B token vectors (E = D_B)
    BT_CHECK(block.projection_layer() && E == DB, "load_from_vanilla.initialize_mean_embedder_projection needs "
             "model.embedder.projection_method projection_layer with embedder.dim = block_decoder.dim");
    const ParamInfo& w = table.find("embedder.projection_layer.weight");
    const ParamInfo& b = table.find("embedder.projection_layer.bias");
    for (int64_t o = 0; o < DB; ++o)
      for (int64_t c = 0; c < E; ++c)
        for (int64_t k = 0; k < LB; ++k) flat[w.offset + (o * E + c) * LB + k] = o == c ? 1.0f / float(LB) : 0.0f;
    for (int64_t o = 0; o < DB; ++o) flat[b.offset + o] = 0.0f;
    r.written.push_back(w.name);
    r.written.push_back(b.name);
  }
  if (u.initialize_identity_expansion_layer) {
    // weight [R D_T, D_B, 1]: each of the R expanded vectors is the context embedding (D_T = D_B)
    BT_CHECK(DT == DB, "load_from_vanilla.initialize_identity_expansion_layer needs token_decoder.dim = "
             "block_decoder.dim");
    const ParamInfo& w = table.find("token_decoder.expansion_layer.weight");
    const ParamInfo& b = table.find("token_decoder.expansion_layer.bias");
    for (int64_t r0 = 0; r0 < R; ++r0)
      for (int64_t i = 0; i < DT; ++i)
        for (int64_t j = 0; j < DB; ++j) flat[w.offset + (r0 * DT + i) * DB + j] = i == j ? 1.0f : 0.0f;
    for (int64_t i = 0; i < R * DT; ++i) flat[b.offset + i] = 0.0f;
    r.written.push_back(w.name);
    r.written.push_back(b.name);
  }

  // The copied matrices mean the same function only with the same heads, rotary and LayerNorm eps.
  auto warn = [&](bool differ, const std::string& what) {
    if (differ) r.warnings.push_back(what + " (" + meta.from + "); the weights are copied as the official code copies them");
  };
  for (const auto& [name, d] : {std::pair{"model.block_decoder", &block.block_decoder},
                                 std::pair{"model.token_decoder", &block.token_decoder}})
    warn(meta.heads > 0 && meta.heads != d->heads,
         "the vanilla model has " + std::to_string(meta.heads) + " heads, " + name + " " + std::to_string(d->heads) +
             ": the copied QKV rows are split into other heads");
  warn(meta.rotary_pct >= 0 && std::abs(meta.rotary_pct - block.rotary_pct) > 1e-12,
       "the vanilla model's rotary_pct differs from model.rotary_pct");
  warn(meta.rotary_base > 0 && std::abs(meta.rotary_base - block.rotary_base) > 1e-9,
       "the vanilla model's rotary base differs from model.rotary_base");
  warn(meta.eps > 0 && std::abs(meta.eps - block.layernorm_eps) > 1e-15,
       "the vanilla model's LayerNorm eps differs from model.layernorm_eps");
  return r;
}

}  // namespace bt

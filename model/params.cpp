// Parameter table construction (official names, docs/design.md §6) and initialization (docs/design.md §2.1).
#include "model/params.h"

#include <cmath>

#include "core/error.h"
#include "core/rng.h"

namespace bt {

ParamTable::ParamTable(const ModelConfig& m) {
  const double s = m.init_std;
  const int64_t V = m.vocab_size;
  if (m.is_block()) {
    const DecoderConfig& bd = m.block_decoder;
    const DecoderConfig& td = m.token_decoder;
    const int64_t R = td.prefix_length;
    const int64_t E = m.embedder_dim, LB = m.block_length;
    add("embedder.embeddings.weight", {V, E}, ParamKind::embedding, ParamPart::embedder, s, false);
    if (m.projection_layer()) {
      // Conv1d(E, D_B, kernel L_B, stride L_B): weight [D_B, E, L_B] (the file's shape and our memory
      // layout, used as a [D_B, E * L_B] linear on channel-major blocks), init N(0, (E L_B)^-0.5) as
      // the official _init_projection_layer; bias [D_B].
      add("embedder.projection_layer.weight", {bd.dim, E * LB}, ParamKind::matrix, ParamPart::embedder,
          1.0 / std::sqrt(static_cast<double>(E * LB)), false, {bd.dim, E, LB});
      add("embedder.projection_layer.bias", {bd.dim}, ParamKind::bias, ParamPart::embedder, 0, false);
    }
    add_stack("block_decoder.gpt_neox.", bd, ParamPart::block_decoder, s);
    // Expansion: a Conv1d(D_B, R*D_T, 1) in the official code (R = L_B for summation); we store it
    // as a linear.
    add("token_decoder.expansion_layer.weight", {R * td.dim, bd.dim}, ParamKind::matrix, ParamPart::prefix,
        1.0 / std::sqrt(static_cast<double>(bd.dim)), false, {R * td.dim, bd.dim, 1});
    add("token_decoder.expansion_layer.bias", {R * td.dim}, ParamKind::bias, ParamPart::prefix, 0, false);
    add("token_decoder.gpt_neox.embed_in.weight", {V, td.dim}, ParamKind::embedding, ParamPart::token_decoder, s,
        false);
    add_stack("token_decoder.gpt_neox.", td, ParamPart::token_decoder, s);
    add("token_decoder.embed_out.weight", {V, td.dim}, ParamKind::head, ParamPart::token_decoder, s, false);
  } else {
    const DecoderConfig& d = m.decoder;
    add("gpt_neox.embed_in.weight", {V, d.dim}, ParamKind::embedding, ParamPart::decoder, s, false);
    add_stack("gpt_neox.", d, ParamPart::decoder, s);
    add("embed_out.weight", {V, d.dim}, ParamKind::head, ParamPart::decoder, s, false);
  }
}

void ParamTable::add_stack(const std::string& prefix, const DecoderConfig& d, ParamPart part, double std) {
  const int64_t D = d.dim, F = d.ffn_dim;
  for (int l = 0; l < d.layers; ++l) {
    const std::string p = prefix + "layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {D}, ParamKind::norm_weight, part, 0, true);
    add(p + "input_layernorm.bias", {D}, ParamKind::norm_bias, part, 0, true);
    add(p + "post_attention_layernorm.weight", {D}, ParamKind::norm_weight, part, 0, true);
    add(p + "post_attention_layernorm.bias", {D}, ParamKind::norm_bias, part, 0, true);
    add(p + "attention.query_key_value.weight", {3 * D, D}, ParamKind::matrix, part, std, true);
    add(p + "attention.query_key_value.bias", {3 * D}, ParamKind::bias, part, 0, true);
    add(p + "attention.dense.weight", {D, D}, ParamKind::matrix, part, std, true);
    add(p + "attention.dense.bias", {D}, ParamKind::bias, part, 0, true);
    add(p + "mlp.dense_h_to_4h.weight", {F, D}, ParamKind::matrix, part, std, true);
    add(p + "mlp.dense_h_to_4h.bias", {F}, ParamKind::bias, part, 0, true);
    add(p + "mlp.dense_4h_to_h.weight", {D, F}, ParamKind::matrix, part, std, true);
    add(p + "mlp.dense_4h_to_h.bias", {D}, ParamKind::bias, part, 0, true);
  }
  add(prefix + "final_layer_norm.weight", {D}, ParamKind::norm_weight, part, 0, true);
  add(prefix + "final_layer_norm.bias", {D}, ParamKind::norm_bias, part, 0, true);
}

void ParamTable::add(const std::string& name, std::vector<int64_t> shape, ParamKind kind, ParamPart part,
                     double std, bool layer, std::vector<int64_t> file_shape) {
  ParamInfo p;
  p.name = name;
  p.numel = 1;
  for (int64_t x : shape) {
    BT_CHECK(x > 0, "parameter ", name, ": non-positive dimension");
    p.numel *= static_cast<size_t>(x);
  }
  p.shape = std::move(shape);
  p.file_shape = file_shape.empty() ? p.shape : std::move(file_shape);
  p.offset = total_;
  p.kind = kind;
  p.part = part;
  p.init_std = std;
  p.transformer_layer = layer;
  // Keep every tensor 16-element aligned inside the flat buffer (vector loads, bf16 pairs).
  total_ += (p.numel + 15) / 16 * 16;
  entries_.push_back(std::move(p));
}

const ParamInfo& ParamTable::find(const std::string& name) const {
  for (const auto& p : entries_)
    if (p.name == name) return p;
  BT_FAIL("no parameter named '", name, "' in this model");
}

bool ParamTable::contains(const std::string& name) const {
  for (const auto& p : entries_)
    if (p.name == name) return true;
  return false;
}

size_t ParamTable::total_params() const {
  size_t n = 0;
  for (const auto& p : entries_) n += p.numel;
  return n;
}

size_t ParamTable::non_embedding() const {
  size_t n = 0;
  for (const auto& p : entries_)
    if (p.transformer_layer) n += p.numel;
  return n;
}

size_t ParamTable::count(ParamPart part) const {
  size_t n = 0;
  for (const auto& p : entries_)
    if (p.part == part) n += p.numel;
  return n;
}

bool param_decays(const ParamInfo& p, const std::string& decay_mode) {
  if (decay_mode == "all") return true;
  return p.kind == ParamKind::matrix || p.kind == ParamKind::embedding || p.kind == ParamKind::head;
}

std::vector<double> init_params(const ParamTable& t, uint64_t seed) {
  std::vector<double> w(t.total(), 0.0);
  for (const auto& p : t.entries()) {
    double* dst = w.data() + p.offset;
    switch (p.kind) {
      case ParamKind::embedding:
      case ParamKind::matrix:
      case ParamKind::head: {
        Rng rng(seed, hash_name(p.name));
        for (size_t i = 0; i < p.numel; ++i) dst[i] = p.init_std * rng.normal();
        break;
      }
      case ParamKind::norm_weight:
        for (size_t i = 0; i < p.numel; ++i) dst[i] = 1.0;
        break;
      case ParamKind::bias:
      case ParamKind::norm_bias: break;
    }
  }
  return w;
}

}  // namespace bt

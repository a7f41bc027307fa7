// The parameter table: every parameter tensor of a model with its official PyTorch name
// (docs/design.md §6), shape, offset in the flat parameter buffer, and how it is initialized and decayed.
// Parameters and their gradients each live in one flat buffer so that the optimizer, gradient
// all-reduce and checkpoints see one contiguous range.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace bt {

enum class ParamKind { embedding, matrix, bias, norm_weight, norm_bias, head };
// Which part of the model a parameter belongs to, for parameter counts.
enum class ParamPart { embedder, block_decoder, token_decoder, prefix, decoder };

struct ParamInfo {
  std::string name;            // official name, e.g. block_decoder.gpt_neox.layers.0.attention.dense.weight
  std::vector<int64_t> shape;  // our storage shape; checkpoint shape may add trailing 1s (Conv1d)
  std::vector<int64_t> file_shape;  // shape in the safetensors file (the official one)
  size_t offset = 0;           // elements from the start of the flat buffer
  size_t numel = 0;
  ParamKind kind = ParamKind::matrix;
  ParamPart part = ParamPart::decoder;
  double init_std = 0.02;      // normal(0, init_std) for embeddings/matrices/head
  bool transformer_layer = false;  // inside a decoder stack (layers or final LN): "non-embedding"
};

class ParamTable {
 public:
  explicit ParamTable(const ModelConfig& m);
  const std::vector<ParamInfo>& entries() const { return entries_; }
  const ParamInfo& find(const std::string& name) const;
  bool contains(const std::string& name) const;
  size_t total() const { return total_; }  // flat buffer length (tensors 16-aligned)
  size_t total_params() const;             // sum of the tensors' sizes
  // Non-embedding parameters: the decoders' transformer layers and final LayerNorms.
  size_t non_embedding() const;
  size_t count(ParamPart part) const;

 private:
  void add(const std::string& name, std::vector<int64_t> shape, ParamKind kind, ParamPart part, double std,
           bool layer, std::vector<int64_t> file_shape = {});
  void add_stack(const std::string& prefix, const DecoderConfig& d, ParamPart part, double std);
  std::vector<ParamInfo> entries_;
  size_t total_ = 0;
};

// ZeRO-1's slice of a flat buffer of `total` elements over `parts` ranks: equal chunks of a
// multiple of 16 elements; the flat buffers are allocated to parts x chunk so that the
// collectives work in place.
inline size_t flat_chunk(size_t total, int parts) {
  const size_t p = parts > 0 ? static_cast<size_t>(parts) : 1;
  return ((total + p - 1) / p + 15) / 16 * 16;
}

// Whether AdamW decays this parameter: `all` (the paper) or `matrices` (2-D weights only).
bool param_decays(const ParamInfo& p, const std::string& decay_mode);

// Initial values (docs/design.md §2.1): normal(0, std) for matrices, embeddings and the head, zeros for
// biases, ones/zeros for LayerNorm. Each tensor draws from its own stream (seed, name), so init
// does not depend on the order of the table or the backend. Returns [total] in double.
std::vector<double> init_params(const ParamTable& t, uint64_t seed);

}  // namespace bt

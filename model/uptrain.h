// Uptraining (the paper's uptraining experiments): a block model initialised from a vanilla
// GPT-NeoX checkpoint as the official `load_from_vanilla` does it (model/utils.py
// load_block_from_vanilla_checkpoint of itsnamgyu/block-transformer; docs/architecture.md,
// Uptraining). The vanilla weights come from one of our checkpoints or from an HF GPT-NeoX /
// Pythia safetensors file; both use the GPT-NeoX names (gpt_neox.*, embed_out.weight).
#pragma once
#include <string>
#include <vector>

#include "model/config.h"
#include "model/params.h"

namespace bt {

struct UptrainReport {
  std::string weights;   // the safetensors file read
  int vanilla_layers = 0;
  std::vector<std::string> written;   // the block model's tensors the procedure set
  std::vector<std::string> warnings;  // e.g. the vanilla model splits its QKV into other heads
};

// Overwrites, in flat ([table.total()] floats holding the block model's fresh init), the tensors
// the official procedure sets:
//   embedder.embeddings <- gpt_neox.embed_in; block decoder layer i <- vanilla layer map(i);
//   token decoder embed_in <- gpt_neox.embed_in, layer i <- vanilla layer map'(i), final LayerNorm
//   <- gpt_neox.final_layer_norm, embed_out <- embed_out; with the flags, the projection_layer
//   = the mean of the L_B token vectors (weight[o, c, k] = [o == c] / L_B, bias 0) and the
//   expansion layer = R stacked identities (weight[r D + i, j] = [i == j], bias 0).
// map / map' by u.method: partition (i / L_b + i), skip (2i / 2i), duplicate (i / i). Everything
// else (the block decoder's final LayerNorm, the projection and expansion without their flags)
// keeps its init. Any missing tensor, shape or layer-count mismatch is a one-line error.
UptrainReport load_from_vanilla(const LoadFromVanillaConfig& u, const ModelConfig& block, const ParamTable& table,
                                float* flat);

}  // namespace bt

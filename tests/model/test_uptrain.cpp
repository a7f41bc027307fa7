// Uptraining (model/uptrain.h): a block model initialised from one of our vanilla checkpoints
// holds the vanilla tensors where the official procedure puts them (each method's layer map), the
// mean projection and the identity expansion, and its init elsewhere; bad sources are one-line
// errors. The official procedure itself is compared bit for bit in tests/peer/test_peer_uptrain.py.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "model/checkpoint.h"
#include "model/uptrain.h"

using namespace bt;
namespace fs = std::filesystem;

namespace {

Config vanilla_config(int layers) {
  Config c;
  c.name = "v";
  c.model.kind = "vanilla";
  c.model.vocab_size = 50;
  c.model.context_length = 32;
  c.model.decoder = {layers, 16, 2, 64, 0};
  c.data.synthetic = "repeat:7";
  return c;
}

ModelConfig block_config(int bl, int tl) {
  ModelConfig m;
  m.kind = "block";
  m.vocab_size = 50;
  m.context_length = 32;
  m.block_length = 4;
  m.embedder_dim = 16;
  m.projection_method = "projection_layer";
  m.block_decoder = {bl, 16, 2, 64, 0};
  m.token_decoder = {tl, 16, 2, 64, 3};
  return m;
}

class Uptrain : public testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("bt_uptrain_" + std::to_string(::getpid()));
    fs::remove_all(root_);
  }
  void TearDown() override { fs::remove_all(root_); }
  // Saves a vanilla checkpoint with distinct values everywhere; returns its directory.
  std::string save_vanilla(int layers, std::vector<float>* weights = nullptr, ParamTable* table = nullptr) {
    Config c = vanilla_config(layers);
    ParamTable t(c.model);
    std::vector<float> w(t.total());
    for (size_t i = 0; i < w.size(); ++i) w[i] = 0.001f * float(i % 997) - 0.3f;
    CheckpointContents cc;
    cc.step = 7;
    cc.config = &c;
    cc.table = &t;
    cc.params = w.data();
    const std::string dir = save_checkpoint((root_ / ("v" + std::to_string(layers))).string(), cc, 1);
    if (weights) *weights = w;
    if (table) *table = t;
    return dir;
  }
  fs::path root_;
};

std::vector<float> tensor(const ParamTable& t, const std::vector<float>& flat, const std::string& name) {
  const ParamInfo& p = t.find(name);
  return std::vector<float>(flat.begin() + p.offset, flat.begin() + p.offset + p.numel);
}

}  // namespace

TEST_F(Uptrain, PartitionWithMeanProjectionAndIdentityExpansion) {
  std::vector<float> vw;
  ParamTable vt(vanilla_config(4).model);
  const std::string dir = save_vanilla(4, &vw, &vt);
  const ModelConfig m = block_config(1, 3);  // partition: 1 + 3 = 4 vanilla layers
  ParamTable bt_(m);
  std::vector<float> init(bt_.total(), 42.f), flat = init;
  LoadFromVanillaConfig u;
  u.enable = true;
  u.checkpoint_path = fs::path(dir).parent_path().string() + "/latest";  // a `latest` link works too
  u.initialize_mean_embedder_projection = true;
  u.initialize_identity_expansion_layer = true;
  const UptrainReport r = load_from_vanilla(u, m, bt_, flat.data());
  EXPECT_EQ(r.vanilla_layers, 4);
  EXPECT_TRUE(r.warnings.empty());
  auto same = [&](const std::string& ours, const std::string& theirs) {
    EXPECT_EQ(tensor(bt_, flat, ours), tensor(vt, vw, theirs)) << ours << " <- " << theirs;
  };
  same("embedder.embeddings.weight", "gpt_neox.embed_in.weight");
  same("token_decoder.gpt_neox.embed_in.weight", "gpt_neox.embed_in.weight");
  same("block_decoder.gpt_neox.layers.0.attention.query_key_value.weight",
       "gpt_neox.layers.0.attention.query_key_value.weight");
  for (int i = 0; i < 3; ++i)
    for (const char* t : {"mlp.dense_4h_to_h.bias", "input_layernorm.weight", "attention.dense.weight"})
      same("token_decoder.gpt_neox.layers." + std::to_string(i) + "." + t,
           "gpt_neox.layers." + std::to_string(i + 1) + "." + t);
  same("token_decoder.gpt_neox.final_layer_norm.bias", "gpt_neox.final_layer_norm.bias");
  same("token_decoder.embed_out.weight", "embed_out.weight");
  // left alone: the block decoder's final LayerNorm
  EXPECT_EQ(tensor(bt_, flat, "block_decoder.gpt_neox.final_layer_norm.weight"),
            tensor(bt_, init, "block_decoder.gpt_neox.final_layer_norm.weight"));
  // mean projection [D_B, E, L_B] and identity expansion [R D_T, D_B]
  const auto proj = tensor(bt_, flat, "embedder.projection_layer.weight");
  for (int o = 0; o < 16; ++o)
    for (int c = 0; c < 16; ++c)
      for (int k = 0; k < 4; ++k) ASSERT_EQ(proj[(o * 16 + c) * 4 + k], o == c ? 0.25f : 0.f);
  const auto ex = tensor(bt_, flat, "token_decoder.expansion_layer.weight");
  for (int r0 = 0; r0 < 3; ++r0)
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 16; ++j) ASSERT_EQ(ex[(r0 * 16 + i) * 16 + j], i == j ? 1.f : 0.f);
  for (float b : tensor(bt_, flat, "token_decoder.expansion_layer.bias")) ASSERT_EQ(b, 0.f);
}

TEST_F(Uptrain, SkipAndDuplicateLayerMaps) {
  std::vector<float> vw;
  ParamTable vt(vanilla_config(4).model);
  const std::string dir4 = save_vanilla(4, &vw, &vt);
  const ModelConfig m = block_config(2, 2);
  ParamTable t(m);
  std::vector<float> flat(t.total(), 0.f);
  LoadFromVanillaConfig u;
  u.checkpoint_path = dir4 + "/model.safetensors";  // the file: its config.yaml is next to it
  u.method = "skip";
  load_from_vanilla(u, m, t, flat.data());
  for (int i = 0; i < 2; ++i)
    for (const char* d : {"block_decoder", "token_decoder"})
      EXPECT_EQ(tensor(t, flat, std::string(d) + ".gpt_neox.layers." + std::to_string(i) + ".mlp.dense_h_to_4h.weight"),
                tensor(vt, vw, "gpt_neox.layers." + std::to_string(2 * i) + ".mlp.dense_h_to_4h.weight"));
  std::vector<float> vw2;
  ParamTable vt2(vanilla_config(2).model);
  const std::string dir2 = save_vanilla(2, &vw2, &vt2);
  u.checkpoint_path = dir2;
  u.method = "duplicate";
  load_from_vanilla(u, m, t, flat.data());
  for (int i = 0; i < 2; ++i)
    for (const char* d : {"block_decoder", "token_decoder"})
      EXPECT_EQ(tensor(t, flat, std::string(d) + ".gpt_neox.layers." + std::to_string(i) + ".attention.dense.bias"),
                tensor(vt2, vw2, "gpt_neox.layers." + std::to_string(i) + ".attention.dense.bias"));
}

TEST_F(Uptrain, ErrorsAndWarnings) {
  const std::string dir = save_vanilla(4);
  auto error = [&](const ModelConfig& m, LoadFromVanillaConfig u) -> std::string {
    ParamTable t(m);
    std::vector<float> flat(t.total());
    try {
      load_from_vanilla(u, m, t, flat.data());
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  LoadFromVanillaConfig u;
  u.checkpoint_path = dir;
  EXPECT_NE(error(block_config(2, 3), u).find("load_from_vanilla.method partition needs block + token decoder layers "
                                              "= vanilla layers: the vanilla model has 4 layers"),
            std::string::npos);
  ModelConfig wide = block_config(2, 2);
  wide.embedder_dim = 8;
  EXPECT_NE(error(wide, u).find("tensor 'gpt_neox.embed_in.weight' has shape [50, 16] but embedder.embeddings.weight "
                                "has [50, 8]"),
            std::string::npos)
      << error(wide, u);
  u.checkpoint_path = (root_ / "nothing").string();
  EXPECT_NE(error(block_config(2, 2), u).find("is neither a checkpoint directory nor a file"), std::string::npos);
  // a block checkpoint is not a vanilla one
  Config bc;
  bc.model = block_config(2, 2);
  bc.data.synthetic = "repeat:7";
  ParamTable bt_(bc.model);
  std::vector<float> w(bt_.total(), 0.f);
  CheckpointContents cc;
  cc.config = &bc;
  cc.table = &bt_;
  cc.params = w.data();
  u.checkpoint_path = save_checkpoint((root_ / "block").string(), cc, 1);
  EXPECT_NE(error(block_config(2, 2), u).find("holds a block model; uptraining starts from a vanilla one"),
            std::string::npos);
  // other heads: copied (as the official code does), with a warning
  u.checkpoint_path = dir;
  ModelConfig heads = block_config(2, 2);
  heads.block_decoder.heads = 4;
  ParamTable t(heads);
  std::vector<float> flat(t.total());
  const UptrainReport r = load_from_vanilla(u, heads, t, flat.data());
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("the vanilla model has 2 heads, model.block_decoder 4"), std::string::npos)
      << r.warnings[0];
}

TEST_F(Uptrain, DamagedVanillaCheckpointIsRefused) {
  // One flipped byte in the weights of our own checkpoint: its checksums.json catches it before
  // any tensor is copied (an HF directory has no checksums.json and is read as it is).
  const std::string dir = save_vanilla(4);
  const fs::path w = fs::path(dir) / "model.safetensors";
  {
    std::fstream f(w, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(w) - 5));
    char c = 0;
    f.read(&c, 1);
    f.seekp(static_cast<std::streamoff>(fs::file_size(w) - 5));
    c = static_cast<char>(c ^ 0x10);
    f.write(&c, 1);
  }
  ModelConfig m = block_config(2, 2);
  ParamTable t(m);
  std::vector<float> flat(t.total());
  LoadFromVanillaConfig u;
  u.checkpoint_path = dir;
  std::string e;
  try {
    load_from_vanilla(u, m, t, flat.data());
  } catch (const Error& x) {
    e = x.what();
  }
  EXPECT_NE(e.find("model.safetensors"), std::string::npos) << e;
  EXPECT_NE(e.find("checkpoint"), std::string::npos) << e;
}

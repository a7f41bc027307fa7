// safetensors and checkpoint directories (docs/design.md §6): round trips, official names and file shapes,
// bad input (missing COMPLETE, truncated or corrupt safetensors, weights that do not match the
// config, missing / mis-shaped tensors) as one-line errors, extra tensors reported and ignored,
// keep-last-K, `latest`, re-saving a step, leftovers of killed writers, and the same errors from
// the `bt` command line (BT_BINARY).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/rng.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"
#include "tests/test_util.h"

using namespace bt;
namespace fs = std::filesystem;

namespace {

using TmpDir = bt::test::TempDir;

Config tiny_config(const std::string& kind = "block", int layers = 2, int dim = 16) {
  Config c;
  c.name = "ckpt_test";
  c.model.kind = kind;
  c.model.vocab_size = 40;
  c.model.context_length = 16;
  c.model.block_length = 4;
  if (kind == "block") {
    c.model.embedder_dim = dim / 4;
    c.model.block_decoder = {layers, dim, 2, 2 * dim, 0};
    c.model.token_decoder = {layers, dim, 2, 2 * dim, 2};
  } else {
    c.model.decoder = {layers, dim, 2, 2 * dim, 0};
  }
  c.data.synthetic = "repeat:7";
  return c;
}

using bt::test::random_flat;

std::string save(const std::string& root, const Config& c, int64_t step, const std::vector<float>& w, int keep) {
  ParamTable t(c.model);
  CheckpointContents cc;
  cc.step = step;
  cc.config = &c;
  cc.table = &t;
  cc.params = w.data();
  cc.optimizer = flat_tensors(t, w.data(), ".exp_avg");
  cc.trainer_state = {{"loader", {{"epoch", 0}, {"next_window", step}}}};
  return save_checkpoint(root, cc, keep);
}

// Runs f, expects a bt::Error whose message is one line containing every needle.
template <class F>
void expect_error(F f, std::vector<std::string> needles) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning " << needles[0];
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

}  // namespace

TEST(Safetensors, RoundTripAndMetadata) {
  TmpDir d("st");
  std::vector<float> a = {1, 2, 3, 4, 5, 6}, b = {-1.5f}, c(2 * 3 * 4);
  for (size_t i = 0; i < c.size(); ++i) c[i] = 0.25f * static_cast<float>(i);
  write_safetensors(d / "x.safetensors", {{"a", {2, 3}, a.data()}, {"b.bias", {1}, b.data()}, {"c", {2, 3, 4}, c.data()}},
                    {{"format", "pt"}});
  SafetensorsReader r(d / "x.safetensors");
  ASSERT_EQ(r.tensors().size(), 3u);
  EXPECT_EQ(r.tensors()[0].name, "a");  // file order
  EXPECT_EQ(r.info("c").shape, (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(r.info("a").dtype, "F32");
  EXPECT_EQ(r.read_f32("a"), a);
  EXPECT_EQ(r.read_f32("b.bias"), b);
  EXPECT_EQ(r.read_f32("c"), c);
  EXPECT_EQ(r.metadata().at("format"), "pt");
  // Header length is 8-byte aligned (the format's recommendation; PyTorch's reader accepts both).
  std::ifstream f(d / "x.safetensors", std::ios::binary);
  uint64_t hl = 0;
  f.read(reinterpret_cast<char*>(&hl), 8);
  EXPECT_EQ(hl % 8, 0u);
  expect_error([&] { r.read_f32("nope"); }, {"nope"});
}

TEST(Safetensors, ReadsBf16AndF16) {
  TmpDir d("bf16");
  // A hand-made file: "w" BF16 [2] = {1.0, -2.0}, "h" F16 [2] = {0.5, 65504}.
  const std::string header = R"({"w":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},)"
                             R"("h":{"dtype":"F16","shape":[2],"data_offsets":[4,8]}})";
  std::ofstream f(d / "y.safetensors", std::ios::binary);
  const uint64_t hl = header.size();
  f.write(reinterpret_cast<const char*>(&hl), 8);
  f << header;
  const uint16_t data[4] = {0x3f80, 0xc000, 0x3800, 0x7bff};
  f.write(reinterpret_cast<const char*>(data), 8);
  f.close();
  SafetensorsReader r(d / "y.safetensors");
  EXPECT_EQ(r.read_f32("w"), (std::vector<float>{1.0f, -2.0f}));
  EXPECT_EQ(r.read_f32("h"), (std::vector<float>{0.5f, 65504.0f}));
}

TEST(Safetensors, TruncatedAndCorruptFilesAreOneLineErrors) {
  TmpDir d("trunc");
  std::vector<float> a(100, 1.f), b(50, 2.f);
  const std::string path = d / "t.safetensors";
  write_safetensors(path, {{"first.weight", {100}, a.data()}, {"second.weight", {5, 10}, b.data()}});
  fs::resize_file(path, fs::file_size(path) - 8);
  expect_error([&] { SafetensorsReader r(path); }, {path, "second.weight", "truncated"});
  fs::resize_file(path, 5);
  expect_error([&] { SafetensorsReader r(path); }, {path});
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    const uint64_t hl = 10;
    f.write(reinterpret_cast<const char*>(&hl), 8);
    f << "not json!!";
  }
  expect_error([&] { SafetensorsReader r(path); }, {path, "JSON"});
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    const std::string h = R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})";
    const uint64_t hl = h.size();
    f.write(reinterpret_cast<const char*>(&hl), 8);
    f << h << std::string(8, '\0');
  }
  expect_error([&] { SafetensorsReader r(path); }, {"'x'", "12 bytes"});
  expect_error([&] { SafetensorsReader r(d / "missing.safetensors"); }, {"missing.safetensors"});
  // Shapes whose byte count wraps around 2^64 (found by tests/fuzz/fuzz_safetensors.cpp's
  // oracle): [2^32, 2^32] x 4 bytes is not 0 bytes, [2^62, 4] x 4 bytes is not 0 either.
  auto header_only = [&](const std::string& h) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    const uint64_t hl = h.size();
    f.write(reinterpret_cast<const char*>(&hl), 8);
    f << h;
  };
  header_only(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})");
  expect_error([&] { SafetensorsReader r(path); }, {path, "'w'", "[4294967296, 4294967296]", "more than 2^64 bytes"});
  header_only(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}})");
  expect_error([&] { SafetensorsReader r(path); }, {path, "'w'", "more than 2^64 bytes"});
  // A zero dimension is no data, however large the others.
  header_only(R"({"w":{"dtype":"F32","shape":[4611686018427387904,0,9],"data_offsets":[0,0]}})");
  SafetensorsReader r(path);
  EXPECT_EQ(r.info("w").numel(), 0u);
}

TEST(Checkpoint, OfficialNamesAndFileShapes) {
  // docs/design.md §6, checked against itsnamgyu/block-transformer and HF GPT-NeoX (see docs/checkpoints.md).
  ParamTable b(tiny_config("block").model);
  for (const char* n :
       {"embedder.embeddings.weight", "block_decoder.gpt_neox.layers.0.input_layernorm.weight",
        "block_decoder.gpt_neox.layers.1.post_attention_layernorm.bias",
        "block_decoder.gpt_neox.layers.0.attention.query_key_value.weight",
        "block_decoder.gpt_neox.layers.0.attention.dense.bias", "block_decoder.gpt_neox.layers.0.mlp.dense_h_to_4h.weight",
        "block_decoder.gpt_neox.layers.0.mlp.dense_4h_to_h.bias", "block_decoder.gpt_neox.final_layer_norm.weight",
        "token_decoder.gpt_neox.embed_in.weight", "token_decoder.gpt_neox.layers.1.attention.query_key_value.bias",
        "token_decoder.gpt_neox.final_layer_norm.bias", "token_decoder.embed_out.weight",
        "token_decoder.expansion_layer.weight", "token_decoder.expansion_layer.bias"})
    EXPECT_TRUE(b.contains(n)) << n;
  EXPECT_FALSE(b.contains("block_decoder.gpt_neox.embed_in.weight"));  // unused in the official code too
  EXPECT_EQ(b.find("token_decoder.expansion_layer.weight").file_shape, (std::vector<int64_t>{2 * 16, 16, 1}));
  EXPECT_EQ(b.find("embedder.embeddings.weight").file_shape, (std::vector<int64_t>{40, 4}));
  EXPECT_EQ(b.find("token_decoder.embed_out.weight").file_shape, (std::vector<int64_t>{40, 16}));
  ParamTable v(tiny_config("vanilla").model);
  for (const char* n : {"gpt_neox.embed_in.weight", "gpt_neox.layers.0.attention.query_key_value.weight",
                        "gpt_neox.final_layer_norm.weight", "embed_out.weight"})
    EXPECT_TRUE(v.contains(n)) << n;
  EXPECT_EQ(v.find("gpt_neox.layers.1.mlp.dense_h_to_4h.weight").file_shape, (std::vector<int64_t>{32, 16}));
}

TEST(Checkpoint, SaveLoadRoundTrip) {
  TmpDir d("rt");
  const Config c = tiny_config();
  ParamTable t(c.model);
  const auto w = random_flat(t, 1);
  const std::string dir = save(d / "checkpoints", c, 7, w, 3);
  EXPECT_EQ(fs::path(dir).filename().string(), "step_00000007");
  for (const char* f : {"model.safetensors", "optimizer.safetensors", "trainer_state.json", "config.yaml", "COMPLETE"})
    EXPECT_TRUE(fs::exists(fs::path(dir) / f)) << f;
  EXPECT_EQ(fs::read_symlink(fs::path(d / "checkpoints") / "latest").string(), "step_00000007");
  // Every accepted spelling resolves to the same directory.
  for (const std::string& p : {dir, d / "checkpoints/latest", d / "checkpoints", d.str()})
    EXPECT_EQ(resolve_checkpoint(p), fs::weakly_canonical(dir).string()) << p;
  std::vector<float> back(t.total(), 0.f);
  EXPECT_TRUE(load_weights(dir + "/model.safetensors", t, back.data()).empty());
  for (const auto& p : t.entries())
    for (size_t i = 0; i < p.numel; ++i) ASSERT_EQ(back[p.offset + i], w[p.offset + i]) << p.name;
  SafetensorsReader f(dir + "/model.safetensors");
  EXPECT_EQ(f.info("token_decoder.expansion_layer.weight").shape, (std::vector<int64_t>{32, 16, 1}));
  std::vector<float> m(t.total(), 0.f);
  SafetensorsReader o(dir + "/optimizer.safetensors");
  EXPECT_TRUE(load_flat_by_suffix(o, t, ".exp_avg", m.data()));
  EXPECT_FALSE(load_flat_by_suffix(o, t, ".master", m.data()));
  EXPECT_EQ(load_trainer_state(dir)["step"], 7);
  EXPECT_EQ(to_yaml(load_checkpoint_config(dir)), to_yaml(c));
}

TEST(Checkpoint, MissingCompleteIsNotACheckpoint) {
  TmpDir d("incomplete");
  const Config c = tiny_config();
  const std::string dir = save(d / "checkpoints", c, 3, random_flat(ParamTable(c.model), 1), 3);
  fs::remove(fs::path(dir) / "COMPLETE");
  expect_error([&] { resolve_checkpoint(dir); }, {dir, "COMPLETE"});
  EXPECT_TRUE(list_checkpoints(d / "checkpoints").empty());
  expect_error([&] { resolve_checkpoint(d / "nothing_here"); }, {"does not exist"});
}

TEST(Checkpoint, WeightsThatDoNotMatchTheConfig) {
  TmpDir d("mismatch");
  const Config c = tiny_config("block", 2, 16);
  const std::string dir = save(d / "checkpoints", c, 1, random_flat(ParamTable(c.model), 1), 3);
  const std::string file = dir + "/model.safetensors";
  // Wider model: the first tensor with another shape is named with both shapes.
  ParamTable wide(tiny_config("block", 2, 32).model);
  std::vector<float> buf(wide.total());
  expect_error([&] { load_weights(file, wide, buf.data()); }, {file, "embedder.embeddings.weight", "[40, 4]", "[40, 8]"});
  // Deeper model: a missing tensor.
  ParamTable deep(tiny_config("block", 3, 16).model);
  buf.resize(deep.total());
  expect_error([&] { load_weights(file, deep, buf.data()); },
               {"missing tensor", "block_decoder.gpt_neox.layers.2.input_layernorm.weight"});
  // Another kind of model.
  ParamTable van(tiny_config("vanilla", 2, 16).model);
  buf.resize(van.total());
  expect_error([&] { load_weights(file, van, buf.data()); }, {"missing tensor", "gpt_neox.embed_in.weight"});
  // Resume into another model: the differing key is named.
  expect_error([&] { check_same_model(c.model, tiny_config("block", 3, 16).model, "checkpoint X"); },
               {"model.block_decoder.layers", "checkpoint X"});
}

TEST(Checkpoint, ExtraTensorsAreReportedAndIgnored) {
  TmpDir d("extra");
  const Config c = tiny_config();
  ParamTable t(c.model);
  const auto w = random_flat(t, 2);
  std::vector<SafetensorOut> out = flat_tensors(t, w.data(), "");
  std::vector<float> unused(40 * 16, 3.f), inv(4, 1.f);
  // What official / HF files hold besides our parameters: the block decoder's unused embed_in,
  // old HF buffers.
  out.push_back({"block_decoder.gpt_neox.embed_in.weight", {40, 16}, unused.data()});
  out.push_back({"block_decoder.gpt_neox.layers.0.attention.rotary_emb.inv_freq", {4}, inv.data()});
  std::reverse(out.begin(), out.end());  // order in the file does not matter
  write_safetensors(d / "official.safetensors", out);
  std::vector<float> back(t.total(), 0.f);
  auto extra = load_weights(d / "official.safetensors", t, back.data());
  std::sort(extra.begin(), extra.end());
  EXPECT_EQ(extra, (std::vector<std::string>{"block_decoder.gpt_neox.embed_in.weight",
                                             "block_decoder.gpt_neox.layers.0.attention.rotary_emb.inv_freq"}));
  for (const auto& p : t.entries())
    for (size_t i = 0; i < p.numel; ++i) ASSERT_EQ(back[p.offset + i], w[p.offset + i]) << p.name;
  // The Conv1d weight may also come as a plain [R*D_T, D_B] matrix.
  ParamTable t2(c.model);
  std::vector<SafetensorOut> flat2;
  for (const auto& p : t2.entries()) flat2.push_back({p.name, p.shape, w.data() + p.offset});
  write_safetensors(d / "plain.safetensors", flat2);
  EXPECT_TRUE(load_weights(d / "plain.safetensors", t2, back.data()).empty());
}

TEST(Checkpoint, KeepLastKAndLatest) {
  TmpDir d("keep");
  const Config c = tiny_config("vanilla");
  ParamTable t(c.model);
  const std::string root = d / "checkpoints";
  for (int s = 1; s <= 5; ++s) save(root, c, s * 10, random_flat(t, s), 2);
  auto list = list_checkpoints(root);
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].first, 40);
  EXPECT_EQ(list[1].first, 50);
  EXPECT_EQ(fs::path(find_latest_checkpoint(root)).filename().string(), "step_00000050");
  // keep <= 0 keeps everything.
  save(root, c, 60, random_flat(t, 6), 0);
  EXPECT_EQ(list_checkpoints(root).size(), 3u);
  // Re-saving an existing step replaces it atomically (latest never dangles).
  const auto w2 = random_flat(t, 99);
  save(root, c, 60, w2, 0);
  std::vector<float> back(t.total());
  load_weights(find_latest_checkpoint(root) + "/model.safetensors", t, back.data());
  EXPECT_EQ(back[t.entries()[0].offset], w2[t.entries()[0].offset]);
  // Leftovers of a killed writer (a dead pid) are cleaned at the next save; a live one's are kept.
  fs::create_directories(fs::path(root) / "step_00000070.tmp-999999999");
  fs::create_directories(fs::path(root) / ("step_00000071.tmp-" + std::to_string(::getppid())));
  save(root, c, 70, random_flat(t, 7), 0);
  EXPECT_FALSE(fs::exists(fs::path(root) / "step_00000070.tmp-999999999"));
  EXPECT_TRUE(fs::exists(fs::path(root) / ("step_00000071.tmp-" + std::to_string(::getppid()))));
  // An older checkpoint saved after newer ones (a fresh run in an old out_dir) becomes latest.
  save(root, c, 5, random_flat(t, 8), 2);
  EXPECT_EQ(fs::path(find_latest_checkpoint(root)).filename().string(), "step_00000005");
}

// The `bt` command line turns the same problems into one line on stderr and exit status 1.
TEST(Checkpoint, CommandLineErrorsAreOneLine) {
  // BT_BINARY (set by ctest), else the `bt` next to the tests folder of this build.
  std::string bt_path;
  if (const char* b = std::getenv("BT_BINARY")) {
    bt_path = b;
  } else {
    std::error_code ec;
    const fs::path p = fs::canonical("/proc/self/exe", ec).parent_path().parent_path() / "bt";
    if (fs::exists(p, ec)) bt_path = p.string();
  }
  if (bt_path.empty()) GTEST_SKIP() << "BT_BINARY not set and no bt next to the tests";
  const char* bt = bt_path.c_str();
  TmpDir d("cli");
  const Config c = tiny_config("vanilla");
  ParamTable t(c.model);
  const std::string root = d / "checkpoints";
  const std::string dir = save(root, c, 1, random_flat(t, 1), 3);
  std::vector<int32_t> toks(16, 1);
  {
    std::ofstream f(d / "toks.bin", std::ios::binary);
    f.write(reinterpret_cast<const char*>(toks.data()), toks.size() * 4);
  }
  auto run = [&](const std::string& ckpt, const std::string& extra = "") {
    const std::string cmd = std::string(bt) + " eval --device cpu --ckpt " + ckpt + " --tokens-file " + (d / "toks.bin") +
                            " " + extra + " 2>" + (d / "err.txt") + " >/dev/null";
    const int rc = std::system(cmd.c_str());
    std::ifstream f(d / "err.txt");
    std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    return std::make_pair(rc, all);
  };
  auto expect_one_line = [&](const std::pair<int, std::string>& r, const std::string& needle) {
    EXPECT_NE(r.first, 0);
    EXPECT_EQ(std::count(r.second.begin(), r.second.end(), '\n'), 1) << r.second;
    EXPECT_EQ(r.second.rfind("error: ", 0), 0u) << r.second;
    EXPECT_NE(r.second.find(needle), std::string::npos) << r.second;
  };
  EXPECT_EQ(run(dir).first, 0);
  // A config that does not match the weights.
  expect_one_line(run(dir, "model.decoder.dim=32"), "gpt_neox.embed_in.weight");
  // A truncated safetensors file.
  fs::resize_file(fs::path(dir) / "model.safetensors", fs::file_size(fs::path(dir) / "model.safetensors") - 100);
  expect_one_line(run(dir), "truncated");
  // A directory without COMPLETE.
  fs::remove(fs::path(dir) / "COMPLETE");
  expect_one_line(run(dir), "COMPLETE");
}

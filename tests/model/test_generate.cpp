// KV-cached generation (infer/generator) equals naive generation (the training forward over the
// whole sequence for every new token), token for token: block models (several L_B and R) and the
// vanilla model, batches of prompts whose lengths are not multiples of L_B, greedy and sampled,
// stopping at EOS. Computed in double so that rounding can never flip a choice.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "core/rng.h"
#include "infer/generator.h"
#include "model/checkpoint.h"
#include "model/cpu/cpu_backend.h"
#include "model/model.h"

using namespace bt;

namespace {

ModelConfig block_cfg(int LB, int R, int L = 48) {
  ModelConfig m;
  m.kind = "block";
  m.vocab_size = 97;
  m.context_length = L;
  m.block_length = LB;
  m.embedder_dim = 32 / LB;
  m.block_decoder = {2, 32, 2, 64, 0};
  m.token_decoder = {2, 32, 2, 48, R};
  return m;
}

ModelConfig vanilla_cfg(int L = 40) {
  ModelConfig m;
  m.kind = "vanilla";
  m.vocab_size = 97;
  m.context_length = L;
  m.decoder = {3, 32, 2, 64, 0};
  return m;
}

// Random weights with LayerNorm parameters and biases moved off 1 / 0, and a larger init so that
// the next-token distributions are not flat.
void init_model(Model& model, uint64_t seed) {
  const ParamTable& t = model.table();
  std::vector<double> w = init_params(t, seed);
  Rng r(seed + 1);
  for (const auto& p : t.entries()) {
    const bool vec = p.kind != ParamKind::matrix && p.kind != ParamKind::embedding && p.kind != ParamKind::head;
    for (size_t i = 0; i < p.numel; ++i) w[p.offset + i] = vec ? w[p.offset + i] + 0.2 * r.normal() : 4 * w[p.offset + i];
  }
  model.set_params(w.data(), DType::f64);
}

std::vector<std::vector<int32_t>> make_prompts(const std::vector<int>& lengths, int V, uint64_t seed) {
  Rng r(seed);
  std::vector<std::vector<int32_t>> p;
  for (int n : lengths) {
    std::vector<int32_t> x(n);
    for (auto& t : x) t = static_cast<int32_t>(r.below(V));
    p.push_back(x);
  }
  return p;
}

// Cached (one batch) vs naive (one prompt at a time) on the same parameters.
void expect_same(const ModelConfig& m, DType dt, const std::vector<int>& lengths, const GenerateOptions& o,
                 uint64_t seed = 5) {
  auto be = make_cpu_backend(dt);
  Model naive_model(m, *be, 1);
  init_model(naive_model, seed);
  Model infer_model(m, *be, 0);  // inference-only: parameters only
  std::vector<double> w(naive_model.table().total());
  naive_model.get_params(w.data(), DType::f64);
  infer_model.set_params(w.data(), DType::f64);

  auto prompts = make_prompts(lengths, m.vocab_size, seed + 7);
  Generator gen(infer_model);
  GenerateResult r = gen.generate(prompts, o);
  auto ref = generate_naive(naive_model, prompts, o);
  ASSERT_EQ(r.tokens.size(), prompts.size());
  for (size_t b = 0; b < prompts.size(); ++b) {
    EXPECT_EQ(r.tokens[b], ref[b]) << m.kind << " model, L_B " << m.block_length << ", prompt " << b << " of length "
                                   << lengths[b];
    if (o.eos_id < 0) EXPECT_EQ(static_cast<int>(r.tokens[b].size()), o.max_new_tokens);
  }
  // The same call again (buffers reused) gives the same tokens.
  GenerateResult r2 = gen.generate(prompts, o);
  EXPECT_EQ(r2.tokens, r.tokens);
}

GenerateOptions greedy(int n) {
  GenerateOptions o;
  o.max_new_tokens = n;
  o.sampling.greedy = true;
  o.pad_id = 96;
  return o;
}

}  // namespace

TEST(Generate, BlockGreedyCachedEqualsNaive) {
  // Prompt lengths not multiples of L_B, different lengths in one batch (whole pad blocks hidden).
  expect_same(block_cfg(4, 2), DType::f64, {1, 2, 3, 5, 7, 9, 12}, greedy(13));
}

TEST(Generate, BlockOtherShapes) {
  expect_same(block_cfg(2, 1), DType::f64, {1, 3, 6}, greedy(9));
  expect_same(block_cfg(8, 3, 64), DType::f64, {3, 11, 17}, greedy(19));
  expect_same(block_cfg(1, 2, 24), DType::f64, {1, 4}, greedy(7));
}

TEST(Generate, VanillaGreedyCachedEqualsNaive) { expect_same(vanilla_cfg(), DType::f64, {1, 4, 6, 11}, greedy(17)); }

TEST(Generate, Float32AlsoMatches) {
  expect_same(block_cfg(4, 2), DType::f32, {3, 6}, greedy(10));
  expect_same(vanilla_cfg(), DType::f32, {2, 5}, greedy(10));
}

TEST(Generate, SamplingMatchesAndIsReproducible) {
  GenerateOptions o = greedy(11);
  o.sampling.greedy = false;
  o.sampling.temperature = 0.8;
  o.sampling.top_k = 20;
  o.sampling.top_p = 0.9;
  o.sampling.seed = 42;
  expect_same(block_cfg(4, 2), DType::f64, {2, 5, 7}, o);
  expect_same(vanilla_cfg(), DType::f64, {2, 5, 7}, o);
}

TEST(Generate, StopsAtEos) {
  for (const ModelConfig& m : {block_cfg(4, 2), vanilla_cfg()}) {
    auto be = make_cpu_backend(DType::f64);
    Model model(m, *be, 0);
    init_model(model, 9);
    Generator gen(model);
    auto prompts = make_prompts({3, 6, 10}, m.vocab_size, 3);
    GenerateResult free_run = gen.generate(prompts, greedy(12));
    // Make the 3rd greedy token of prompt 0 the EOS: that sequence stops there, the others run on
    // unless they meet it too.
    GenerateOptions o = greedy(12);
    o.eos_id = free_run.tokens[0][2];
    GenerateResult r = gen.generate(prompts, o);
    EXPECT_TRUE(r.hit_eos[0]);
    for (size_t b = 0; b < prompts.size(); ++b) {
      const auto& full = free_run.tokens[b];
      size_t cut = std::find(full.begin(), full.end(), o.eos_id) - full.begin();
      EXPECT_EQ(r.tokens[b], std::vector<int32_t>(full.begin(), full.begin() + cut)) << m.kind << " prompt " << b;
      EXPECT_EQ(r.hit_eos[b], cut < full.size());
    }
    expect_same(m, DType::f64, {3, 6, 10}, o, 9);
  }
}

TEST(Generate, KvCacheBytes) {
  const ModelConfig m = block_cfg(4, 2);
  auto be = make_cpu_backend(DType::f32);
  Model model(m, *be, 0);
  init_model(model, 1);
  Generator gen(model);
  auto prompts = make_prompts({5, 9}, m.vocab_size, 1);
  GenerateResult r = gen.generate(prompts, greedy(8));
  EXPECT_EQ(r.kv_cache_bytes, 2 * kv_bytes_per_sequence(m, 4, 9, 8));
  // Block decoder over (3 + 2) blocks, token decoder over R + L_B = 6 positions; 2 layers, k and v.
  EXPECT_EQ(kv_bytes_per_sequence(m, 4, 9, 8), size_t(4) * 2 * (2 * 32 * 5 + 2 * 32 * 6));
  const ModelConfig v = vanilla_cfg();
  EXPECT_EQ(kv_bytes_per_sequence(v, 4, 9, 8), size_t(4) * 2 * 3 * 32 * 17);
}

TEST(Generate, BadPrompts) {
  auto be = make_cpu_backend(DType::f32);
  Model model(vanilla_cfg(), *be, 0);
  Generator gen(model);
  EXPECT_THROW(gen.generate({{}}, greedy(3)), Error);          // empty prompt for a vanilla model
  EXPECT_THROW(gen.generate({{1, 200}}, greedy(3)), Error);    // id out of range
  EXPECT_THROW(model.forward(nullptr, nullptr, 1), Error);     // inference-only model has no forward
}

// `bt generate` (BT_BINARY) end to end: a checkpoint with random weights, the byte tokenizer, a
// batch of text prompts; the cached output equals `--naive`.
TEST(Generate, CommandLineCachedEqualsNaive) {
  namespace fs = std::filesystem;
  std::string bt;
  if (const char* b = std::getenv("BT_BINARY")) {
    bt = b;
  } else {
    std::error_code ec;
    const fs::path p = fs::canonical("/proc/self/exe", ec).parent_path().parent_path() / "bt";
    if (fs::exists(p, ec)) bt = p.string();
  }
  if (bt.empty()) GTEST_SKIP() << "BT_BINARY not set and no bt next to the tests";
  const fs::path tmp = fs::temp_directory_path() / ("bt_gen_cli_" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  Config c;
  c.model = block_cfg(4, 2, 64);
  c.model.vocab_size = 260;  // the byte tokenizer: 256 bytes + EOS (256)
  c.train.precision = "fp32";
  c.data.synthetic = "repeat:7";  // a valid config needs some data, even for inference
  ParamTable t(c.model);
  std::vector<double> w = init_params(t, 3);
  std::vector<float> wf(w.begin(), w.end());
  CheckpointContents cc;
  cc.step = 1;
  cc.config = &c;
  cc.table = &t;
  cc.params = wf.data();
  const std::string dir = save_checkpoint((tmp / "checkpoints").string(), cc, 1);
  auto run = [&](const std::string& extra) {
    const std::string out = (tmp / "out.txt").string();
    const std::string cmd = bt + " generate --device cpu --ckpt " + dir +
                            " --tokenizer byte --prompt 'Hello' --prompt 'a longer prompt' --greedy --max-new-tokens 9"
                            " --print-ids " + extra + " >" + out + " 2>" + out + ".err";
    const int rc = std::system(cmd.c_str());
    std::ifstream e(out + ".err");
    EXPECT_EQ(rc, 0) << cmd << "\n" << std::string((std::istreambuf_iterator<char>(e)), std::istreambuf_iterator<char>());
    std::ifstream f(out);
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  };
  const std::string cached = run(""), naive = run("--naive");
  EXPECT_NE(cached.find("=== sample 2"), std::string::npos) << cached;
  EXPECT_NE(cached.find("ids: "), std::string::npos) << cached;
  EXPECT_EQ(cached, naive);
  fs::remove_all(tmp);
}

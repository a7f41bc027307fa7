// KV-cached generation (infer/generator) equals naive generation (the training forward over the
// whole sequence for every new token), token for token: block models (several L_B and R) and the
// vanilla model, batches of prompts whose lengths are not multiples of L_B, greedy and sampled,
// stopping at EOS. Computed in double so that rounding can never flip a choice. Also: a prompt's
// samples do not depend on the batch, a decode step reads back only the new ids (the byte and
// sync counters of the CPU backend), the memory plan is what the generator allocates, the
// chunked prefill and the profiled run give the same tokens, and `bt bench infer --batch auto`.
#include <gtest/gtest.h>

#include <sstream>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "core/rng.h"
#include "infer/generator.h"
#include "model/checkpoint.h"
#include "model/cpu/cpu_backend.h"
#include "model/model.h"
#include "tests/test_util.h"

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

// The official variants: projection_layer embedder, summation token decoder, both.
ModelConfig variant_cfg(const std::string& method, const std::string& strategy, int LB = 4) {
  ModelConfig m = block_cfg(LB, 2);
  m.projection_method = method;
  if (method == "projection_layer") m.embedder_dim = 12;
  m.decoding_strategy = strategy;
  if (strategy == "summation") m.token_decoder.prefix_length = LB;
  m.bos_token_id = 95;
  return m;
}

TEST(Generate, VariantsCachedEqualNaive) {
  // Padded prompts (lengths not multiples of L_B), several in one batch.
  for (const char* method : {"concat", "projection_layer"})
    for (const char* strategy : {"prefix", "summation"}) {
      SCOPED_TRACE(std::string(method) + " + " + strategy);
      expect_same(variant_cfg(method, strategy), DType::f64, {1, 2, 3, 5, 7, 9}, greedy(13));
      expect_same(variant_cfg(method, strategy, 2), DType::f64, {1, 4, 5}, greedy(7));
    }
  GenerateOptions o = greedy(9);
  o.sampling.greedy = false;
  o.sampling.temperature = 0.9;
  o.sampling.seed = 3;
  expect_same(variant_cfg("projection_layer", "summation"), DType::f64, {2, 7}, o);
  expect_same(variant_cfg("projection_layer", "summation"), DType::f32, {3, 6}, greedy(10));
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
  // summation: the token decoder's local cache holds L_B = 4 positions
  ModelConfig sm = m;
  sm.decoding_strategy = "summation";
  sm.token_decoder.prefix_length = 4;
  EXPECT_EQ(kv_bytes_per_sequence(sm, 4, 9, 8), size_t(4) * 2 * (2 * 32 * 5 + 2 * 32 * 4));
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

  // The prompt pad is the model's pad token (here the byte tokenizer's EOS, 256), whatever the stop
  // token: `--eos-id -1` continues past EOS but pads the prompts ('Hello': 5 bytes, 3 pads in front)
  // the same way, so each sample it prints starts with what the default printed.
  auto ids = [](const std::string& out) {
    std::vector<std::string> v;
    std::istringstream in(out);
    for (std::string line; std::getline(in, line);)
      if (line.rfind("ids:", 0) == 0) v.push_back(line.substr(4));
    return v;
  };
  const auto by_default = ids(cached), no_stop = ids(run("--eos-id -1")), pad_eos = ids(run("--pad-id 256")),
             pad_zero = ids(run("--pad-id 0"));
  ASSERT_EQ(by_default.size(), 2u);
  ASSERT_EQ(no_stop.size(), 2u);
  for (size_t i = 0; i < 2; ++i)
    EXPECT_EQ(no_stop[i].rfind(by_default[i], 0), 0u) << "sample " << i << ": '" << no_stop[i] << "' vs '"
                                                      << by_default[i] << "'";
  EXPECT_EQ(pad_eos, by_default);
  EXPECT_NE(pad_zero, by_default) << "the pad id should change the output of an unaligned prompt";
  fs::remove_all(tmp);
}

// Sampled tokens of a prompt depend on its stream, not on its row or the rest of the batch.
TEST(Generate, SamplesDoNotDependOnTheBatch) {
  GenerateOptions o = greedy(9);
  o.sampling.greedy = false;
  o.sampling.temperature = 1.1;
  o.sampling.top_p = 0.97;
  o.sampling.seed = 5;
  for (const ModelConfig& m : {block_cfg(4, 2), vanilla_cfg()}) {
    auto be = make_cpu_backend(DType::f64);
    Model model(m, *be, 0);
    init_model(model, 4);
    Generator gen(model);
    const auto prompts = make_prompts({2, 7, 5, 3}, m.vocab_size, 8);
    o.streams = {10, 11, 12, 13};
    const GenerateResult all = gen.generate(prompts, o);
    // Reversed rows (streams with them) and each prompt alone.
    GenerateOptions r = o;
    r.streams = {13, 12, 11, 10};
    const GenerateResult rev = gen.generate({prompts[3], prompts[2], prompts[1], prompts[0]}, r);
    for (int b = 0; b < 4; ++b) {
      EXPECT_EQ(rev.tokens[3 - b], all.tokens[b]) << m.kind << " prompt " << b << " in another row";
      GenerateOptions one = o;
      one.streams = {10 + b};
      EXPECT_EQ(gen.generate({prompts[b]}, one).tokens[0], all.tokens[b]) << m.kind << " prompt " << b << " alone";
    }
    // Another stream gives other samples.
    GenerateOptions other = o;
    other.streams = {20, 21, 22, 23};
    EXPECT_NE(gen.generate(prompts, other).tokens, all.tokens) << m.kind;
  }
}

// The decode loop reads back the new ids only: at most 8 bytes per sequence and token (block:
// 4 L_B bytes per block), no logits, nothing uploaded; the same protocol the CUDA backend runs.
TEST(Generate, DecodeStepsMoveOnlyTheNewIds) {
  for (const ModelConfig& m : {block_cfg(4, 2), block_cfg(1, 2, 24), vanilla_cfg()}) {
    auto be = make_cpu_backend(DType::f32);
    Model model(m, *be, 0);
    init_model(model, 2);
    Generator gen(model);
    for (int B : {1, 6}) {
      const auto prompts = make_prompts(std::vector<int>(B, 5), m.vocab_size, 1);
      const GenerateResult r = gen.generate(prompts, greedy(13));
      const TransferStats& t = r.decode_transfers;
      EXPECT_LE(t.d2h_bytes, size_t(8) * B * r.steps) << m.kind << " L_B " << m.block_length << " B " << B;
      EXPECT_EQ(t.d2h_bytes, size_t(4) * B * (m.is_block() ? m.block_length * ((r.steps + m.block_length - 1) / m.block_length) : r.steps));
      EXPECT_LT(t.d2h_bytes / std::max<uint64_t>(1, t.d2h_copies), size_t(4) * B * m.vocab_size) << "logits came back";
      EXPECT_EQ(t.h2d_bytes, 0u);
      EXPECT_EQ(t.syncs, t.d2h_copies + 1);
      EXPECT_GT(r.prefill_transfers.h2d_bytes, 0u);  // prompts, starts, streams, counters
    }
  }
}

// plan_decode is exactly what a fresh generator allocates (the CPU backend rounds to 64 bytes),
// and largest_batch is the boundary of the plan.
TEST(Generate, MemoryPlanIsWhatTheGeneratorAllocates) {
  for (const ModelConfig& m : {block_cfg(4, 2), block_cfg(8, 3, 64), variant_cfg("projection_layer", "summation"),
                               variant_cfg("projection_layer", "prefix"), vanilla_cfg()}) {
    for (int B : {1, 7}) {
      for (auto [prompt, gen_len] : {std::pair{9, 5}, std::pair{3, 20}}) {
        auto be = make_cpu_backend(DType::f32);
        Model model(m, *be, 0);
        Generator gen(model);
        const size_t before = be->bytes_allocated();
        gen.reserve(B, prompt, gen_len, 16);
        const DecodePlan plan = plan_decode(m, DType::f32, DType::f32, B, prompt, gen_len, 16, 64);
        EXPECT_EQ(be->bytes_allocated() - before, plan.total()) << m.kind << " B " << B << " " << prompt << ":" << gen_len;
        EXPECT_EQ(plan.kv_cache, ((size_t(B) * kv_bytes_per_sequence(m, 4, prompt, gen_len)) + 0)) << m.kind;
        // A generate call of that shape allocates nothing more.
        const size_t reserved = be->bytes_allocated();
        GenerateOptions o = greedy(gen_len);
        o.prefill_rows = 16;
        gen.generate(make_prompts(std::vector<int>(B, prompt), m.vocab_size, 3), o);
        EXPECT_EQ(be->bytes_allocated(), reserved) << m.kind;
      }
    }
    const size_t budget = size_t(3) << 20;
    const int64_t best = largest_batch(m, DType::bf16, DType::f32, budget, 30, 10, 100000);
    ASSERT_GT(best, 1);
    EXPECT_LE(plan_decode(m, DType::bf16, DType::f32, best, 30, 10).total(), budget);
    EXPECT_GT(plan_decode(m, DType::bf16, DType::f32, best + 1, 30, 10).total(), budget);
    EXPECT_EQ(largest_batch(m, DType::bf16, DType::f32, 1000, 30, 10, 100), 0) << "nothing fits 1000 bytes";
  }
}

// A plan for no sequence is refused with a one-line error (it divided the prefill rows by B = 0:
// SIGFPE).
TEST(Generate, EmptyBatchIsRefused) {
  for (const ModelConfig& m : {block_cfg(4, 2), vanilla_cfg()}) {
    const std::string msg = bt::test::error_of([&] { plan_decode(m, DType::f32, DType::f32, 0, 9, 5); });
    EXPECT_NE(msg.find("at least one sequence, got 0"), std::string::npos) << msg;
    EXPECT_EQ(largest_batch(m, DType::f32, DType::f32, size_t(1) << 30, 9, 5, 0), 0) << "max_batch 0: nothing";
  }
}

// Prefill in chunks of a few positions per call, and the profiled run: the same tokens.
TEST(Generate, ChunkedPrefillAndProfilingGiveTheSameTokens) {
  for (const ModelConfig& m : {block_cfg(2, 1), variant_cfg("projection_layer", "summation", 2), vanilla_cfg()}) {
    auto be = make_cpu_backend(DType::f64);
    Model model(m, *be, 0);
    init_model(model, 6);
    Generator gen(model);
    const auto prompts = make_prompts({1, 11, 6}, m.vocab_size, 2);
    const GenerateResult ref = gen.generate(prompts, greedy(7));
    for (int64_t rows : {1, 3, 7}) {
      GenerateOptions o = greedy(7);
      o.prefill_rows = rows;
      EXPECT_EQ(gen.generate(prompts, o).tokens, ref.tokens) << m.kind << " prefill rows " << rows;
    }
    GenerateOptions o = greedy(7);
    o.profile = true;
    const GenerateResult p = gen.generate(prompts, o);
    EXPECT_EQ(p.tokens, ref.tokens) << m.kind << " profiled";
    EXPECT_GT(p.phases.token_decoder, 0) << m.kind;
    EXPECT_GT(p.phases.head, 0) << m.kind;
    EXPECT_GT(p.phases.sampling, 0) << m.kind;
    EXPECT_EQ(p.phases.block_decoder > 0, m.is_block()) << m.kind;
  }
}

// `bt bench infer --batch auto` on the CPU: plans a batch for the given memory and runs it.
TEST(Generate, BenchInferBatchAuto) {
  namespace fs = std::filesystem;
  const char* b = std::getenv("BT_BINARY");
  const char* src = std::getenv("BT_SOURCE_DIR");
  if (!b || !src) GTEST_SKIP() << "BT_BINARY / BT_SOURCE_DIR not set";
  const fs::path out = fs::temp_directory_path() / ("bt_bench_auto_" + std::to_string(::getpid()) + ".txt");
  const std::string cmd = std::string(b) + " bench infer --config " + src +
                          "/configs/tiny/block_b4.yaml --vs " + src +
                          "/configs/tiny/vanilla.yaml --device cpu --batch 2,auto --memory 0.017 --settings decode"
                          " --decode-heavy 8:8 --max-batch 64 model.vocab_size=256 > " + out.string() + " 2>&1";
  const int rc = std::system(cmd.c_str());
  std::ifstream f(out);
  const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  fs::remove(out);
  ASSERT_EQ(rc, 0) << cmd << "\n" << text;
  EXPECT_NE(text.find("batch auto [tiny_block_b4 decode-heavy]: batch"), std::string::npos) << text;
  EXPECT_NE(text.find("allocated"), std::string::npos) << text;
  EXPECT_NE(text.find("per decode step: block decoder"), std::string::npos) << text;
  EXPECT_NE(text.find("throughput ratio"), std::string::npos) << text;
}

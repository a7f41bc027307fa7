// Decoding on the CUDA backend (on the SIMT emulator in CI): the sampling kernel against the CPU
// reference on the same logits (ids, history, stop flags; greedy, temperature, top-k, top-p,
// ties; fp32 and bf16 logits); a chi-square test of its draws; whole generation on the device
// against the CPU, token for token, greedy and with a fixed seed; the host <-> device traffic
// of a decode step; and CUDA-graph replay against plain launches, bit for bit, for both models
// and several batch sizes.
#include <gtest/gtest.h>

#include <cstring>

#include "infer/generator.h"
#include "model/cuda/cuda_backend.h"
#include "model/model.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/unit/sampling_check.h"

using namespace bt;
using namespace bt::gputest;

namespace {

ModelConfig block_cfg(int LB = 4, int R = 2) {
  ModelConfig m;
  m.kind = "block";
  m.vocab_size = 61;
  m.context_length = 48;
  m.block_length = LB;
  m.embedder_dim = 32 / LB;
  m.block_decoder = {2, 32, 2, 48, 0};
  m.token_decoder = {2, 32, 2, 40, R};
  m.init_std = 0.15;  // peaked next-token distributions
  return m;
}

// The official variants: the projection_layer embedder and the summation token decoder (R = L_B).
ModelConfig variant_cfg(const std::string& method = "projection_layer", const std::string& strategy = "summation") {
  ModelConfig m = block_cfg(4, 2);
  m.projection_method = method;
  if (method == "projection_layer") m.embedder_dim = 12;
  m.decoding_strategy = strategy;
  if (strategy == "summation") m.token_decoder.prefix_length = m.block_length;
  m.bos_token_id = 60;
  return m;
}

ModelConfig vanilla_cfg() {
  ModelConfig m;
  m.kind = "vanilla";
  m.vocab_size = 61;
  m.context_length = 40;
  m.decoder = {2, 32, 2, 48, 0};
  m.init_std = 0.15;
  return m;
}

std::vector<std::vector<int32_t>> prompts_of(const std::vector<int>& lengths, int V, uint64_t seed) {
  std::vector<std::vector<int32_t>> p;
  for (size_t i = 0; i < lengths.size(); ++i) p.push_back(random_ids(lengths[i], V, seed + i));
  return p;
}

// One model with the same weights on a backend.
struct Side {
  std::unique_ptr<Backend> be;
  std::unique_ptr<Model> model;
  std::unique_ptr<Generator> gen;
  Side(std::unique_ptr<Backend> b, const ModelConfig& m, const std::vector<float>& w) : be(std::move(b)) {
    model = std::make_unique<Model>(m, *be, 0);
    model->set_params(w.data(), DType::f32);
    gen = std::make_unique<Generator>(*model);
  }
};

std::vector<float> weights_for(const ModelConfig& m) {
  auto cpu = make_cpu();
  Model model(m, *cpu, 0);
  model.init(11);
  std::vector<float> w(model.table().total());
  cpu->download(w.data(), DType::f32, model.params());
  return w;
}

GenerateOptions greedy(int n) {
  GenerateOptions o;
  o.max_new_tokens = n;
  o.sampling.greedy = true;
  o.pad_id = 60;
  return o;
}
GenerateOptions sampled(int n, uint64_t seed) {
  GenerateOptions o = greedy(n);
  o.sampling.greedy = false;
  o.sampling.temperature = 0.9;
  o.sampling.top_k = 20;
  o.sampling.top_p = 0.95;
  o.sampling.seed = seed;
  return o;
}

class CudaDecode : public testing::TestWithParam<Mode> {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no GPU";
  }
};

// The kernel and the CPU reference on the same logits: the same ids, history and stop flags.
// V = 700 runs 96 threads per row, V = 5000 the most (512): the same ids either way.
void compare_sampling(const Mode& mode, int B, int V) {
  auto gpu = make_gpu(mode);
  auto cpu = make_cpu();
  const int W = 3;
  std::vector<float> lg = random_vec(size_t(B) * V, 5 + V, 2.0, mode.bf16());
  for (int v = 0; v < V; v += 7) lg[1 * V + v] = 1.5f;  // row 1: many ties, some at the top
  for (int v = 0; v < V; ++v) lg[2 * V + v] = representable(float(v % 5), mode.bf16());  // row 2: ties everywhere
  if (B > 3) lg[3 * V + 17] = 40.f;  // row 3: one token far ahead (the rest underflow to weight 0)
  if (B > 4) {  // row 4: ties everywhere, one larger logit last: a top-k cut through the ties
    for (int v = 0; v < V; ++v) lg[4 * V + v] = representable(float(v % 5), mode.bf16());
    lg[4 * V + V - 1] = 4.5f;
  }
  std::vector<int32_t> seq(B), done(B, 0);
  for (int b = 0; b < B; ++b) seq[b] = 1000 + 7 * b;
  if (B > 9) done[5] = done[9] = 1;
  std::vector<SampleParams> params(7);
  params[0].greedy = true;
  params[1].seed = 3;
  params[2].temperature = 0.6;
  params[2].top_k = 5;
  params[3].temperature = 1.4;
  params[3].top_p = 0.9;
  params[4].top_k = 50;
  params[4].top_p = 0.5;
  params[5].top_k = 1;
  params[6].top_p = 1e-6;  // the most likely token only
  for (size_t i = 0; i < params.size(); ++i) {
    SampleParams p = params[i];
    if (i != 1) p.seed = 100 + i;
    p.eos_id = int(i) % 3 == 0 ? 3 : -1;
    for (int32_t step : {0, 4, 1000}) {
      std::vector<std::vector<int32_t>> out[2];
      Backend* bes[2] = {gpu.get(), cpu.get()};
      for (int k = 0; k < 2; ++k) {
        Backend& be = *bes[k];
        Tensor tl = put(be, {B, V}, lg, be.act_dtype());
        Tensor ids = be.alloc({B}, DType::i32), hist = put_ids(be, {B, W}, std::vector<int32_t>(B * W, -7));
        Tensor dn = put_ids(be, {B}, done), sq = put_ids(be, {B}, seq), st = put_ids(be, {1}, {step});
        be.sample_tokens(tl, DecodeState{ids, hist, dn, sq, st}, p);
        for (Tensor t : {ids, hist, dn}) {
          std::vector<int32_t> h(t.numel());
          be.download(h.data(), DType::i32, t);
          out[k].push_back(h);
        }
      }
      const char* what[3] = {"ids", "hist", "done"};
      for (int j = 0; j < 3; ++j)
        EXPECT_EQ(out[0][j], out[1][j]) << what[j] << " differ: params " << i << ", step " << step << ", V " << V
                                        << " [" << mode.precision << "]";
    }
  }
  // Every row with its own parameters and token index (a server's batch): the same as the CPU.
  std::vector<int32_t> words(size_t(B) * kSampleParamWords), steps(B);
  for (int b = 0; b < B; ++b) {
    SampleParams p = params[b % params.size()];
    p.seed = 7 * b + 1;
    p.eos_id = b % 2 ? 3 : -1;
    pack_sample_params(p, words.data() + size_t(b) * kSampleParamWords);
    steps[b] = 3 * b + (b % 4);
  }
  std::vector<std::vector<int32_t>> out[2];
  Backend* bes[2] = {gpu.get(), cpu.get()};
  for (int k = 0; k < 2; ++k) {
    Backend& be = *bes[k];
    Tensor tl = put(be, {B, V}, lg, be.act_dtype());
    Tensor ids = be.alloc({B}, DType::i32), hist = put_ids(be, {B, W}, std::vector<int32_t>(B * W, -7));
    Tensor dn = put_ids(be, {B}, done), sq = put_ids(be, {B}, seq), st = put_ids(be, {B}, steps);
    Tensor pw = put_ids(be, {B, kSampleParamWords}, words);
    be.sample_tokens(tl, DecodeState{ids, hist, dn, sq, st, pw}, SampleParams{});
    for (Tensor t : {ids, hist, dn}) {
      std::vector<int32_t> h(t.numel());
      be.download(h.data(), DType::i32, t);
      out[k].push_back(h);
    }
  }
  for (int j = 0; j < 3; ++j)
    EXPECT_EQ(out[0][j], out[1][j]) << "per-row parameters and steps, output " << j << ", V " << V << " ["
                                    << mode.precision << "]";
}

// Rows at their own positions (pos [B]) on the device and on the CPU: the same caches and
// outputs; a row parked past its cache writes nothing; counters [K, n] advance per row.
TEST_P(CudaDecode, RowsAtTheirOwnPositionsMatchCpu) {
  const Mode mode = GetParam();
  auto gpu = make_gpu(mode);
  auto cpu = make_cpu();
  const int64_t B = 4, H = 2, hd = 16, Tmax = 11;
  const RotaryParams rope{8, 10000};
  const std::vector<int32_t> pos = {4, 0, 10, 11}, start = {1, 0, 3, 0};
  const auto hk = random_vec(B * H * Tmax * hd, 31, 1.0, mode.bf16()), hv = random_vec(B * H * Tmax * hd, 32, 1.0, mode.bf16());
  const auto hqkv = random_vec(B * 3 * H * hd, 33, 1.0, mode.bf16());
  std::vector<double> k_out[2], o_out[2];
  Backend* bes[2] = {gpu.get(), cpu.get()};
  for (int i = 0; i < 2; ++i) {
    Backend& be = *bes[i];
    Tensor kc = put(be, {B, H, Tmax, hd}, hk, be.act_dtype()), vc = put(be, {B, H, Tmax, hd}, hv, be.act_dtype());
    Tensor qkv = put(be, {B, 1, 3 * H * hd}, hqkv, be.act_dtype());
    Tensor q = be.alloc({B, H, 1, hd}, be.act_dtype()), out = be.alloc({B, 1, H * hd}, be.act_dtype());
    Tensor dp = put_ids(be, {B}, pos), ds = put_ids(be, {B}, start);
    be.qkv_rotary_cache_at(q, kc, vc, qkv, dp, rope);
    be.attention_cached_at(out, q, kc, vc, ds, dp);
    k_out[i] = get(be, kc);
    o_out[i] = get(be, out);
    o_out[i].resize(3 * H * hd);  // the parked row's output means nothing (its query was not written)
  }
  const bool bf = mode.bf16();
  expect_close(k_out[0], k_out[1], bf ? Tol{1.0 / 256, 1.0 / 256} : Tol{1e-5, 1e-6}, "per-row qkv_rotary_cache_at");
  expect_close(o_out[0], o_out[1], bf ? Tol{1.0 / 64, 1.0 / 128} : Tol{1e-4, 1e-5}, "per-row attention_cached_at");
  const size_t row = H * Tmax * hd;
  for (size_t e = 3 * row; e < 4 * row; ++e) ASSERT_EQ(k_out[0][e], double(hk[e])) << "the parked row's cache moved";
  Tensor c = put_ids(*gpu, {2, 3}, {0, 1, 2, 10, 11, 12});
  gpu->add_i32(c, {5, -1});
  std::vector<int32_t> h(6);
  gpu->download(h.data(), DType::i32, c);
  EXPECT_EQ(h, (std::vector<int32_t>{5, 6, 7, 9, 10, 11}));
}

TEST_P(CudaDecode, SampleTokensMatchesCpu) {
  compare_sampling(GetParam(), 24, 700);
  compare_sampling(GetParam(), 3, 5000);
}

TEST_P(CudaDecode, DrawsFollowTheRenormalisedDistribution) {
  auto gpu = make_gpu(GetParam());
  for (const sampling_check::Case& c : sampling_check::cases()) sampling_check::chi_square(*gpu, c, 3000);
}

// The same model on the device and on the CPU (fp32): the same tokens.
TEST_P(CudaDecode, GenerationMatchesCpu) {
  if (GetParam().bf16()) GTEST_SKIP() << "token-for-token equality needs fp32 logits";
  for (const ModelConfig& m : {block_cfg(4, 2), block_cfg(2, 1), variant_cfg(), variant_cfg("concat", "summation"),
                               variant_cfg("projection_layer", "prefix"), vanilla_cfg()}) {
    const auto w = weights_for(m);
    Side g(make_gpu(GetParam()), m, w), c(make_cpu(), m, w);
    const auto prompts = prompts_of({3, 9, 1, 6}, m.vocab_size, 7);
    for (const GenerateOptions& o : {greedy(10), sampled(10, 42)}) {
      const GenerateResult rg = g.gen->generate(prompts, o), rc = c.gen->generate(prompts, o);
      EXPECT_EQ(rg.tokens, rc.tokens) << m.kind << " L_B " << m.block_length << " " << m.projection_method << " "
                                      << m.decoding_strategy << (o.sampling.greedy ? " greedy" : " sampled");
      EXPECT_EQ(rg.hit_eos, rc.hit_eos);
    }
    // EOS stopping on the device: the third token of prompt 0 as the stop token.
    GenerateOptions o = greedy(10);
    o.eos_id = c.gen->generate(prompts, o).tokens[0][2];
    const GenerateResult rg = g.gen->generate(prompts, o), rc = c.gen->generate(prompts, o);
    EXPECT_EQ(rg.tokens, rc.tokens) << m.kind << " with EOS " << o.eos_id;
    EXPECT_EQ(rg.hit_eos, rc.hit_eos);
    EXPECT_TRUE(rg.hit_eos[0]);
  }
}

// A decode step reads back the new ids only: at most 8 bytes per sequence and token, never logits.
TEST_P(CudaDecode, DecodeStepsMoveOnlyTheNewIds) {
  for (const ModelConfig& m : {block_cfg(4, 2), variant_cfg(), vanilla_cfg()}) {
    Side g(make_gpu(GetParam()), m, weights_for(m));
    for (int B : {1, 5}) {
      const auto prompts = prompts_of(std::vector<int>(B, 6), m.vocab_size, 3);
      g.gen->generate(prompts, sampled(16, 1));  // the first call sizes the rotary tables (an upload)
      const GenerateResult r = g.gen->generate(prompts, sampled(16, 1));
      const TransferStats& t = r.decode_transfers;
      const size_t logits_bytes = size_t(B) * m.vocab_size * dtype_size(g.be->act_dtype());
      EXPECT_LE(t.d2h_bytes, size_t(8) * B * r.steps) << m.kind << " B " << B;
      EXPECT_GT(t.d2h_bytes, 0u);
      EXPECT_LT(t.d2h_bytes / std::max<uint64_t>(1, t.d2h_copies), logits_bytes) << "a copy as large as the logits";
      EXPECT_EQ(t.h2d_bytes, 0u) << m.kind << ": nothing goes up during decoding";
      const uint64_t reads = m.is_block() ? uint64_t((r.steps + m.block_length - 1) / m.block_length) : r.steps;
      EXPECT_EQ(t.d2h_copies, reads) << m.kind << ": one read per " << (m.is_block() ? "block" : "token");
      EXPECT_EQ(t.syncs, reads + 1) << m.kind << ": the reads and the final synchronize";
    }
  }
}

// Graph replay against plain launches: the same tokens and the same logits, bit for bit.
TEST_P(CudaDecode, GraphReplayEqualsPlainLaunches) {
  for (const ModelConfig& m : {block_cfg(4, 2), variant_cfg(), vanilla_cfg()}) {
    const auto w = weights_for(m);
    Side graphs(make_gpu(GetParam()), m, w), plain(make_gpu(GetParam()), m, w);
    cuda_set_graphs(*plain.be, false);
    for (int B : {1, 3, 6}) {
      const auto prompts = prompts_of(std::vector<int>(B, 5), m.vocab_size, 100 + B);
      for (const GenerateOptions& o : {sampled(12, 9)}) {
        for (int call = 0; call < 2; ++call) {  // the second call replays the first block's step too
          const GenerateResult a = graphs.gen->generate(prompts, o), b = plain.gen->generate(prompts, o);
          EXPECT_EQ(a.tokens, b.tokens) << m.kind << " B " << B << " call " << call;
          const Tensor la = graphs.gen->last_logits(), lb = plain.gen->last_logits();
          ASSERT_EQ(la.bytes(), lb.bytes());
          std::vector<unsigned char> ha(la.bytes()), hb(lb.bytes());
          graphs.be->download(ha.data(), DType::u8, Tensor(la.data, {int64_t(la.bytes())}, DType::u8, la.device));
          plain.be->download(hb.data(), DType::u8, Tensor(lb.data, {int64_t(lb.bytes())}, DType::u8, lb.device));
          EXPECT_TRUE(ha == hb) << m.kind << " B " << B << ": the last logits differ in their bits";
        }
      }
    }
    const CudaGraphStats sg = cuda_graph_stats(*graphs.be), sp = cuda_graph_stats(*plain.be);
    EXPECT_TRUE(sg.enabled);
    EXPECT_GT(sg.captures, 0u) << m.kind;
    EXPECT_GT(sg.replays, 3 * sg.captures) << m.kind << ": the steps were not replayed";
    EXPECT_EQ(sp.captures + sp.replays, 0u);
    std::printf("%s L_B %d: %llu graphs captured, %llu replays\n", m.kind.c_str(), m.block_length,
                (unsigned long long)sg.captures, (unsigned long long)sg.replays);
  }
}

// A step that reads back to the host cannot be captured: a clear error, and the backend goes on.
TEST_P(CudaDecode, AStepMustStayOnTheDevice) {
  auto gpu = make_gpu(GetParam());
  Tensor t = put_ids(*gpu, {4}, {1, 2, 3, 4});
  std::vector<int32_t> h(4);
  auto bad = [&] {
    gpu->add_i32(t, {1, 1, 1, 1});
    gpu->download(h.data(), DType::i32, t);
  };
  gpu->run_step(1, bad);  // plain
  try {
    gpu->run_step(1, bad);  // captured
    FAIL() << "a download inside a captured step was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("replayable step"), std::string::npos) << e.what();
  }
  gpu->forget_steps();
  gpu->add_i32(t, {10, 0, 0, 0});
  gpu->download(h.data(), DType::i32, t);
  EXPECT_EQ(h, (std::vector<int32_t>{12, 3, 4, 5}));
  // A good step: captured once, replayed; the counters advance at each replay.
  for (int i = 0; i < 4; ++i) gpu->run_step(2, [&] { gpu->add_i32(t, {1, 0, 0, 2}); });
  gpu->download(h.data(), DType::i32, t);
  EXPECT_EQ(h, (std::vector<int32_t>{16, 3, 4, 13}));
}

// The memory plan of `bt bench infer --batch auto` is what the generator takes from the arena.
TEST_P(CudaDecode, MemoryPlanIsWhatTheArenaHandsOut) {
  for (const ModelConfig& m : {block_cfg(4, 2), variant_cfg(), vanilla_cfg()}) {
    auto gpu = make_gpu(GetParam());
    Model model(m, *gpu, 0);
    Generator gen(model);
    const size_t before = cuda_memory_stats(*gpu).arena_used;
    gen.reserve(5, 11, 9, 8);
    const DecodePlan plan = plan_decode(m, gpu->act_dtype(), gpu->grad_dtype(), 5, 11, 9, 8, 256);
    EXPECT_EQ(cuda_memory_stats(*gpu).arena_used - before, plan.total()) << m.kind;
  }
}

INSTANTIATE_TEST_SUITE_P(Precisions, CudaDecode, testing::Values(fp32_mode(), bf16_mode()), mode_name);

}  // namespace

// Zero-shot scoring (infer/lm_scorer) on the CUDA backend against the CPU backend: the same
// weights and the same loglikelihood requests (random lengths, left truncation, choices that share
// a context, continuations that contain the pad id), for the vanilla model (packed windows, and
// the shared-context KV-cache path that gathers cache rows with embedding_forward) and the block
// model in both context modes (rows of only pads in the block decoder in pad mode). is_greedy is
// compared where the CPU's margin between the best and second-best logit is clear of rounding.
//
// Bounds: fp32 mode: each loglikelihood within 2e-5 relative (+1e-5). bf16 mode (weights
// rounded to bf16 for both; the CPU computes in fp32): 5e-3 relative (+0.02); measured 8e-4.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "infer/lm_scorer.h"
#include "model/model.h"
#include "tests/gpu/gpu_test_util.h"

using namespace bt;
using namespace bt::gputest;

namespace {

constexpr int V = 61, PAD = 60;

ModelConfig vanilla_cfg() {
  ModelConfig m;
  m.kind = "vanilla";
  m.vocab_size = V;
  m.context_length = 64;
  m.decoder = {2, 32, 2, 64, 0};
  m.init_std = 0.1;
  return m;
}

ModelConfig block_cfg() {
  ModelConfig m;
  m.kind = "block";
  m.vocab_size = V;
  m.context_length = 64;
  m.block_length = 4;
  m.embedder_dim = 8;
  m.block_decoder = {2, 32, 2, 64, 0};
  m.token_decoder = {2, 32, 2, 48, 2};
  m.init_std = 0.1;
  return m;
}

// Requests: 6 questions of 2-4 choices sharing a context, 6 single requests (one of them with a
// context of only the pad id, as a rolling window's EOT prefix, and one whose continuation holds
// a pad id), and two longer than max_length + 1 (truncated from the left).
std::vector<LLRequest> requests(int max_len) {
  Rng r(5);
  auto ids = [&](int n) {
    std::vector<int32_t> v(static_cast<size_t>(n), 0);
    for (auto& t : v) t = int32_t(r.below(PAD));
    return v;
  };
  std::vector<LLRequest> q;
  for (int i = 0; i < 6; ++i) {
    const auto ctx = ids(3 + int(r.below(20)));
    for (int c = 0, n = 2 + int(r.below(3)); c < n; ++c) q.push_back({ctx, ids(1 + int(r.below(6))), c == 0});
  }
  for (int i = 0; i < 6; ++i) q.push_back({ids(1 + int(r.below(12))), ids(1 + int(r.below(9))), true});
  q.push_back({std::vector<int32_t>{PAD}, ids(9), true});
  q.push_back({ids(5), std::vector<int32_t>{3, PAD, 7}, true});
  q.push_back({ids(max_len), ids(4), true});
  q.push_back({ids(max_len + 7), ids(max_len), false});
  return q;
}

std::vector<float> weights(const ModelConfig& m, Backend& be, bool bf16) {
  Model tmp(m, be, 0);
  tmp.init(7);
  std::vector<float> w(tmp.table().total());
  be.download(w.data(), DType::f32, tmp.params());
  Rng r(3);
  for (const auto& p : tmp.table().entries())
    if (p.kind != ParamKind::matrix && p.kind != ParamKind::embedding && p.kind != ParamKind::head)
      for (size_t i = 0; i < p.numel; ++i) w[p.offset + i] += float(0.1 * r.normal());
  for (auto& x : w) x = representable(x, bf16);
  return w;
}

std::vector<LLResult> score(const ModelConfig& cfg, Backend& be, const std::vector<float>& w, BlockContext mode,
                            int max_len, int batch, bool share) {
  ModelConfig m = cfg;
  m.context_length = scorer_window(cfg, max_len, mode);
  Model model(m, be, batch);
  model.set_params(w.data(), DType::f32);
  ScorerOptions o;
  o.max_length = max_len;
  o.block_context = mode;
  o.pad_id = PAD;
  o.share_context = share;
  LMScorer s(model, o);
  return s.score(requests(max_len));
}

void compare(const ModelConfig& cfg, const Mode& mode, BlockContext ctx, bool share) {
  const int max_len = 24;
  auto gpu = make_gpu(mode);
  auto cpu = make_cpu();
  const auto w = weights(cfg, *cpu, mode.bf16());
  const auto rc = score(cfg, *cpu, w, ctx, max_len, 3, share);
  const auto rg = score(cfg, *gpu, w, ctx, max_len, 3, share);
  ASSERT_EQ(rc.size(), rg.size());
  const double rtol = mode.bf16() ? 5e-3 : 2e-5, atol = mode.bf16() ? 0.02 : 1e-5;
  double worst = 0;
  int greedy_true = 0;
  for (size_t i = 0; i < rc.size(); ++i) {
    EXPECT_EQ(rg[i].scored, rc[i].scored) << i;
    const double err = std::abs(rg[i].logprob - rc[i].logprob);
    worst = std::max(worst, err / (std::abs(rc[i].logprob) + 1e-9));
    EXPECT_LE(err, rtol * std::abs(rc[i].logprob) + atol) << "request " << i;
    EXPECT_EQ(rg[i].greedy_known, rc[i].greedy_known) << i;
    if (!mode.bf16() && rc[i].greedy_known) {
      EXPECT_EQ(rg[i].is_greedy, rc[i].is_greedy) << i;
      greedy_true += rc[i].is_greedy;
    }
  }
  std::printf("%s %s %s: %zu requests, worst relative loglikelihood error %.3g, %d greedy\n", cfg.kind.c_str(),
              to_string(ctx), mode.precision.c_str(), rc.size(), worst, greedy_true);
}

class CudaEvalTasks : public testing::TestWithParam<Mode> {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no GPU";
  }
};

TEST_P(CudaEvalTasks, VanillaSharedContext) { compare(vanilla_cfg(), GetParam(), BlockContext::pad, true); }
TEST_P(CudaEvalTasks, VanillaWindows) { compare(vanilla_cfg(), GetParam(), BlockContext::pad, false); }
TEST_P(CudaEvalTasks, BlockPad) { compare(block_cfg(), GetParam(), BlockContext::pad, true); }
TEST_P(CudaEvalTasks, BlockNoPad) { compare(block_cfg(), GetParam(), BlockContext::nopad, true); }

INSTANTIATE_TEST_SUITE_P(Precisions, CudaEvalTasks, testing::Values(fp32_mode(), bf16_mode()), mode_name);

}  // namespace

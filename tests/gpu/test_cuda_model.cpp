// The whole Block Transformer and vanilla model on the CUDA backend against the CPU backend:
// same weights, same batch; the loss (and the per-position losses) and the gradient of every
// parameter tensor. Configs cover L_B = 1, 4, 8, R = 1, 2, 4, short token-decoder rows (the
// T <= 32 attention kernel) and block-decoder / vanilla rows longer than 32 (the flash kernels),
// with and without padding (pads are hidden from attention: every kernel family with a key mask,
// including rows that have no visible key).
//
// Bounds: fp32 mode: loss relative 1e-5, each parameter gradient relative L2 error 1e-4.
// bf16 mode (weights rounded to bf16 for both backends; the CPU computes in fp32): loss
// relative 1e-2, gradients relative L2 5e-2 (bf16 activations through every layer).
#include <gtest/gtest.h>

#include <cmath>

#include "model/model.h"
#include "tests/gpu/gpu_test_util.h"

using namespace bt;
using namespace bt::gputest;

namespace {

ModelConfig block_cfg(int V, int L, int LB, int R, int D, int H) {
  ModelConfig m;
  m.kind = "block";
  m.vocab_size = V;
  m.context_length = L;
  m.block_length = LB;
  m.embedder_dim = D / LB;
  m.block_decoder = {2, D, H, 3 * D + 1, 0};
  m.token_decoder = {2, D, H, 2 * D + 3, R};
  m.init_std = 0.1;  // larger than the paper's 0.02 so that attention and logits are far from uniform
  return m;
}

// An official variant of block_cfg: the embedder's projection_method and the token decoder's
// decoding_strategy.
ModelConfig variant_cfg(int V, int L, int LB, int D, int H, const std::string& method, const std::string& strategy) {
  ModelConfig m = block_cfg(V, L, LB, 2, D, H);
  m.projection_method = method;
  if (method == "projection_layer") m.embedder_dim = 5;  // any width (odd: no vector loads)
  m.decoding_strategy = strategy;
  if (strategy == "summation") m.token_decoder.prefix_length = LB;
  m.bos_token_id = 3;
  return m;
}

ModelConfig vanilla_cfg(int V, int L, int D, int H) {
  ModelConfig m;
  m.kind = "vanilla";
  m.vocab_size = V;
  m.context_length = L;
  m.decoder = {2, D, H, 4 * D, 0};
  m.init_std = 0.1;
  return m;
}

enum class Pads { none, every5, documents };

struct Case {
  std::string name;
  ModelConfig cfg;
  int B;
  Pads pads;
};

// The pad mask [B, L]: none, every fifth token, or documents as the loader pads them with both
// paper options (front pads 0..L_B-1, pads after each EOS to the block boundary; documents of
// 3..40 tokens), with sequence 0 starting with two blocks of only pads (hidden from the block
// decoder; the vanilla model's first queries see no key).
std::vector<uint8_t> pad_mask(Pads pads, int B, int L, int LB) {
  std::vector<uint8_t> mask(size_t(B) * L, 1);
  if (pads == Pads::every5)
    for (size_t i = 0; i < mask.size(); i += 5) mask[i] = 0;
  if (pads != Pads::documents) return mask;
  Rng r(17);
  for (int b = 0; b < B; ++b) {
    int p = b == 0 ? 2 * LB : 0;
    for (int i = 0; i < p && i < L; ++i) mask[size_t(b) * L + i] = 0;
    while (p < L) {
      const int front = int(r.below(LB)), len = 3 + int(r.below(38));
      for (int i = 0; i < front && p < L; ++i) mask[size_t(b) * L + p++] = 0;
      p += len;  // the document and its EOS
      while (p < L && p % LB != 0) mask[size_t(b) * L + p++] = 0;
    }
  }
  return mask;
}

// Initial weights as host floats: the init of docs/design.md §2.1, with norm weights and biases moved off 1/0 so
// their gradients are generic, rounded to bf16 when the GPU stores bf16.
std::vector<float> weights(Model& model, Backend& be, bool bf16) {
  model.init(7);
  std::vector<float> w(model.table().total());
  be.download(w.data(), DType::f32, model.params());
  Rng r(3);
  for (const auto& p : model.table().entries())
    if (p.kind != ParamKind::matrix && p.kind != ParamKind::embedding && p.kind != ParamKind::head)
      for (size_t i = 0; i < p.numel; ++i) w[p.offset + i] += float(0.1 * r.normal());
  for (auto& x : w) x = representable(x, bf16);
  return w;
}

void compare_model(const Case& c, const Mode& mode) {
  auto gpu = make_gpu(mode);
  auto cpu = make_cpu();
  Model mg(c.cfg, *gpu, c.B), mc(c.cfg, *cpu, c.B);
  const auto w = weights(mc, *cpu, mode.bf16());
  mc.set_params(w.data(), DType::f32);
  mg.set_params(w.data(), DType::f32);
  const int L = c.cfg.context_length;
  auto tokens = random_ids(size_t(c.B) * L, c.cfg.vocab_size, 11);
  const std::vector<uint8_t> mask = pad_mask(c.pads, c.B, L, c.cfg.is_block() ? c.cfg.block_length : 4);
  mg.zero_grads();
  mc.zero_grads();
  const LossStats sc = mc.forward(tokens.data(), mask.data(), c.B, true, 1.0);
  const double dscale = 1.0 / double(sc.targets);
  mc.zero_grads();
  const LossStats lc = mc.forward(tokens.data(), mask.data(), c.B, true, dscale);
  const LossStats lg = mg.forward(tokens.data(), mask.data(), c.B, true, dscale);
  const std::string tag = c.name + " [" + mode.precision + "]";
  ASSERT_EQ(lg.targets, lc.targets) << tag;
  const double loss_tol = mode.bf16() ? 1e-2 : 1e-5, grad_tol = mode.bf16() ? 5e-2 : 1e-4;
  EXPECT_NEAR(lg.mean(), lc.mean(), loss_tol * lc.mean()) << tag << ": loss";
  for (size_t p = 0; p < lc.pos_sum.size(); ++p) {
    if (lc.pos_count[p] == 0) continue;
    EXPECT_NEAR(lg.pos_sum[p], lc.pos_sum[p], loss_tol * std::abs(lc.pos_sum[p]) + 1e-6)
        << tag << ": loss at position " << p;
  }
  mg.backward();
  mc.backward();
  std::vector<double> gg(mg.table().total()), gc(mc.table().total());
  gpu->download(gg.data(), DType::f64, mg.grads());
  cpu->download(gc.data(), DType::f64, mc.grads());
  double total = 0;
  for (double x : gc) total += x * x;
  const double floor = 1e-6 * std::sqrt(total);
  double worst = 0;
  std::string worst_name;
  for (const auto& p : mc.table().entries()) {
    const std::vector<double> a(gg.begin() + p.offset, gg.begin() + p.offset + p.numel);
    const std::vector<double> b(gc.begin() + p.offset, gc.begin() + p.offset + p.numel);
    const double err = rel_l2(a, b, floor);
    if (err > worst) {
      worst = err;
      worst_name = p.name;
    }
    EXPECT_LT(err, grad_tol) << tag << ": gradient of " << p.name;
  }
  std::printf("%s: loss gpu %.7f cpu %.7f; worst gradient relative L2 error %.3g (%s)\n", tag.c_str(), lg.mean(),
              lc.mean(), worst, worst_name.c_str());
}

class CudaModel : public testing::TestWithParam<Mode> {};

TEST_P(CudaModel, BlockShortRows) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  compare_model({"block L=16 LB=4 R=2 D=16", block_cfg(37, 16, 4, 2, 16, 2), 2, Pads::none}, GetParam());
}
TEST_P(CudaModel, BlockWithPads) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  compare_model({"block pads", block_cfg(37, 16, 4, 2, 16, 2), 2, Pads::every5}, GetParam());
}
TEST_P(CudaModel, BlockWithDocumentPads) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  compare_model({"block document pads", block_cfg(37, 32, 4, 2, 16, 2), 3, Pads::documents}, GetParam());
}
TEST_P(CudaModel, BlockLengthOnePrefixOne) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  compare_model({"block LB=1 R=1", block_cfg(29, 8, 1, 1, 16, 2), 3, Pads::none}, GetParam());
}
TEST_P(CudaModel, BlockLengthEightPrefixFour) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  compare_model({"block LB=8 R=4", block_cfg(41, 24, 8, 4, 24, 3), 2, Pads::documents}, GetParam());
}
TEST_P(CudaModel, BlockLongBlockDecoder) {  // N = 40 blocks: the flash kernels in the block decoder
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  compare_model({"block L=160 N=40 D=64", block_cfg(101, 160, 4, 2, 64, 2), 2, Pads::documents}, GetParam());
}
TEST_P(CudaModel, SummationWithDocumentPads) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  compare_model({"block summation", variant_cfg(37, 32, 4, 16, 2, "concat", "summation"), 3, Pads::documents},
                GetParam());
}
TEST_P(CudaModel, ProjectionLayerWithDocumentPads) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  compare_model({"block projection_layer", variant_cfg(37, 32, 4, 16, 2, "projection_layer", "prefix"), 3,
                 Pads::documents},
                GetParam());
}
TEST_P(CudaModel, ProjectionLayerSummationLongBlockDecoder) {  // N = 40: flash kernels
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  compare_model({"block projection_layer summation L=160", variant_cfg(101, 160, 4, 64, 2, "projection_layer",
                                                                       "summation"),
                 2, Pads::documents},
                GetParam());
}
TEST_P(CudaModel, VanillaShort) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  compare_model({"vanilla L=12 D=16", vanilla_cfg(23, 12, 16, 2), 2, Pads::every5}, GetParam());
}
TEST_P(CudaModel, VanillaLong) {  // T = 100 > 32, hd = 32: flash
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  compare_model({"vanilla L=100 D=64", vanilla_cfg(97, 100, 64, 2), 2, Pads::none}, GetParam());
}
TEST_P(CudaModel, VanillaLongWithPads) {  // flash with a key mask; sequence 0 starts with 8 pads
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  compare_model({"vanilla L=100 D=64 pads", vanilla_cfg(97, 100, 64, 2), 2, Pads::documents}, GetParam());
}

INSTANTIATE_TEST_SUITE_P(Precisions, CudaModel, testing::Values(fp32_mode(), bf16_mode()), mode_name);

}  // namespace

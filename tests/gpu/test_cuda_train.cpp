// Training on the GPU: 50 AdamW steps (bt::AdamW, gradient clipping through sum_squares and
// scale) on a fixed random batch, in bf16 with fp32 master weights, track the CPU fp32 loss
// curve within 2% at every step; and determinism: two runs from scratch give bit-identical
// losses, gradients and parameters.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "model/model.h"
#include "optim/adamw.h"
#include "tests/gpu/gpu_test_util.h"

using namespace bt;
using namespace bt::gputest;

namespace {

ModelConfig tiny_block() {
  ModelConfig m;
  m.kind = "block";
  m.vocab_size = 64;
  m.context_length = 48;
  m.block_length = 4;
  m.embedder_dim = 8;  // D_B = 32
  m.block_decoder = {2, 32, 2, 128, 0};
  m.token_decoder = {2, 32, 2, 128, 2};
  return m;
}

ModelConfig tiny_vanilla() {
  ModelConfig m;
  m.kind = "vanilla";
  m.vocab_size = 64;
  m.context_length = 48;  // > 32: the flash kernels
  m.decoder = {2, 32, 2, 128, 0};
  return m;
}

struct Run {
  std::vector<double> losses;
  std::vector<float> grads;      // after the last step's backward
  std::vector<uint16_t> params;  // raw bits of the final parameters (bf16, or f32 as pairs of halves)
};

// `steps` AdamW steps on one fixed batch; weights from the init of docs/design.md §2.1 rounded to bf16 so the
// CPU and GPU runs start from the same point.
Run train(Backend& be, const ModelConfig& cfg, int steps) {
  const int B = 4, L = cfg.context_length;
  Model model(cfg, be, B);
  model.init(1234);
  std::vector<float> w(model.table().total());
  be.download(w.data(), DType::f32, model.params());
  for (auto& x : w) x = representable(x, true);
  model.set_params(w.data(), DType::f32);
  OptimConfig oc;
  oc.lr = 1e-3;
  oc.weight_decay = 0.1;
  AdamW opt(model, oc);
  const auto tokens = random_ids(size_t(B) * L, cfg.vocab_size, 99);
  const double targets = cfg.is_block() ? double(B) * (L - cfg.block_length) : double(B) * (L - 1);
  Run run;
  for (int s = 0; s < steps; ++s) {
    model.zero_grads();
    const LossStats st = model.forward(tokens.data(), nullptr, B, true, 1.0 / targets);
    model.backward();
    const double f = clip_factor(grad_norm(be, model.grads()), oc.grad_clip);
    if (f < 1.0) be.scale(model.grads(), f);
    opt.step(oc.lr);
    run.losses.push_back(st.mean());
  }
  run.grads.resize(model.table().total());
  be.download(run.grads.data(), DType::f32, model.grads());
  if (model.params().dtype == DType::bf16) {
    run.params.resize(model.table().total());
    be.download(run.params.data(), DType::bf16, model.params());
  } else {
    std::vector<float> p(model.table().total());
    be.download(p.data(), DType::f32, model.params());
    run.params.resize(2 * p.size());
    std::memcpy(run.params.data(), p.data(), 4 * p.size());
  }
  return run;
}

void loss_curve(const ModelConfig& cfg, const char* name) {
  auto gpu = make_gpu(bf16_mode());
  auto cpu = make_cpu();
  const Run g = train(*gpu, cfg, 50), c = train(*cpu, cfg, 50);
  for (size_t s = 0; s < c.losses.size(); ++s)
    EXPECT_NEAR(g.losses[s], c.losses[s], 0.02 * c.losses[s]) << name << ": step " << s;
  EXPECT_LT(c.losses.back(), 0.97 * c.losses.front()) << name << ": the CPU run did not learn the batch";
  std::printf("%s: loss cpu fp32 %.4f -> %.4f, gpu bf16 %.4f -> %.4f\n", name, c.losses.front(), c.losses.back(),
              g.losses.front(), g.losses.back());
}

TEST(CudaTrain, BlockBf16TracksCpuLossCurve) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  loss_curve(tiny_block(), "block");
}

TEST(CudaTrain, VanillaBf16TracksCpuLossCurve) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  loss_curve(tiny_vanilla(), "vanilla");
}

void deterministic(const Mode& mode, const ModelConfig& cfg) {
  Run a, b;
  {
    auto gpu = make_gpu(mode);
    a = train(*gpu, cfg, 5);
  }
  {
    auto gpu = make_gpu(mode);
    b = train(*gpu, cfg, 5);
  }
  ASSERT_EQ(a.losses.size(), b.losses.size());
  for (size_t s = 0; s < a.losses.size(); ++s)
    EXPECT_EQ(std::memcmp(&a.losses[s], &b.losses[s], sizeof(double)), 0)
        << mode.precision << ": loss of step " << s << " differs: " << a.losses[s] << " vs " << b.losses[s];
  ASSERT_EQ(a.grads.size(), b.grads.size());
  EXPECT_EQ(std::memcmp(a.grads.data(), b.grads.data(), 4 * a.grads.size()), 0)
      << mode.precision << ": gradients differ between runs";
  EXPECT_EQ(a.params, b.params) << mode.precision << ": parameters differ between runs";
}

TEST(CudaTrain, BitIdenticalRunsBf16) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  deterministic(bf16_mode(), tiny_block());
  deterministic(bf16_mode(), tiny_vanilla());
}

TEST(CudaTrain, BitIdenticalRunsFp32) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  deterministic(fp32_mode(), tiny_block());
}

}  // namespace

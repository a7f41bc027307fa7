// The optimizer pieces: the lr schedule's shape, one AdamW step against the formula (decoupled
// decay, bias correction), the decay modes, and clipping by global norm.
#include <gtest/gtest.h>

#include <cmath>

#include "model/cpu/cpu_backend.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "optim/lr_schedule.h"

using namespace bt;

TEST(LrSchedule, WarmupThenCosineToMinRatio) {
  OptimConfig o;
  o.lr = 1e-3;
  o.warmup_steps = 10;
  o.min_lr_ratio = 0.1;
  const int64_t total = 111;  // 100 decay steps after warmup: step 60 is halfway
  EXPECT_DOUBLE_EQ(lr_at(o, 0, total), 1e-4);  // (step + 1) / warmup
  EXPECT_DOUBLE_EQ(lr_at(o, 4, total), 5e-4);
  EXPECT_DOUBLE_EQ(lr_at(o, 9, total), 1e-3);
  EXPECT_NEAR(lr_at(o, 10, total), 1e-3, 1e-12);           // cosine starts at the peak
  EXPECT_NEAR(lr_at(o, total - 1, total), 1e-4, 1e-12);    // and ends at min_lr_ratio x peak
  const double mid = lr_at(o, 60, total);
  EXPECT_NEAR(mid, 0.55e-3, 1e-12);  // halfway: the mean of peak and min
  for (int64_t s = 11; s < total; ++s) EXPECT_LE(lr_at(o, s, total), lr_at(o, s - 1, total));
  o.schedule = "constant";
  EXPECT_DOUBLE_EQ(lr_at(o, 50, total), 1e-3);
  EXPECT_DOUBLE_EQ(lr_at(o, 5, total), 6e-4);
}

namespace {
ModelConfig tiny() {
  ModelConfig m;
  m.kind = "vanilla";
  m.vocab_size = 11;
  m.context_length = 8;
  m.decoder = {1, 8, 2, 16, 0};
  return m;
}
}  // namespace

// Two AdamW steps on the model's flat buffers against the formula, per parameter kind.
void adamw_against_formula(const std::string& decay) {
  auto be = make_cpu_backend(DType::f64);
  Model model(tiny(), *be, 1);
  model.init(3);
  OptimConfig o;
  o.lr = 0.01;
  o.beta1 = 0.9;
  o.beta2 = 0.95;
  o.eps = 1e-8;
  o.weight_decay = 0.1;
  o.decay = decay;
  AdamW opt(model, o);
  const size_t n = model.table().total();
  double* w = model.params().ptr<double>();
  double* g = model.grads().ptr<double>();
  std::vector<double> w0(w, w + n), m(n, 0), v(n, 0);
  for (int t = 1; t <= 2; ++t) {
    for (size_t i = 0; i < n; ++i) g[i] = std::sin(double(i) * 0.37 + t);
    opt.step(o.lr);
    for (const auto& p : model.table().entries()) {
      const double wd = param_decays(p, decay) ? o.weight_decay : 0.0;
      for (size_t i = p.offset; i < p.offset + p.numel; ++i) {
        m[i] = o.beta1 * m[i] + (1 - o.beta1) * g[i];
        v[i] = o.beta2 * v[i] + (1 - o.beta2) * g[i] * g[i];
        const double mh = m[i] / (1 - std::pow(o.beta1, t)), vh = v[i] / (1 - std::pow(o.beta2, t));
        w0[i] -= o.lr * (mh / (std::sqrt(vh) + o.eps) + wd * w0[i]);
        ASSERT_NEAR(w[i], w0[i], 1e-14) << p.name << " step " << t;
      }
    }
  }
}

TEST(AdamW, MatchesFormulaDecayAll) { adamw_against_formula("all"); }
TEST(AdamW, MatchesFormulaDecayMatrices) { adamw_against_formula("matrices"); }

TEST(AdamW, DecayModes) {
  ParamTable t(tiny());
  for (const auto& p : t.entries()) {
    EXPECT_TRUE(param_decays(p, "all")) << p.name;
    const bool is_2d = p.shape.size() == 2;
    EXPECT_EQ(param_decays(p, "matrices"), is_2d) << p.name;
  }
}

TEST(Clip, GlobalNorm) {
  EXPECT_DOUBLE_EQ(clip_factor(0.5, 1.0), 1.0);
  EXPECT_DOUBLE_EQ(clip_factor(5.0, 0.0), 1.0);  // 0 disables clipping
  EXPECT_NEAR(clip_factor(4.0, 1.0) * 4.0, 1.0, 1e-6);
  auto be = make_cpu_backend(DType::f64);
  Tensor g = be->alloc({4}, DType::f64);
  double vals[4] = {3, 0, 4, 0};
  be->upload(g, vals, DType::f64);
  EXPECT_DOUBLE_EQ(grad_norm(*be, g), 5.0);
}

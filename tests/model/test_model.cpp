// Whole-model tests on tiny sizes (docs/design.md §9.2): gradient check in double over every parameter
// tensor (sampled entries), causality, block 0 never a target, one batch overfits, and the
// parameter counts of the paper configs.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/rng.h"
#include "model/cpu/cpu_backend.h"
#include "model/model.h"
#include "optim/adamw.h"

using namespace bt;

namespace {

ModelConfig tiny_block(int V = 23, int L = 16, int LB = 4, int R = 2) {
  ModelConfig m;
  m.kind = "block";
  m.vocab_size = V;
  m.context_length = L;
  m.block_length = LB;
  m.embedder_dim = 16 / LB;
  m.block_decoder = {2, 16, 2, 24, 0};
  m.token_decoder = {2, 16, 2, 20, R};
  return m;
}

// The official variants: embedder projection_method and token-decoder decoding_strategy.
ModelConfig tiny_variant(const std::string& method, const std::string& strategy, int LB = 4) {
  ModelConfig m = tiny_block(23, 16, LB, 2);
  m.projection_method = method;
  if (method == "projection_layer") m.embedder_dim = 6;  // any width: the projection maps it to D_B
  m.decoding_strategy = strategy;
  if (strategy == "summation") m.token_decoder.prefix_length = LB;
  m.bos_token_id = 5;
  return m;
}

ModelConfig tiny_vanilla(int V = 23, int L = 12) {
  ModelConfig m;
  m.kind = "vanilla";
  m.vocab_size = V;
  m.context_length = L;
  m.decoder = {2, 16, 2, 24, 0};
  return m;
}

std::vector<int32_t> random_tokens(int n, int V, uint64_t seed) {
  Rng r(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(r.below(V));
  return t;
}

// A pad mask [B, L] as the loader builds it with both paper options (docs/data.md), for a block
// model with L_B = 4 and L = 16: sequence 0 has front pads before a document, the end of a
// document padded to the block boundary and the next document's front pads; sequence 1 starts
// with a block of only pads (hidden from the block decoder, a row with no visible key) and ends
// with boundary pads. Further sequences: every fifth token a pad.
std::vector<uint8_t> loader_like_mask(int B, int L) {
  std::vector<uint8_t> mask(size_t(B) * L, 1);
  const uint8_t s0[16] = {0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1};
  const uint8_t s1[16] = {0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0};
  for (int b = 0; b < B; ++b)
    for (int p = 0; p < L; ++p) mask[size_t(b) * L + p] = b == 0 ? s0[p % 16] : b == 1 ? s1[p % 16] : (p % 5 != 0);
  return mask;
}

// Central differences over sampled entries of every parameter tensor; relative error < 1e-6.
void gradient_check(const ModelConfig& m, int B, bool with_pads, std::vector<uint8_t> mask = {}) {
  auto be = make_cpu_backend(DType::f64);
  Model model(m, *be, B);
  model.init(7);
  // Perturb the LayerNorm parameters and biases away from 1/0 so their gradients are generic.
  double* w = model.params().ptr<double>();
  Rng r(3);
  for (const auto& p : model.table().entries())
    if (p.kind != ParamKind::matrix && p.kind != ParamKind::embedding && p.kind != ParamKind::head)
      for (size_t i = 0; i < p.numel; ++i) w[p.offset + i] += 0.1 * r.normal();
  const int L = m.context_length;
  auto tokens = random_tokens(B * L, m.vocab_size, 11);
  if (mask.empty()) {
    mask.assign(B * L, 1);
    if (with_pads)
      for (int i = 0; i < B * L; i += 5) mask[i] = 0;
  }
  model.zero_grads();
  model.forward(tokens.data(), mask.data(), B, true, 1.0);
  model.backward();
  const double* g = model.grads().ptr<double>();
  auto loss = [&] { return model.forward(tokens.data(), mask.data(), B).loss_sum; };
  // Fourth-order central differences (f(x±h), f(x±2h)): truncation O(h^4) stays far below the
  // forward's rounding noise, so the comparison measures the analytic gradient, not the stencil.
  const double h = 1e-3;
  double worst = 0;
  std::string worst_name;
  for (const auto& p : model.table().entries()) {
    const int samples = std::min<int>(8, static_cast<int>(p.numel));
    for (int s = 0; s < samples; ++s) {
      const size_t i = p.offset + (p.numel == size_t(samples) ? s : r.below(p.numel));
      const double orig = w[i];
      auto at = [&](double dx) {
        w[i] = orig + dx;
        const double l = loss();
        w[i] = orig;
        return l;
      };
      const double lp = 8 * (at(h) - at(-h)), lm = at(2 * h) - at(-2 * h);
      const double num = (lp - lm) / (12 * h), ana = g[i];
      const double rel = std::abs(num - ana) / std::max({std::abs(num), std::abs(ana), 1e-4});
      if (rel > worst) {
        worst = rel;
        worst_name = p.name;
      }
      EXPECT_LT(rel, 1e-6) << p.name << " entry " << i - p.offset << ": analytic " << ana << " numeric " << num;
    }
  }
  std::printf("worst relative error %.3g (%s)\n", worst, worst_name.c_str());
}

}  // namespace

TEST(ModelGrad, BlockDoubleAllParameters) { gradient_check(tiny_block(), 2, false); }
TEST(ModelGrad, BlockWithPads) { gradient_check(tiny_block(), 2, true); }
TEST(ModelGrad, BlockLengthOnePrefixOne) { gradient_check(tiny_block(23, 8, 1, 1), 2, false); }
TEST(ModelGrad, BlockLengthEightPrefixFour) { gradient_check(tiny_block(23, 24, 8, 4), 1, false); }
TEST(ModelGrad, VanillaDoubleAllParameters) { gradient_check(tiny_vanilla(), 2, true); }
TEST(ModelGrad, BlockWithLoaderPads) { gradient_check(tiny_block(), 3, true, loader_like_mask(3, 16)); }
TEST(ModelGrad, SummationWithLoaderPads) {
  gradient_check(tiny_variant("concat", "summation"), 3, true, loader_like_mask(3, 16));
}
TEST(ModelGrad, ProjectionLayerWithLoaderPads) {
  gradient_check(tiny_variant("projection_layer", "prefix"), 3, true, loader_like_mask(3, 16));
}
TEST(ModelGrad, ProjectionLayerSummationWithLoaderPads) {
  gradient_check(tiny_variant("projection_layer", "summation"), 3, true, loader_like_mask(3, 16));
}
TEST(ModelGrad, SummationBlockLengthTwo) { gradient_check(tiny_variant("projection_layer", "summation", 2), 2, false); }
TEST(ModelGrad, VanillaWithLeadingPads) { gradient_check(tiny_vanilla(23, 16), 3, true, loader_like_mask(3, 16)); }

// Pads are hidden from attention (the official attention_mask = 0): changing a pad token changes
// no logit at a later position of the same token-decoder row (block model) or of the window
// (vanilla); the logits its own query produces and, through the embedder, later blocks may
// change. With the pad made visible (mask 1) the same change does reach the later positions.
void pads_hidden(const ModelConfig& m, int pad_pos) {
  auto be = make_cpu_backend(DType::f64);
  const int B = 1, L = m.context_length, V = m.vocab_size;
  Model model(m, *be, B);
  model.init(5);
  auto tokens = random_tokens(L, V, 2);
  std::vector<uint8_t> mask(L, 1);
  mask[pad_pos] = 0;
  auto logits = [&](const std::vector<int32_t>& t, const uint8_t* mk) {
    model.forward(t.data(), mk, B);
    std::vector<double> out(model.logits().numel());
    be->download(out.data(), DType::f64, model.logits());
    return out;
  };
  auto changed = tokens;
  changed[pad_pos] = (changed[pad_pos] + 1) % V;
  // Later positions that can see pad_pos when it is visible: the rest of its block (block model)
  // or the rest of the window (vanilla).
  const int LB = m.is_block() ? m.block_length : L;
  const int end = m.is_block() ? (pad_pos / LB + 1) * LB : L;
  for (int visible = 0; visible < 2; ++visible) {
    const uint8_t* mk = visible ? nullptr : mask.data();
    const auto a = logits(tokens, mk), b = logits(changed, mk);
    double later = 0;
    for (int p = pad_pos + 2; p < end; ++p) {
      const int64_t row = model.logit_row(0, p);
      for (int v = 0; v < V; ++v) later = std::max(later, std::abs(a[row * V + v] - b[row * V + v]));
    }
    if (visible) EXPECT_GT(later, 1e-6) << "a visible token must reach the later positions";
    else EXPECT_EQ(later, 0.0) << "a pad reached a later position";
  }
}

TEST(ModelPads, HiddenFromTokenDecoder) { pads_hidden(tiny_block(23, 16, 4, 2), 9); }
TEST(ModelPads, HiddenFromTokenDecoderLB8) { pads_hidden(tiny_block(23, 24, 8, 3), 10); }
TEST(ModelPads, HiddenFromVanilla) { pads_hidden(tiny_vanilla(23, 12), 3); }
TEST(ModelPads, HiddenFromSummationRows) { pads_hidden(tiny_variant("projection_layer", "summation"), 9); }

// A mask of all ones is no mask: the same loss and gradients, bit for bit (the unmasked kernels).
TEST(ModelPads, AllOnesMaskIsNoMask) {
  for (const ModelConfig& m : {tiny_block(), tiny_vanilla()}) {
    auto be = make_cpu_backend(DType::f32);
    const int B = 2, L = m.context_length;
    Model model(m, *be, B);
    model.init(3);
    auto tokens = random_tokens(B * L, m.vocab_size, 6);
    std::vector<uint8_t> ones(B * L, 1);
    std::vector<float> g1(model.table().total()), g2(g1.size());
    model.zero_grads();
    const double l1 = model.forward(tokens.data(), nullptr, B, true).loss_sum;
    model.backward();
    be->download(g1.data(), DType::f32, model.grads());
    model.zero_grads();
    const double l2 = model.forward(tokens.data(), ones.data(), B, true).loss_sum;
    model.backward();
    be->download(g2.data(), DType::f32, model.grads());
    EXPECT_EQ(l1, l2);
    EXPECT_TRUE(g1 == g2);
  }
}

// Changing the token at position p changes no logit that predicts a position <= p, and does
// change some logit that predicts a later position.
void causality(const ModelConfig& m) {
  auto be = make_cpu_backend(DType::f64);
  const int B = 2, L = m.context_length;
  Model model(m, *be, B);
  model.init(5);
  auto tokens = random_tokens(B * L, m.vocab_size, 2);
  const int first = m.is_block() ? m.block_length : 1;
  for (int p = 0; p < L - 1; ++p) {
    model.forward(tokens.data(), nullptr, B);
    Tensor lg = model.logits();
    std::vector<double> before(lg.numel());
    be->download(before.data(), DType::f64, lg);
    auto changed = tokens;
    const int b = p % B;
    changed[b * L + p] = (changed[b * L + p] + 1) % m.vocab_size;
    model.forward(changed.data(), nullptr, B);
    std::vector<double> after(lg.numel());
    be->download(after.data(), DType::f64, lg);
    const int V = m.vocab_size;
    bool later_changed = false;
    for (int q = first; q < L; ++q) {
      const int64_t row = model.logit_row(b, q);
      double diff = 0;
      for (int v = 0; v < V; ++v) diff = std::max(diff, std::abs(after[row * V + v] - before[row * V + v]));
      if (q <= p) EXPECT_EQ(diff, 0.0) << "position " << p << " changed the logits predicting " << q;
      else if (diff > 0) later_changed = true;
    }
    EXPECT_TRUE(later_changed) << "position " << p << " changed nothing after it";
    // the other sequence of the batch is untouched
    for (int q = first; q < L; ++q) {
      const int64_t row = model.logit_row(1 - b, q);
      for (int v = 0; v < V; ++v) ASSERT_EQ(after[row * V + v], before[row * V + v]);
    }
  }
}

TEST(ModelCausality, Block) { causality(tiny_block()); }
TEST(ModelCausality, BlockLength8) { causality(tiny_block(23, 24, 8, 3)); }
TEST(ModelCausality, Vanilla) { causality(tiny_vanilla()); }
TEST(ModelCausality, Summation) { causality(tiny_variant("concat", "summation")); }
TEST(ModelCausality, ProjectionLayer) { causality(tiny_variant("projection_layer", "prefix")); }

TEST(ModelTargets, BlockZeroIsNeverATarget) {
  auto be = make_cpu_backend(DType::f64);
  ModelConfig m = tiny_block();
  const int B = 2, L = m.context_length, LB = m.block_length;
  Model model(m, *be, B);
  model.init(1);
  auto tokens = random_tokens(B * L, m.vocab_size, 4);
  LossStats all = model.forward(tokens.data(), nullptr, B);
  EXPECT_EQ(all.targets, int64_t(B) * (L - LB));
  ASSERT_EQ(all.pos_count.size(), size_t(LB));
  for (int j = 0; j < LB; ++j) EXPECT_EQ(all.pos_count[j], int64_t(B) * (L / LB - 1));
  // Only block 0 unmasked: nothing is left to predict.
  std::vector<uint8_t> mask(B * L, 0);
  for (int b = 0; b < B; ++b)
    for (int p = 0; p < LB; ++p) mask[b * L + p] = 1;
  LossStats only0 = model.forward(tokens.data(), mask.data(), B);
  EXPECT_EQ(only0.targets, 0);
  EXPECT_EQ(only0.loss_sum, 0.0);
}

TEST(ModelTargets, TokenOutOfRangeIsAnError) {
  auto be = make_cpu_backend(DType::f32);
  ModelConfig m = tiny_block();
  Model model(m, *be, 1);
  std::vector<int32_t> tokens(m.context_length, 1);
  tokens[5] = m.vocab_size;
  try {
    model.forward(tokens.data(), nullptr, 1);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("out of range"), std::string::npos) << e.what();
  }
}

void overfit(const ModelConfig& m) {
  auto be = make_cpu_backend(DType::f32);
  const int B = 2, L = m.context_length;
  Model model(m, *be, B);
  model.init(9);
  OptimConfig o;
  o.lr = 3e-3;
  o.weight_decay = 0.0;
  AdamW opt(model, o);
  auto tokens = random_tokens(B * L, m.vocab_size, 8);
  double loss = 0;
  for (int step = 0; step < 400; ++step) {
    model.zero_grads();
    LossStats st = model.forward(tokens.data(), nullptr, B, true, 1.0 / (B * L));
    model.backward();
    // the count above is an upper bound on targets; rescale the gradient to the exact mean
    be->scale(model.grads(), double(B * L) / double(st.targets));
    opt.step(o.lr);
    loss = st.mean();
    if (loss < 0.05) break;
  }
  EXPECT_LT(loss, 0.05);
}

TEST(ModelOverfit, BlockOneBatch) { overfit(tiny_block(32, 32, 4, 2)); }
TEST(ModelOverfit, VanillaOneBatch) { overfit(tiny_vanilla(32, 32)); }
TEST(ModelOverfit, ProjectionLayerSummationOneBatch) {
  ModelConfig m = tiny_variant("projection_layer", "summation");
  m.vocab_size = 32;
  m.context_length = 32;
  overfit(m);
}

// Summation without a BOS id is a clear error, not a silent default.
TEST(ModelTargets, SummationNeedsABos) {
  auto be = make_cpu_backend(DType::f32);
  ModelConfig m = tiny_variant("concat", "summation");
  m.bos_token_id = -1;
  try {
    Model model(m, *be, 1);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.bos_token_id"), std::string::npos) << e.what();
  }
}

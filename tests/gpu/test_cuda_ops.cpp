// Every op of the CUDA backend against the CPU reference backend (f32) on random inputs, in
// both precisions of the CUDA backend, over shapes that include odd sizes (not multiples of
// 8), block length 1 and 8, prefix length 1 and 4, and sequence lengths on both sides of the
// short-row / flash switch (T = 5, 32, 33, 64, 257).
//
// Inputs are exactly representable in the GPU's dtype, so differences come from the GPU's
// arithmetic and output rounding only. Bounds, as |gpu - cpu| <= rtol |cpu| + arel max|cpu|:
//   fp32: copies and glue exact; pointwise, rotary, LayerNorm forward, cross-entropy, AdamW
//         1e-5 (the GPU contracts a*b - c*d into FMAs, the CPU does not); LayerNorm backward,
//         GEMMs and attention 1e-4 (fp32 sums in another order).
//   bf16: one output rounding is 2^-8 relative (2^-9 for round-to-nearest); ops whose result
//         is rounded once get rtol 2^-7; backward ops that also read rounded saved activations
//         (LayerNorm's bf16 rstd, attention's bf16 out) get 2^-6; f32 outputs (dW, dbias,
//         dtable, losses, master weights) keep fp32-level bounds.
// Gradients are accumulated into buffers pre-filled with random values, which also checks the
// += convention.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <tuple>

#include "tests/gpu/gpu_test_util.h"
#include "tests/unit/grad_modes.h"

using namespace bt;
using namespace bt::gputest;

namespace {

constexpr double k2m6 = 1.0 / 64, k2m7 = 1.0 / 128, k2m8 = 1.0 / 256;

class CudaOps : public testing::TestWithParam<Mode> {
 protected:
  void SetUp() override {
    if (!bt::cuda_available()) return;
    m_ = GetParam();
    gpu_ = make_gpu(m_);
    cpu_ = make_cpu();
  }
  Tol tol(Tol f32, Tol b16) const { return m_.bf16() ? b16 : f32; }
  bool bf() const { return m_.bf16(); }
  DType act() const { return m_.act; }
  // The same host values on both backends: activation dtype on the GPU, f32 on the CPU.
  std::pair<Tensor, Tensor> both(Shape s, const std::vector<float>& h) {
    return {put(*gpu_, s, h, act()), put(*cpu_, s, h, DType::f32)};
  }
  std::pair<Tensor, Tensor> both_f32(Shape s, const std::vector<float>& h) {
    return {put(*gpu_, s, h, DType::f32), put(*cpu_, s, h, DType::f32)};
  }
  std::pair<Tensor, Tensor> both_ids(Shape s, const std::vector<int32_t>& h) {
    return {put_ids(*gpu_, s, h), put_ids(*cpu_, s, h)};
  }
  void compare(Tensor g, Tensor c, Tol t, const std::string& what) {
    expect_close(get(*gpu_, g), get(*cpu_, c), t, what + " [" + m_.precision + "]");
  }

  void attention_cases(const char* cores);

  Mode m_;
  std::unique_ptr<Backend> gpu_, cpu_;
};

// ---- memory -----------------------------------------------------------------------------------

TEST_P(CudaOps, AllocIsAlignedAndRoundTripsEveryDtype) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  for (int i = 0; i < 5; ++i) {
    Tensor t = gpu_->alloc({int64_t(1 + 37 * i)}, DType::bf16);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 256, 0u);
    EXPECT_EQ(t.device, Device::cuda);
  }
  const size_t n = 1001;
  std::vector<double> src(n);
  Rng r(5);
  for (auto& x : src) x = 100 * r.normal();
  for (DType t : {DType::f32, DType::bf16, DType::f64}) {
    Tensor x = gpu_->alloc({int64_t(n)}, t);
    gpu_->upload(x, src.data(), DType::f64);
    std::vector<double> back(n);
    gpu_->download(back.data(), DType::f64, x);
    for (size_t i = 0; i < n; ++i) {
      const double want = t == DType::f64   ? src[i]
                          : t == DType::f32 ? double(float(src[i]))
                                            : double(bf16_to_float(float_to_bf16(float(src[i]))));
      ASSERT_EQ(back[i], want) << dtype_name(t) << " element " << i;
    }
    gpu_->zero(x);
    gpu_->download(back.data(), DType::f64, x);
    for (double v : back) ASSERT_EQ(v, 0.0);
  }
  std::vector<int32_t> ids = random_ids(n, 1 << 30, 3), ids_back(n);
  Tensor ti = put_ids(*gpu_, {int64_t(n)}, ids);
  gpu_->download(ids_back.data(), DType::i32, ti);
  EXPECT_EQ(ids, ids_back);
}

// ---- embeddings ---------------------------------------------------------------------------------

TEST_P(CudaOps, Embedding) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  for (auto [V, C, n] : {std::tuple{50, 7, 300}, std::tuple{1000, 192, 2048}, std::tuple{3, 1, 5},
                         std::tuple{4096, 64, 1031}}) {
    const std::string tag = "V=" + std::to_string(V) + " C=" + std::to_string(C) + " n=" + std::to_string(n);
    auto [tg, tc] = both({V, C}, random_vec(size_t(V) * C, 1, 0.02, bf()));
    auto [ig, ic] = both_ids({n}, random_ids(n, V, 2));
    Tensor og = gpu_->alloc({n, C}, act()), oc = cpu_->alloc({n, C}, DType::f32);
    gpu_->embedding_forward(og, ig, tg);
    cpu_->embedding_forward(oc, ic, tc);
    compare(og, oc, {0, 0}, "embedding_forward " + tag);
    auto [dg, dc] = both({n, C}, random_vec(size_t(n) * C, 3, 1.0, bf()));
    auto [wg, wc] = both_f32({V, C}, random_vec(size_t(V) * C, 4));  // pre-filled: += is checked
    gpu_->embedding_backward(wg, dg, ig);
    cpu_->embedding_backward(wc, dc, ic);
    compare(wg, wc, {1e-6, 1e-7}, "embedding_backward " + tag);
  }
}

// ---- LayerNorm ----------------------------------------------------------------------------------

TEST_P(CudaOps, LayerNorm) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  for (auto [n, C] : {std::pair{1, 1}, std::pair{5, 7}, std::pair{64, 256}, std::pair{257, 768},
                      std::pair{3, 1000}, std::pair{130, 33}}) {
    const std::string tag = "n=" + std::to_string(n) + " C=" + std::to_string(C);
    auto [xg, xc] = both({n, C}, random_vec(size_t(n) * C, 10, 2.0, bf(), 0.5));
    auto [wg, wc] = both({C}, random_vec(C, 11, 0.3, bf(), 1.0));
    auto [bg, bc] = both({C}, random_vec(C, 12, 0.3, bf()));
    Tensor og = gpu_->alloc({n, C}, act()), oc = cpu_->alloc({n, C}, DType::f32);
    Tensor mg = gpu_->alloc({n}, act()), mc = cpu_->alloc({n}, DType::f32);
    Tensor rg = gpu_->alloc({n}, act()), rc = cpu_->alloc({n}, DType::f32);
    gpu_->layernorm_forward(og, mg, rg, xg, wg, bg, 1e-5);
    cpu_->layernorm_forward(oc, mc, rc, xc, wc, bc, 1e-5);
    compare(og, oc, tol({1e-5, 1e-6}, {k2m7, k2m8}), "layernorm_forward out " + tag);
    compare(mg, mc, tol({1e-5, 1e-6}, {k2m8, k2m8}), "layernorm_forward mean " + tag);
    compare(rg, rc, tol({1e-5, 1e-6}, {k2m8, 0}), "layernorm_forward rstd " + tag);

    auto [gg, gc] = both({n, C}, random_vec(size_t(n) * C, 13, 1.0, bf()));
    auto [dxg, dxc] = both({n, C}, random_vec(size_t(n) * C, 14, 1.0, bf()));
    auto [dwg, dwc] = both_f32({C}, random_vec(C, 15));
    auto [dbg, dbc] = both_f32({C}, random_vec(C, 16));
    gpu_->layernorm_backward(dxg, dwg, dbg, gg, xg, wg, mg, rg);
    cpu_->layernorm_backward(dxc, dwc, dbc, gc, xc, wc, mc, rc);
    compare(dxg, dxc, tol({1e-4, 1e-5}, {k2m6, k2m7}), "layernorm_backward dx " + tag);
    compare(dwg, dwc, tol({1e-4, 1e-5}, {k2m6, k2m7}), "layernorm_backward dw " + tag);
    compare(dbg, dbc, tol({1e-5, 1e-6}, {1e-5, 1e-6}), "layernorm_backward db " + tag);
  }
}

// The residual add fused with the LayerNorms that read it (residual_layernorm_forward): against
// the CPU reference, and against the same backend's separate add_forward + layernorm_forward
// (the base-class version): the sum exactly, the LayerNorms within one rounding (nvcc may
// contract the two kernels' multiply-adds differently).
TEST_P(CudaOps, ResidualLayerNorm) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  struct Outs {
    Tensor out, l1, m1, r1, l2, m2, r2;
  };
  for (auto [n, C] : {std::pair{1, 1}, std::pair{5, 7}, std::pair{64, 256}, std::pair{257, 768}, std::pair{3, 1000}})
    for (bool with_c : {true, false})
      for (bool two : {true, false}) {
        const std::string tag = "n=" + std::to_string(n) + " C=" + std::to_string(C) + (with_c ? " a+b+c" : " a+b") +
                                (two ? " two LayerNorms" : " one LayerNorm");
        const size_t N = size_t(n) * C;
        auto [ag, ac] = both({n, C}, random_vec(N, 20, 1.0, bf(), 0.3));
        auto [bg, bc] = both({n, C}, random_vec(N, 21, 1.0, bf()));
        Tensor cg, cc;
        if (with_c) std::tie(cg, cc) = both({n, C}, random_vec(N, 22, 1.0, bf()));
        auto [w1g, w1c] = both({C}, random_vec(C, 23, 0.3, bf(), 1.0));
        auto [b1g, b1c] = both({C}, random_vec(C, 24, 0.3, bf()));
        auto [w2g, w2c] = both({C}, random_vec(C, 25, 0.3, bf(), 1.0));
        auto [b2g, b2c] = both({C}, random_vec(C, 26, 0.3, bf()));
        auto make = [&](Backend& be, DType t) {
          Outs o;
          o.out = be.alloc({n, C}, t);
          o.l1 = be.alloc({n, C}, t);
          o.m1 = be.alloc({n}, t);
          o.r1 = be.alloc({n}, t);
          o.l2 = be.alloc({n, C}, t);
          o.m2 = be.alloc({n}, t);
          o.r2 = be.alloc({n}, t);
          return o;
        };
        Outs fused = make(*gpu_, act()), separate = make(*gpu_, act()), ref = make(*cpu_, DType::f32);
        auto lns = [&](const Outs& o, Tensor w1, Tensor b1, Tensor w2, Tensor b2) {
          return std::pair{LayerNormOut{o.l1, o.m1, o.r1, w1, b1},
                           two ? LayerNormOut{o.l2, o.m2, o.r2, w2, b2} : LayerNormOut{}};
        };
        auto [f1, f2] = lns(fused, w1g, b1g, w2g, b2g);
        gpu_->residual_layernorm_forward(fused.out, ag, bg, cg, f1, f2, 1e-5);
        auto [s1, s2] = lns(separate, w1g, b1g, w2g, b2g);
        gpu_->Backend::residual_layernorm_forward(separate.out, ag, bg, cg, s1, s2, 1e-5);
        auto [r1, r2] = lns(ref, w1c, b1c, w2c, b2c);
        cpu_->residual_layernorm_forward(ref.out, ac, bc, cc, r1, r2, 1e-5);
        EXPECT_EQ(get(*gpu_, fused.out), get(*gpu_, separate.out)) << "residual sum, fused vs separate " << tag;
        const Tol one_rounding = tol({1e-6, 1e-7}, {k2m8, 1e-7});
        compare(fused.out, ref.out, tol({1e-6, 1e-7}, {k2m8, 1e-7}), "residual_layernorm out " + tag);
        for (int i = 0; i < (two ? 2 : 1); ++i) {
          const Tensor& lf = i ? fused.l2 : fused.l1;
          const Tensor& ls = i ? separate.l2 : separate.l1;
          const Tensor& lr = i ? ref.l2 : ref.l1;
          const std::string which = std::string(i ? " ln2 " : " ln1 ") + tag;
          expect_close(get(*gpu_, lf), get(*gpu_, ls), one_rounding, "fused vs separate" + which);
          expect_close(get(*gpu_, i ? fused.m2 : fused.m1), get(*gpu_, i ? separate.m2 : separate.m1), one_rounding,
                       "fused vs separate mean" + which);
          expect_close(get(*gpu_, i ? fused.r2 : fused.r1), get(*gpu_, i ? separate.r2 : separate.r1), one_rounding,
                       "fused vs separate rstd" + which);
          compare(lf, lr, tol({1e-5, 1e-6}, {k2m7, k2m8}), "residual_layernorm" + which);
          compare(i ? fused.r2 : fused.r1, i ? ref.r2 : ref.r1, tol({1e-5, 1e-6}, {k2m8, 0}), "rstd" + which);
        }
      }
}

// Grad::overwrite writes fresh input gradients without reading them: the same bits as adding to
// zeros (matmul dinp via beta = 0, GELU, rotary, short-row, flash and tensor-core attention).
TEST_P(CudaOps, OverwriteModeEqualsAddingToZeros) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  bt::testing_grad_modes::check_overwrite_equals_add_to_zeros(*gpu_, act(), m_.precision);
}

// ---- linear ---------------------------------------------------------------------------------------

TEST_P(CudaOps, Matmul) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  for (auto [n, IC, OC] : {std::tuple{1, 1, 1}, std::tuple{7, 13, 5}, std::tuple{64, 256, 768},
                           std::tuple{257, 96, 33}, std::tuple{33, 64, 4099}, std::tuple{520, 768, 64}}) {
    for (bool with_bias : {true, false}) {
      const std::string tag = "n=" + std::to_string(n) + " IC=" + std::to_string(IC) + " OC=" + std::to_string(OC) +
                              (with_bias ? " bias" : "");
      auto [xg, xc] = both({n, IC}, random_vec(size_t(n) * IC, 20, 1.0, bf()));
      auto [wg, wc] = both({OC, IC}, random_vec(size_t(OC) * IC, 21, 0.05, bf()));
      Tensor bg, bc;
      if (with_bias) std::tie(bg, bc) = both({OC}, random_vec(OC, 22, 0.5, bf()));
      Tensor og = gpu_->alloc({n, OC}, act()), oc = cpu_->alloc({n, OC}, DType::f32);
      gpu_->matmul_forward(og, xg, wg, bg);
      cpu_->matmul_forward(oc, xc, wc, bc);
      compare(og, oc, tol({1e-4, 1e-5}, {k2m7, k2m8}), "matmul_forward " + tag);

      auto [gg, gc] = both({n, OC}, random_vec(size_t(n) * OC, 23, 1.0, bf()));
      auto [dxg, dxc] = both({n, IC}, random_vec(size_t(n) * IC, 24, 1.0, bf()));
      auto [dwg, dwc] = both_f32({OC, IC}, random_vec(size_t(OC) * IC, 25));
      auto [dbg, dbc] = both_f32({OC}, random_vec(OC, 26));
      gpu_->matmul_backward(dxg, dwg, with_bias ? dbg : Tensor(), gg, xg, wg);
      cpu_->matmul_backward(dxc, dwc, with_bias ? dbc : Tensor(), gc, xc, wc);
      compare(dxg, dxc, tol({1e-4, 1e-5}, {k2m7, k2m8}), "matmul_backward dinp " + tag);
      compare(dwg, dwc, tol({1e-4, 1e-5}, {1e-4, 1e-5}), "matmul_backward dW " + tag);
      compare(dbg, dbc, {1e-5, 1e-6}, "matmul_backward dbias " + tag);
    }
  }
}

// Views that start off the 256-byte grid (as parameter views and shard pieces do): cuBLASLt must
// be told the real alignment, or fall back to the simple kernel.
TEST_P(CudaOps, MatmulUnalignedViews) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  const int n = 9, IC = 5, OC = 7;
  auto offset = [&](Backend& be, Shape s, const std::vector<float>& h, DType t, int64_t off) {
    Tensor big = be.alloc({int64_t(s.numel()) + off}, t);
    Tensor v(static_cast<char*>(big.data) + off * dtype_size(t), s, t, big.device);
    be.upload(v, h.data(), DType::f32);
    return v;
  };
  const auto hx = random_vec(n * IC, 30, 1.0, bf()), hw = random_vec(OC * IC, 31, 0.1, bf()),
             hb = random_vec(OC, 32, 1.0, bf());
  Tensor xg = offset(*gpu_, {n, IC}, hx, act(), 1), wg = offset(*gpu_, {OC, IC}, hw, act(), 3);
  Tensor bg = offset(*gpu_, {OC}, hb, act(), 1);
  Tensor og = offset(*gpu_, {n, OC}, std::vector<float>(n * OC, 0.f), act(), 5);
  Tensor xc = put(*cpu_, {n, IC}, hx, DType::f32), wc = put(*cpu_, {OC, IC}, hw, DType::f32);
  Tensor bc = put(*cpu_, {OC}, hb, DType::f32), oc = cpu_->alloc({n, OC}, DType::f32);
  gpu_->matmul_forward(og, xg, wg, bg);
  cpu_->matmul_forward(oc, xc, wc, bc);
  compare(og, oc, tol({1e-5, 1e-6}, {k2m7, k2m8}), "matmul_forward unaligned");
  const auto hg = random_vec(n * OC, 33, 1.0, bf());
  Tensor gg = offset(*gpu_, {n, OC}, hg, act(), 7), gc = put(*cpu_, {n, OC}, hg, DType::f32);
  Tensor dwg = offset(*gpu_, {OC, IC}, std::vector<float>(OC * IC, 0.f), DType::f32, 1);
  Tensor dwc = put(*cpu_, {OC, IC}, std::vector<float>(OC * IC, 0.f), DType::f32);
  gpu_->matmul_backward(Tensor(), dwg, Tensor(), gg, xg, wg);
  cpu_->matmul_backward(Tensor(), dwc, Tensor(), gc, xc, wc);
  compare(dwg, dwc, {1e-5, 1e-6}, "matmul_backward dW only, unaligned");
}

// ---- rotary ---------------------------------------------------------------------------------------

TEST_P(CudaOps, QkvRotary) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  for (auto [B, T, H, hd, rd] : {std::tuple{2, 5, 3, 8, 2}, std::tuple{1, 64, 4, 32, 8}, std::tuple{2, 257, 2, 64, 16},
                                 std::tuple{1, 3, 2, 16, 0}, std::tuple{1, 4, 1, 12, 12}, std::tuple{3, 7, 2, 128, 32}}) {
    const std::string tag = "B=" + std::to_string(B) + " T=" + std::to_string(T) + " H=" + std::to_string(H) +
                            " hd=" + std::to_string(hd) + " rd=" + std::to_string(rd);
    const RotaryParams rope{rd, 10000};
    const size_t N = size_t(B) * T * H * hd;
    auto [qg, qc] = both({B, T, 3 * H * hd}, random_vec(3 * N, 40, 1.0, bf()));
    Tensor g[3], c[3];
    for (int i = 0; i < 3; ++i) {
      g[i] = gpu_->alloc({B, H, T, hd}, act());
      c[i] = cpu_->alloc({B, H, T, hd}, DType::f32);
    }
    gpu_->qkv_rotary_forward(g[0], g[1], g[2], qg, rope);
    cpu_->qkv_rotary_forward(c[0], c[1], c[2], qc, rope);
    const char* names[3] = {"q", "k", "v"};
    for (int i = 0; i < 3; ++i)
      compare(g[i], c[i], tol({1e-5, 1e-6}, {k2m8, k2m8}), std::string("qkv_rotary_forward ") + names[i] + " " + tag);
    Tensor dg[3], dc[3];
    for (int i = 0; i < 3; ++i) std::tie(dg[i], dc[i]) = both({B, H, T, hd}, random_vec(N, 41 + i, 1.0, bf()));
    auto [dqkv_g, dqkv_c] = both({B, T, 3 * H * hd}, random_vec(3 * N, 45, 1.0, bf()));
    gpu_->qkv_rotary_backward(dqkv_g, dg[0], dg[1], dg[2], rope);
    cpu_->qkv_rotary_backward(dqkv_c, dc[0], dc[1], dc[2], rope);
    compare(dqkv_g, dqkv_c, tol({1e-5, 1e-6}, {k2m7, k2m8}), "qkv_rotary_backward " + tag);
  }
}

// ---- attention ------------------------------------------------------------------------------------

// lse [B, H, T] of the scaled causal scores, in double on the host. keys [B, T] (optional, 1 =
// visible): a hidden key is left out; a row with no visible key scores each causal key 0.
std::vector<double> host_lse(const std::vector<float>& q, const std::vector<float>& k, int B, int H, int T, int hd,
                             const std::vector<int32_t>& keys = {}) {
  std::vector<double> out(size_t(B) * H * T);
  const double scale = 1.0 / std::sqrt(double(hd));
  for (int bh = 0; bh < B * H; ++bh)
    for (int i = 0; i < T; ++i) {
      const int b = bh / H;
      auto vis = [&](int j) { return keys.empty() || keys[size_t(b) * T + j] != 0; };
      bool any = false;
      for (int j = 0; j <= i; ++j) any = any || vis(j);
      std::vector<double> s;
      double mx = -INFINITY;
      for (int j = 0; j <= i; ++j) {
        if (any && !vis(j)) continue;
        double d = 0;
        for (int e = 0; e < hd; ++e)
          d += double(q[(size_t(bh) * T + i) * hd + e]) * double(k[(size_t(bh) * T + j) * hd + e]);
        s.push_back(any ? d * scale : 0.0);
        mx = std::max(mx, s.back());
      }
      double sum = 0;
      for (double x : s) sum += std::exp(x - mx);
      out[size_t(bh) * T + i] = mx + std::log(sum);
    }
  return out;
}

// A key mask for B sequences of T keys (model/backend.h AttnMask): sequence 0 starts with 3 pads
// (rows with no visible key) and has pads spread over it, so that whole 32- and 64-key tiles of a
// long row are hidden; sequence 1 has every key visible; later ones a pad every 7th key.
std::pair<std::vector<int32_t>, std::vector<int32_t>> host_key_mask(int B, int T) {
  std::vector<int32_t> keys(size_t(B) * T, 1), first(B, T);
  for (int t = 0; t < T; ++t) keys[t] = (t < 3 || t % 5 == 2 || (t >= 40 && t < 110)) ? 0 : 1;
  for (int b = 2; b < B; ++b)
    for (int t = 0; t < T; ++t) keys[size_t(b) * T + t] = t % 7 != 3;
  for (int b = 0; b < B; ++b)
    for (int t = T - 1; t >= 0; --t)
      if (keys[size_t(b) * T + t]) first[b] = t;
  return {keys, first};
}

// bf16 rows longer than 32 run on the tensor cores (attention_flash_tc.cuh); `cores` =
// "cuda-cores" runs the fp32-arithmetic kernels instead (BT_CUDA_ATTENTION).
void CudaOps::attention_cases(const char* cores) {
  if (cores) setenv("BT_CUDA_ATTENTION", cores, 1);
  else unsetenv("BT_CUDA_ATTENTION");
  for (auto [B, H, T, hd] : {std::tuple{2, 3, 5, 8}, std::tuple{1, 2, 32, 64}, std::tuple{2, 2, 33, 32},
                             std::tuple{1, 3, 64, 8}, std::tuple{2, 2, 64, 64}, std::tuple{1, 2, 257, 32},
                             std::tuple{1, 1, 100, 128}, std::tuple{1, 2, 7, 100}, std::tuple{1, 1, 130, 96},
                             std::tuple{1, 2, 200, 64}, std::tuple{3, 1, 1, 16}}) {
   for (int masked = 0; masked < 2; ++masked) {
    const std::string tag = "B=" + std::to_string(B) + " H=" + std::to_string(H) + " T=" + std::to_string(T) +
                            " hd=" + std::to_string(hd) + (cores ? " cuda-cores" : "") + (masked ? " masked" : "");
    const size_t N = size_t(B) * H * T * hd;
    const auto hq = random_vec(N, 50, 1.0, bf()), hk = random_vec(N, 51, 1.0, bf());
    const auto [hkeys, hfirst] = host_key_mask(B, T);
    AttnMask mg, mc;  // empty unless masked
    if (masked) {
      std::tie(mg.keys, mc.keys) = both_ids({B, T}, hkeys);
      std::tie(mg.first, mc.first) = both_ids({B}, hfirst);
    }
    auto [qg, qc] = both({B, H, T, hd}, hq);
    auto [kg, kc] = both({B, H, T, hd}, hk);
    auto [vg, vc] = both({B, H, T, hd}, random_vec(N, 52, 1.0, bf()));
    Tensor og = gpu_->alloc({B, T, H * hd}, act()), oc = cpu_->alloc({B, T, H * hd}, DType::f32);
    Tensor sg = gpu_->alloc(gpu_->attention_stats_shape(B, H, T), gpu_->attention_stats_dtype());
    Tensor sc = cpu_->alloc(cpu_->attention_stats_shape(B, H, T), cpu_->attention_stats_dtype());
    ASSERT_EQ(sg.dtype, DType::f32);
    ASSERT_EQ(sg.numel(), size_t(B) * H * T);
    gpu_->attention_forward(og, sg, qg, kg, vg, mg);
    cpu_->attention_forward(oc, sc, qc, kc, vc, mc);
    compare(og, oc, tol({1e-4, 1e-5}, {k2m7, k2m8}), "attention_forward out " + tag);
    expect_close(get(*gpu_, sg), host_lse(hq, hk, B, H, T, hd, masked ? hkeys : std::vector<int32_t>{}),
                 tol({1e-5, 1e-6}, {1e-5, 1e-6}), "attention_forward lse " + tag + " [" + m_.precision + "]");

    auto [gg, gc] = both({B, T, H * hd}, random_vec(N, 53, 1.0, bf()));
    Tensor dg[3], dc[3];
    for (int i = 0; i < 3; ++i) std::tie(dg[i], dc[i]) = both({B, H, T, hd}, random_vec(N, 54 + i, 1.0, bf()));
    gpu_->attention_backward(dg[0], dg[1], dg[2], gg, og, sg, qg, kg, vg, Grad::add, mg);
    cpu_->attention_backward(dc[0], dc[1], dc[2], gc, oc, sc, qc, kc, vc, Grad::add, mc);
    const char* names[3] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; ++i)
      compare(dg[i], dc[i], tol({1e-4, 2e-5}, {k2m6, k2m7}), std::string("attention_backward ") + names[i] + " " + tag);
   }
  }
  unsetenv("BT_CUDA_ATTENTION");
}

TEST_P(CudaOps, Attention) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  attention_cases(nullptr);
}

TEST_P(CudaOps, AttentionOnCudaCores) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  if (!bf()) GTEST_SKIP() << "fp32 always runs on the CUDA cores";
  attention_cases("cuda-cores");
}

// The KV-cache path (inference): a prefill and single-token steps must give the rows of the
// full causal attention; left padding (start[b]) masks the first cache positions.
TEST_P(CudaOps, AttentionWithKvCache) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  for (auto [B, H, T, hd, rd, T0] : {std::tuple{2, 2, 9, 8, 2, 4}, std::tuple{1, 3, 70, 32, 8, 40}}) {
    const std::string tag = "T=" + std::to_string(T) + " hd=" + std::to_string(hd);
    const RotaryParams rope{rd, 10000};
    const int64_t Tmax = T + 3;
    const size_t N = size_t(B) * H * T * hd;
    const auto hqkv = random_vec(3 * N, 60, 1.0, bf());
    // reference: the training path on the CPU over the whole sequence
    Tensor qkv_c = put(*cpu_, {B, T, 3 * H * hd}, hqkv, DType::f32);
    Tensor qc = cpu_->alloc({B, H, T, hd}, DType::f32), kc = cpu_->alloc({B, H, T, hd}, DType::f32),
           vc = cpu_->alloc({B, H, T, hd}, DType::f32), oc = cpu_->alloc({B, T, H * hd}, DType::f32),
           sc = cpu_->alloc(cpu_->attention_stats_shape(B, H, T), cpu_->attention_stats_dtype());
    cpu_->qkv_rotary_forward(qc, kc, vc, qkv_c, rope);
    cpu_->attention_forward(oc, sc, qc, kc, vc);
    const auto ref_out = get(*cpu_, oc), ref_q = get(*cpu_, qc);
    // GPU: prefill positions 0..T0-1, then one position per step
    Tensor kcache = gpu_->alloc({B, H, Tmax, hd}, act()), vcache = gpu_->alloc({B, H, Tmax, hd}, act());
    std::vector<double> got_out(size_t(B) * T * H * hd), got_q(N);
    auto run = [&](int p0, int len) {
      std::vector<float> part(size_t(B) * len * 3 * H * hd);
      for (int b = 0; b < B; ++b)
        std::memcpy(&part[size_t(b) * len * 3 * H * hd], &hqkv[(size_t(b) * T + p0) * 3 * H * hd],
                    sizeof(float) * len * 3 * H * hd);
      Tensor qkv = put(*gpu_, {B, len, 3 * H * hd}, part, act());
      Tensor q = gpu_->alloc({B, H, len, hd}, act()), out = gpu_->alloc({B, len, H * hd}, act());
      gpu_->qkv_rotary_cache(q, kcache, vcache, qkv, p0, rope);
      gpu_->attention_cached(out, q, kcache, vcache, Tensor(), p0);
      const auto hq = get(*gpu_, q), ho = get(*gpu_, out);
      for (int b = 0; b < B; ++b)
        for (int t = 0; t < len; ++t) {
          for (int h = 0; h < H; ++h)
            for (int e = 0; e < hd; ++e) {
              got_q[((size_t(b) * H + h) * T + p0 + t) * hd + e] = hq[((size_t(b) * H + h) * len + t) * hd + e];
              got_out[((size_t(b) * T + p0 + t) * H + h) * hd + e] = ho[((size_t(b) * len + t) * H + h) * hd + e];
            }
        }
    };
    run(0, T0);
    for (int p = T0; p < T; ++p) run(p, 1);
    expect_close(got_q, ref_q, tol({1e-5, 1e-6}, {k2m8, k2m8}), "qkv_rotary_cache q " + tag);
    expect_close(got_out, ref_out, tol({1e-4, 1e-5}, {k2m6, k2m7}), "attention_cached " + tag);

    // left padding: sequence b ignores cache positions < start[b]; reference in double on the host
    const std::vector<int32_t> start_h = {B > 1 ? 3 : 2, 0, 0};
    Tensor start = put_ids(*gpu_, {B}, std::vector<int32_t>(start_h.begin(), start_h.begin() + B));
    Tensor q1 = gpu_->alloc({B, H, 1, hd}, act()), o1 = gpu_->alloc({B, 1, H * hd}, act());
    std::vector<float> last(size_t(B) * 3 * H * hd);
    for (int b = 0; b < B; ++b)
      std::memcpy(&last[size_t(b) * 3 * H * hd], &hqkv[(size_t(b) * T + T - 1) * 3 * H * hd],
                  sizeof(float) * 3 * H * hd);
    gpu_->qkv_rotary_cache(q1, kcache, vcache, put(*gpu_, {B, 1, 3 * H * hd}, last, act()), T - 1, rope);
    gpu_->attention_cached(o1, q1, kcache, vcache, start, T - 1);
    const auto hq1 = get(*gpu_, q1), hk = get(*gpu_, kcache), hv = get(*gpu_, vcache), ho1 = get(*gpu_, o1);
    std::vector<double> want(size_t(B) * H * hd);
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h) {
        const size_t bh = size_t(b) * H + h;
        std::vector<double> s;
        for (int j = start_h[b]; j < T; ++j) {
          double d = 0;
          for (int e = 0; e < hd; ++e) d += hq1[bh * hd + e] * hk[(bh * Tmax + j) * hd + e];
          s.push_back(d / std::sqrt(double(hd)));
        }
        const double mx = *std::max_element(s.begin(), s.end());
        double sum = 0;
        for (double& x : s) sum += (x = std::exp(x - mx));
        for (int e = 0; e < hd; ++e) {
          double o = 0;
          for (size_t j = 0; j < s.size(); ++j) o += s[j] / sum * hv[(bh * Tmax + start_h[b] + j) * hd + e];
          want[(size_t(b) * H + h) * hd + e] = o;
        }
      }
    expect_close(ho1, want, tol({1e-5, 1e-6}, {k2m7, k2m8}), "attention_cached with start " + tag);
  }
}

// ---- pointwise ------------------------------------------------------------------------------------

TEST_P(CudaOps, GeluAddAccumulate) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  for (int n : {1, 1000, 12345}) {
    const std::string tag = "n=" + std::to_string(n);
    auto [xg, xc] = both({n}, random_vec(n, 70, 3.0, bf()));
    Tensor og = gpu_->alloc({n}, act()), oc = cpu_->alloc({n}, DType::f32);
    gpu_->gelu_forward(og, xg);
    cpu_->gelu_forward(oc, xc);
    compare(og, oc, tol({1e-5, 1e-7}, {k2m7, k2m8}), "gelu_forward " + tag);
    auto [gg, gc] = both({n}, random_vec(n, 71, 1.0, bf()));
    auto [dg, dc] = both({n}, random_vec(n, 72, 1.0, bf()));
    gpu_->gelu_backward(dg, gg, xg);
    cpu_->gelu_backward(dc, gc, xc);
    compare(dg, dc, tol({1e-5, 1e-7}, {k2m7, k2m8}), "gelu_backward " + tag);

    auto [ag, ac] = both({n}, random_vec(n, 73, 1.0, bf()));
    auto [bg, bc] = both({n}, random_vec(n, 74, 1.0, bf()));
    auto [cg, cc] = both({n}, random_vec(n, 75, 1.0, bf()));
    gpu_->add_forward(og, ag, bg, cg);
    cpu_->add_forward(oc, ac, bc, cc);
    compare(og, oc, tol({1e-6, 1e-7}, {k2m8, k2m8}), "add_forward a+b+c " + tag);
    gpu_->add_forward(og, ag, bg, Tensor());
    cpu_->add_forward(oc, ac, bc, Tensor());
    compare(og, oc, tol({1e-6, 1e-7}, {k2m8, k2m8}), "add_forward a+b " + tag);
    gpu_->accumulate(ag, bg);
    cpu_->accumulate(ac, bc);
    compare(ag, ac, tol({1e-6, 1e-7}, {k2m8, k2m8}), "accumulate " + tag);
    auto [fg, fc] = both_f32({n}, random_vec(n, 76));  // f32 gradient += activation-dtype values
    gpu_->accumulate(fg, bg);
    cpu_->accumulate(fc, bc);
    compare(fg, fc, {1e-6, 1e-7}, "accumulate f32 += act " + tag);
  }
}

// ---- Block Transformer glue -----------------------------------------------------------------------

TEST_P(CudaOps, TokenDecoderGlue) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  for (auto [B, N, R, LB, D] : {std::tuple{2, 3, 2, 4, 5}, std::tuple{1, 2, 1, 1, 3}, std::tuple{2, 4, 4, 8, 16},
                                std::tuple{3, 5, 1, 8, 7}, std::tuple{2, 3, 4, 1, 9}}) {
    const std::string tag = "B=" + std::to_string(B) + " N=" + std::to_string(N) + " R=" + std::to_string(R) +
                            " LB=" + std::to_string(LB) + " D=" + std::to_string(D);
    const int S = R + LB - 1;
    auto [pg, pc] = both({B, N, R * D}, random_vec(size_t(B) * N * R * D, 80, 1.0, bf()));
    auto [tg, tc] = both({B, N * LB, D}, random_vec(size_t(B) * N * LB * D, 81, 1.0, bf()));
    Tensor og = gpu_->alloc({B * (N - 1), S, D}, act()), oc = cpu_->alloc({B * (N - 1), S, D}, DType::f32);
    gpu_->td_assemble_forward(og, pg, tg, R, LB);
    cpu_->td_assemble_forward(oc, pc, tc, R, LB);
    compare(og, oc, {0, 0}, "td_assemble_forward " + tag);
    auto [gg, gc] = both({B * (N - 1), S, D}, random_vec(size_t(B) * (N - 1) * S * D, 82, 1.0, bf()));
    auto [dpg, dpc] = both({B, N, R * D}, random_vec(size_t(B) * N * R * D, 83, 1.0, bf()));
    auto [dtg, dtc] = both({B, N * LB, D}, random_vec(size_t(B) * N * LB * D, 84, 1.0, bf()));
    gpu_->td_assemble_backward(dpg, dtg, gg, R, LB);
    cpu_->td_assemble_backward(dpc, dtc, gc, R, LB);
    compare(dpg, dpc, tol({1e-6, 1e-7}, {k2m8, k2m8}), "td_assemble_backward dprefix " + tag);
    compare(dtg, dtc, tol({1e-6, 1e-7}, {k2m8, k2m8}), "td_assemble_backward dtok " + tag);

    const int rows = B * (N - 1);
    Tensor sg = gpu_->alloc({rows * LB, D}, act()), sc = cpu_->alloc({rows * LB, D}, DType::f32);
    gpu_->td_select_forward(sg, og, R, LB);
    cpu_->td_select_forward(sc, oc, R, LB);
    compare(sg, sc, {0, 0}, "td_select_forward " + tag);
    auto [ug, uc] = both({rows * LB, D}, random_vec(size_t(rows) * LB * D, 85, 1.0, bf()));
    gpu_->td_select_backward(gg, ug, R, LB);
    cpu_->td_select_backward(gc, uc, R, LB);
    compare(gg, gc, tol({1e-6, 1e-7}, {k2m8, k2m8}), "td_select_backward " + tag);
  }
}

// The projection_layer embedder's transpose: exact forward, one rounding in the backward's +=.
TEST_P(CudaOps, Transpose) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  for (auto [n, A, C] : {std::tuple{3, 4, 5}, std::tuple{1, 1, 7}, std::tuple{64, 4, 96}, std::tuple{5, 8, 33}}) {
    const std::string tag = "n=" + std::to_string(n) + " A=" + std::to_string(A) + " C=" + std::to_string(C);
    const size_t N = size_t(n) * A * C;
    auto [xg, xc] = both({n, A, C}, random_vec(N, 86, 1.0, bf()));
    Tensor og = gpu_->alloc({n, C, A}, act()), oc = cpu_->alloc({n, C, A}, DType::f32);
    gpu_->transpose_forward(og, xg);
    cpu_->transpose_forward(oc, xc);
    compare(og, oc, {0, 0}, "transpose_forward " + tag);
    auto [dg, dc] = both({n, A, C}, random_vec(N, 87, 1.0, bf()));  // pre-filled: += is checked
    auto [gg, gc] = both({n, C, A}, random_vec(N, 88, 1.0, bf()));
    gpu_->transpose_backward(dg, gg);
    cpu_->transpose_backward(dc, gc);
    compare(dg, dc, tol({1e-6, 1e-7}, {k2m8, k2m8}), "transpose_backward " + tag);
  }
}

// ---- classifier -----------------------------------------------------------------------------------

TEST_P(CudaOps, CrossEntropy) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  for (auto [n, V] : {std::pair{7, 13}, std::pair{64, 1000}, std::pair{5, 50304}, std::pair{3, 1}}) {
    const std::string tag = "n=" + std::to_string(n) + " V=" + std::to_string(V);
    const auto hl = random_vec(size_t(n) * V, 90, 3.0, bf());
    auto tgt = random_ids(n, V, 91);
    for (int i = 0; i < n; i += 3) tgt[i] = -1;  // ignored rows
    auto [tg, tc] = both_ids({n}, tgt);
    const double dscale = 1.0 / n;
    for (int variant = 0; variant < 3; ++variant) {  // loss only, separate dlogits, dlogits in place
      auto [lg, lc] = both({n, V}, hl);
      Tensor losses_g = gpu_->alloc({n}, DType::f32), losses_c = cpu_->alloc({n}, DType::f32);
      Tensor dg, dc = variant ? cpu_->alloc({n, V}, DType::f32) : Tensor();
      if (variant == 1) dg = gpu_->alloc({n, V}, act());
      if (variant == 2) dg = lg;
      gpu_->cross_entropy(losses_g, dg, lg, tg, dscale);
      cpu_->cross_entropy(losses_c, dc, lc, tc, dscale);
      const std::string vt = tag + (variant == 0 ? " loss only" : variant == 1 ? " dlogits" : " in place");
      compare(losses_g, losses_c, tol({1e-5, 1e-6}, {1e-5, 1e-6}), "cross_entropy losses " + vt);
      if (variant) compare(dg, dc, tol({1e-5, 1e-6}, {k2m7, k2m8}), "cross_entropy dlogits " + vt);
    }
  }
}

// ---- optimizer ------------------------------------------------------------------------------------

TEST_P(CudaOps, SumSquaresAndScale) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  for (int n : {1, 1000, 3000001}) {
    for (DType t : {DType::f32, act()}) {
      const auto h = random_vec(n, 100, 0.1, t == DType::bf16);
      Tensor g = put(*gpu_, {n}, h, t);
      double want = 0;
      for (float x : h) want += double(x) * double(x);
      const double got = gpu_->sum_squares(g), again = gpu_->sum_squares(g);
      EXPECT_NEAR(got, want, 1e-9 * want) << "sum_squares n=" << n << " " << dtype_name(t);
      EXPECT_EQ(std::memcmp(&got, &again, sizeof got), 0) << "sum_squares is not deterministic";
      gpu_->scale(g, 0.37);
      const auto back = get(*gpu_, g);
      std::vector<double> ref(n);
      for (int i = 0; i < n; ++i) ref[i] = representable(h[i] * 0.37f, t == DType::bf16);
      expect_close(back, ref, {t == DType::bf16 ? k2m8 : 1e-7, 0}, "scale " + std::string(dtype_name(t)));
    }
  }
}

TEST_P(CudaOps, AdamW) {
  if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
  const int n = 1003;
  const auto hw = random_vec(n, 110, 0.5, bf());
  // GPU: bf16 parameter + f32 master (bf16 mode), or the f32 parameter as its own master.
  Tensor pg = put(*gpu_, {n}, hw, act());
  Tensor mg = bf() ? put(*gpu_, {n}, hw, DType::f32) : Tensor();
  Tensor m1g = put(*gpu_, {n}, std::vector<float>(n, 0.f), DType::f32), m2g = put(*gpu_, {n}, std::vector<float>(n, 0.f), DType::f32);
  Tensor pc = put(*cpu_, {n}, hw, DType::f32);
  Tensor m1c = put(*cpu_, {n}, std::vector<float>(n, 0.f), DType::f32), m2c = put(*cpu_, {n}, std::vector<float>(n, 0.f), DType::f32);
  for (int step = 1; step <= 3; ++step) {
    const auto hg = random_vec(n, 111 + step, 0.01);
    Tensor gg = put(*gpu_, {n}, hg, DType::f32), gc = put(*cpu_, {n}, hg, DType::f32);
    Backend::AdamW h{1e-3, 0.9, 0.95, 1e-8, 0.1, 1 - std::pow(0.9, step), 1 - std::pow(0.95, step)};
    gpu_->adamw_update(pg, mg, gg, m1g, m2g, h);
    cpu_->adamw_update(pc, Tensor(), gc, m1c, m2c, h);
  }
  compare(bf() ? mg : pg, pc, {1e-5, 1e-7}, "adamw master");
  compare(m1g, m1c, {1e-5, 1e-7}, "adamw m");
  compare(m2g, m2c, {1e-5, 1e-7}, "adamw v");
  if (bf()) compare(pg, pc, {k2m8, 0}, "adamw bf16 param from master");
}

INSTANTIATE_TEST_SUITE_P(Precisions, CudaOps, testing::Values(fp32_mode(), bf16_mode()), mode_name);

}  // namespace

// Tests of the CPU reference ops (model/cpu/ops.h), one group per op:
//  - forward against a direct formula written here in double, on random inputs and odd shapes;
//  - every gradient output against central finite differences in double (loss = sum(out * G)
//    for a fixed random G, step 1e-5; relative error below 1e-6);
//  - the accumulate convention: two backward calls into the same buffers give exactly 2x one;
//  - the float instantiation against the double one (relative to the output's scale);
//  - op-specific cases: cross-entropy's ignored rows and bad targets, rotary's rd checks, tiled
//    GEMMs, and bitwise equal results for any OpenMP thread count.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "model/cpu/cpu_backend.h"
#include "model/cpu/ops.h"
#include "tests/unit/grad_modes.h"

namespace {

using bt::Rng;
using Vec = std::vector<double>;
using FVec = std::vector<float>;
namespace cpu = bt::cpu;

// Central-difference step. 1e-5 rather than 1e-6: the optimum for double is about eps^(1/3)
// (6e-6). At 1e-6 the forward's own rounding, eps * |out| / h (about 1e-10 to 1e-9 absolute on
// these shapes), already reaches 1e-6 relative for gradient entries near the 1e-3 floor, and the
// LayerNorm / attention / cross-entropy checks fail on noise (measured worst 1.3e-6); at 1e-5 the
// worst is 2e-7 (truncation and rounding together).
constexpr double kFdStep = 1e-5;
constexpr double kFdTol = 1e-6;     // max relative error of a gradient against finite differences
constexpr double kFloatTol = 1e-5;   // float vs double, relative to the output's max magnitude
constexpr double kExactTol = 1e-12;  // double op vs double formula

Vec randn(Rng& rng, size_t n, double scale = 1.0, double shift = 0.0) {
  Vec v(n);
  for (auto& x : v) x = shift + scale * rng.normal();
  return v;
}

std::vector<int32_t> rand_tokens(Rng& rng, size_t n, int V) {
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng.below(V));
  return t;
}

FVec to_f(const Vec& v) { return FVec(v.begin(), v.end()); }
Vec to_d(const FVec& v) { return Vec(v.begin(), v.end()); }

// max_i |a - b| / max(|a|, |b|, floor)
double max_rel(const Vec& a, const Vec& b, double floor = 1e-3) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    m = std::max(m, std::abs(a[i] - b[i]) / std::max({std::abs(a[i]), std::abs(b[i]), floor}));
  }
  return m;
}

// max |f - d| / max |d|: float against double, on the scale of the whole tensor.
double float_err(const FVec& f, const Vec& d) {
  EXPECT_EQ(f.size(), d.size());
  double num = 0, den = 1e-30;
  for (size_t i = 0; i < f.size() && i < d.size(); ++i) {
    num = std::max(num, std::abs(static_cast<double>(f[i]) - d[i]));
    den = std::max(den, std::abs(d[i]));
  }
  return num / den;
}

// Central differences of loss = sum(fwd() * G) with respect to x (perturbed in place and restored),
// at every entry of x or at max_checks sampled ones. The loss difference is summed per output
// element, (out+ - out-) * G, so outputs x does not touch cancel exactly. Returns the max
// relative error against `analytic` (denominator max(|a|, |n|, 1e-3)).
double fd_check(Vec& x, const Vec& analytic, const std::function<Vec()>& fwd, const Vec& G, size_t max_checks = 400,
                uint64_t seed = 7) {
  EXPECT_EQ(x.size(), analytic.size());
  std::vector<size_t> idx;
  if (x.size() <= max_checks) {
    for (size_t i = 0; i < x.size(); ++i) idx.push_back(i);
  } else {
    Rng rng(seed, 99);
    for (size_t c = 0; c < max_checks; ++c) idx.push_back(rng.below(x.size()));
  }
  // One thread: hundreds of tiny parallel regions are slow when other processes hold a core
  // (measured 9 s instead of 0.2 s for the attention test); threading has its own tests.
  const int prev_threads = omp_get_max_threads();
  omp_set_num_threads(1);
  double worst = 0;
  for (size_t i : idx) {
    const double saved = x[i];
    x[i] = saved + kFdStep;
    const Vec op = fwd();
    x[i] = saved - kFdStep;
    const Vec om = fwd();
    x[i] = saved;
    EXPECT_EQ(op.size(), G.size());
    double d = 0;
    for (size_t j = 0; j < op.size(); ++j) d += (op[j] - om[j]) * G[j];
    const double num = d / (2 * kFdStep);
    const double a = analytic[i];
    worst = std::max(worst, std::abs(a - num) / std::max({std::abs(a), std::abs(num), 1e-3}));
  }
  omp_set_num_threads(prev_threads);
  return worst;
}

// Two backward calls into the same buffers give exactly twice one call.
void expect_twice(const Vec& once, const Vec& twice, const char* what) {
  ASSERT_EQ(once.size(), twice.size()) << what;
  for (size_t i = 0; i < once.size(); ++i) {
    ASSERT_EQ(twice[i], 2 * once[i]) << what << " at " << i;
  }
}

Vec concat(std::initializer_list<const Vec*> parts) {
  Vec r;
  for (const Vec* p : parts) r.insert(r.end(), p->begin(), p->end());
  return r;
}

// Runs f with the given OpenMP thread count, restoring the previous one.
template <class F>
void with_threads(int n, F&& f) {
  const int prev = omp_get_max_threads();
  omp_set_num_threads(n);
  f();
  omp_set_num_threads(prev);
}

template <class V>
bool bitwise_equal(const V& a, const V& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

// ---------------------------------------------------------------------------------------------
// Embedding
// ---------------------------------------------------------------------------------------------

TEST(CpuOps, EmbeddingForwardBackward) {
  struct Shape {
    size_t n;
    int C, V;
  };
  for (Shape s : {Shape{11, 7, 5}, Shape{40, 16, 9}, Shape{1, 3, 1}}) {
    SCOPED_TRACE("n=" + std::to_string(s.n) + " C=" + std::to_string(s.C) + " V=" + std::to_string(s.V));
    Rng rng(1, s.n * 131 + s.C);
    const auto tok = rand_tokens(rng, s.n, s.V);
    Vec table = randn(rng, size_t(s.V) * s.C);
    const Vec G = randn(rng, s.n * s.C);

    auto fwd = [&] {
      Vec out(s.n * s.C);
      cpu::embedding_forward(out.data(), tok.data(), table.data(), s.n, s.C);
      return out;
    };
    const Vec out = fwd();
    for (size_t i = 0; i < s.n; ++i)
      for (int c = 0; c < s.C; ++c) ASSERT_EQ(out[i * s.C + c], table[size_t(tok[i]) * s.C + c]);

    Vec dtable(table.size(), 0.0);
    cpu::embedding_backward(dtable.data(), G.data(), tok.data(), s.n, s.C);
    Vec naive(table.size(), 0.0);
    for (size_t i = 0; i < s.n; ++i)
      for (int c = 0; c < s.C; ++c) naive[size_t(tok[i]) * s.C + c] += G[i * s.C + c];
    EXPECT_LT(max_rel(dtable, naive), kExactTol);
    EXPECT_LT(fd_check(table, dtable, fwd, G), kFdTol) << "dtable";

    Vec twice(table.size(), 0.0);
    cpu::embedding_backward(twice.data(), G.data(), tok.data(), s.n, s.C);
    cpu::embedding_backward(twice.data(), G.data(), tok.data(), s.n, s.C);
    expect_twice(dtable, twice, "dtable");

    FVec outf(s.n * s.C), tablef = to_f(table), Gf = to_f(G), dtablef(table.size(), 0.f);
    cpu::embedding_forward(outf.data(), tok.data(), tablef.data(), s.n, s.C);
    cpu::embedding_backward(dtablef.data(), Gf.data(), tok.data(), s.n, s.C);
    EXPECT_LT(float_err(outf, out), kFloatTol);
    EXPECT_LT(float_err(dtablef, dtable), kFloatTol);
  }
}

TEST(CpuOps, EmbeddingBackwardDeterministic) {
  // Many repeated tokens, large enough for the parallel path; the result must not depend on
  // the thread count or the run.
  const size_t n = 30000;
  const int C = 48, V = 37;
  Rng rng(2);
  const auto tok = rand_tokens(rng, n, V);
  const FVec G = to_f(randn(rng, n * C));
  auto run = [&](int threads) {
    FVec d(size_t(V) * C, 0.f);
    with_threads(threads, [&] { cpu::embedding_backward(d.data(), G.data(), tok.data(), n, C); });
    return d;
  };
  const FVec ref = run(1);
  EXPECT_TRUE(bitwise_equal(ref, run(2)));
  EXPECT_TRUE(bitwise_equal(ref, run(2)));
  EXPECT_TRUE(bitwise_equal(ref, run(3)));
  // And it is the sum in position order.
  FVec naive(size_t(V) * C, 0.f);
  for (size_t i = 0; i < n; ++i)
    for (int c = 0; c < C; ++c) naive[size_t(tok[i]) * C + c] += G[i * C + c];
  EXPECT_TRUE(bitwise_equal(ref, naive));
}

// ---------------------------------------------------------------------------------------------
// LayerNorm
// ---------------------------------------------------------------------------------------------

TEST(CpuOps, LayerNormForwardBackward) {
  struct Shape {
    size_t n;
    int C;
  };
  const double eps = 1e-5;
  for (Shape s : {Shape{5, 7}, Shape{9, 33}, Shape{6, 70}, Shape{1, 1}}) {
    SCOPED_TRACE("n=" + std::to_string(s.n) + " C=" + std::to_string(s.C));
    Rng rng(3, s.n * 1000 + s.C);
    Vec x = randn(rng, s.n * s.C, 1.5, 0.7);
    Vec w = randn(rng, s.C, 0.3, 1.0);
    Vec b = randn(rng, s.C, 0.5);
    const Vec G = randn(rng, s.n * s.C);
    auto fwd = [&] {
      Vec out(s.n * s.C), mean(s.n), rstd(s.n);
      cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), s.n, s.C, eps);
      return out;
    };
    Vec out(s.n * s.C), mean(s.n), rstd(s.n);
    cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), s.n, s.C, eps);

    Vec nout(out.size()), nmean(s.n), nrstd(s.n);
    for (size_t i = 0; i < s.n; ++i) {
      double m = 0, v = 0;
      for (int c = 0; c < s.C; ++c) m += x[i * s.C + c];
      m /= s.C;
      for (int c = 0; c < s.C; ++c) v += (x[i * s.C + c] - m) * (x[i * s.C + c] - m);
      v /= s.C;
      nmean[i] = m;
      nrstd[i] = 1.0 / std::sqrt(v + eps);
      for (int c = 0; c < s.C; ++c) nout[i * s.C + c] = (x[i * s.C + c] - m) * nrstd[i] * w[c] + b[c];
    }
    EXPECT_LT(max_rel(out, nout), kExactTol);
    EXPECT_LT(max_rel(mean, nmean), kExactTol);
    EXPECT_LT(max_rel(rstd, nrstd), kExactTol);

    auto backward = [&](Vec& dx, Vec& dw, Vec& db) {
      cpu::layernorm_backward(dx.data(), dw.data(), db.data(), G.data(), x.data(), w.data(), mean.data(), rstd.data(),
                              s.n, s.C);
    };
    Vec dx(x.size(), 0.0), dw(s.C, 0.0), db(s.C, 0.0);
    backward(dx, dw, db);
    if (s.C > 1) {
      EXPECT_LT(fd_check(x, dx, fwd, G), kFdTol) << "dx";
    }
    EXPECT_LT(fd_check(w, dw, fwd, G), kFdTol) << "dw";
    EXPECT_LT(fd_check(b, db, fwd, G), kFdTol) << "db";

    Vec dx2(x.size(), 0.0), dw2(s.C, 0.0), db2(s.C, 0.0);
    backward(dx2, dw2, db2);
    backward(dx2, dw2, db2);
    expect_twice(dx, dx2, "dx");
    expect_twice(dw, dw2, "dw");
    expect_twice(db, db2, "db");

    // Null gradients are skipped.
    Vec dx3(x.size(), 0.0);
    cpu::layernorm_backward(dx3.data(), static_cast<double*>(nullptr), static_cast<double*>(nullptr), G.data(),
                            x.data(), w.data(), mean.data(), rstd.data(), s.n, s.C);
    EXPECT_TRUE(bitwise_equal(dx3, dx));

    FVec xf = to_f(x), wf = to_f(w), bf = to_f(b), Gf = to_f(G);
    FVec outf(out.size()), meanf(s.n), rstdf(s.n), dxf(x.size(), 0.f), dwf(s.C, 0.f), dbf(s.C, 0.f);
    cpu::layernorm_forward(outf.data(), meanf.data(), rstdf.data(), xf.data(), wf.data(), bf.data(), s.n, s.C, eps);
    cpu::layernorm_backward(dxf.data(), dwf.data(), dbf.data(), Gf.data(), xf.data(), wf.data(), meanf.data(),
                            rstdf.data(), s.n, s.C);
    EXPECT_LT(float_err(outf, out), kFloatTol);
    if (s.C > 1) {
      EXPECT_LT(float_err(dxf, dx), kFloatTol);
    }
    EXPECT_LT(float_err(dwf, dw), kFloatTol);
    EXPECT_LT(float_err(dbf, db), kFloatTol);
  }
}

// ---------------------------------------------------------------------------------------------
// Matmul
// ---------------------------------------------------------------------------------------------

TEST(CpuOps, MatmulForwardBackward) {
  struct Shape {
    size_t n;
    int IC, OC;
    bool bias;
  };
  for (Shape s : {Shape{5, 7, 3, true}, Shape{13, 16, 33, true}, Shape{4, 9, 70, true}, Shape{3, 5, 6, false},
                  Shape{1, 1, 1, true}}) {
    SCOPED_TRACE("n=" + std::to_string(s.n) + " IC=" + std::to_string(s.IC) + " OC=" + std::to_string(s.OC) +
                 " bias=" + std::to_string(s.bias));
    Rng rng(4, s.n * 10007 + s.IC * 101 + s.OC);
    Vec inp = randn(rng, s.n * s.IC);
    Vec W = randn(rng, size_t(s.OC) * s.IC, 0.5);
    Vec bias = randn(rng, s.OC);
    const Vec G = randn(rng, s.n * s.OC);
    const double* bp = s.bias ? bias.data() : nullptr;
    auto fwd = [&] {
      Vec out(s.n * s.OC);
      cpu::matmul_forward(out.data(), inp.data(), W.data(), s.bias ? bias.data() : nullptr, s.n, s.IC, s.OC);
      return out;
    };
    const Vec out = fwd();
    Vec naive(out.size());
    for (size_t i = 0; i < s.n; ++i)
      for (int o = 0; o < s.OC; ++o) {
        double a = s.bias ? bias[o] : 0.0;
        for (int c = 0; c < s.IC; ++c) a += inp[i * s.IC + c] * W[size_t(o) * s.IC + c];
        naive[i * s.OC + o] = a;
      }
    EXPECT_LT(max_rel(out, naive), kExactTol);

    auto backward = [&](Vec& dinp, Vec& dW, Vec& dbias) {
      cpu::matmul_backward(dinp.data(), dW.data(), s.bias ? dbias.data() : nullptr, G.data(), inp.data(), W.data(),
                           s.n, s.IC, s.OC);
    };
    Vec dinp(inp.size(), 0.0), dW(W.size(), 0.0), dbias(s.OC, 0.0);
    backward(dinp, dW, dbias);
    EXPECT_LT(fd_check(inp, dinp, fwd, G), kFdTol) << "dinp";
    EXPECT_LT(fd_check(W, dW, fwd, G), kFdTol) << "dW";
    if (s.bias) {
      EXPECT_LT(fd_check(bias, dbias, fwd, G), kFdTol) << "dbias";
    }

    Vec dinp2(inp.size(), 0.0), dW2(W.size(), 0.0), dbias2(s.OC, 0.0);
    backward(dinp2, dW2, dbias2);
    backward(dinp2, dW2, dbias2);
    expect_twice(dinp, dinp2, "dinp");
    expect_twice(dW, dW2, "dW");
    expect_twice(dbias, dbias2, "dbias");

    FVec inpf = to_f(inp), Wf = to_f(W), biasf = to_f(bias), Gf = to_f(G);
    FVec outf(out.size()), dinpf(inp.size(), 0.f), dWf(W.size(), 0.f), dbiasf(s.OC, 0.f);
    cpu::matmul_forward(outf.data(), inpf.data(), Wf.data(), bp ? biasf.data() : nullptr, s.n, s.IC, s.OC);
    cpu::matmul_backward(dinpf.data(), dWf.data(), bp ? dbiasf.data() : nullptr, Gf.data(), inpf.data(), Wf.data(),
                         s.n, s.IC, s.OC);
    EXPECT_LT(float_err(outf, out), kFloatTol);
    EXPECT_LT(float_err(dinpf, dinp), kFloatTol);
    EXPECT_LT(float_err(dWf, dW), kFloatTol);
    EXPECT_LT(float_err(dbiasf, dbias), kFloatTol);
  }
}

// Shapes that cut every GEMM into several row and column tiles (forward, dinp, and dW whose A is
// transposed), against the direct formulas (too big for finite differences; the formulas are the
// ones the small shapes above check by finite differences).
TEST(CpuOps, MatmulTiledAgainstFormula) {
  const size_t n = 70;
  const int IC = 300, OC = 520;
  Rng rng(13);
  const Vec inp = randn(rng, n * IC), W = randn(rng, size_t(OC) * IC, 0.1), bias = randn(rng, OC);
  const Vec G = randn(rng, n * OC);
  Vec out(n * OC), dinp(n * IC, 0.0), dW(W.size(), 0.0), dbias(OC, 0.0);
  cpu::matmul_forward(out.data(), inp.data(), W.data(), bias.data(), n, IC, OC);
  cpu::matmul_backward(dinp.data(), dW.data(), dbias.data(), G.data(), inp.data(), W.data(), n, IC, OC);
  Vec nout(out.size()), ndinp(dinp.size(), 0.0), ndW(dW.size(), 0.0), ndbias(OC, 0.0);
  for (size_t i = 0; i < n; ++i)
    for (int o = 0; o < OC; ++o) {
      double a = bias[o];
      for (int c = 0; c < IC; ++c) a += inp[i * IC + c] * W[size_t(o) * IC + c];
      nout[i * OC + o] = a;
      const double g = G[i * OC + o];
      ndbias[o] += g;
      for (int c = 0; c < IC; ++c) {
        ndinp[i * IC + c] += g * W[size_t(o) * IC + c];
        ndW[size_t(o) * IC + c] += g * inp[i * IC + c];
      }
    }
  EXPECT_LT(max_rel(out, nout), 1e-10);
  EXPECT_LT(max_rel(dinp, ndinp), 1e-10);
  EXPECT_LT(max_rel(dW, ndW), 1e-10);
  EXPECT_LT(max_rel(dbias, ndbias), 1e-10);
}

// ---------------------------------------------------------------------------------------------
// QKV split + rotary
// ---------------------------------------------------------------------------------------------

// The formula of docs/design.md §2.1 written out: rotate-half on the first rd dims of q and k.
void naive_qkv_rotary(Vec& q, Vec& k, Vec& v, const Vec& qkv, size_t B, int Tn, int H, int hd, int rd, double base) {
  const int half = rd / 2;
  for (size_t b = 0; b < B; ++b)
    for (int t = 0; t < Tn; ++t)
      for (int h = 0; h < H; ++h) {
        const double* src = qkv.data() + ((b * Tn + t) * H + h) * 3 * hd;
        const size_t dst = ((b * H + h) * Tn + t) * hd;
        for (int which = 0; which < 3; ++which) {
          const double* x = src + which * hd;
          double* o = (which == 0 ? q : which == 1 ? k : v).data() + dst;
          for (int i = 0; i < hd; ++i) o[i] = x[i];
          if (which == 2) continue;
          for (int i = 0; i < half; ++i) {
            const double ang = t * std::pow(base, -2.0 * i / rd);
            o[i] = x[i] * std::cos(ang) - x[i + half] * std::sin(ang);
            o[i + half] = x[i + half] * std::cos(ang) + x[i] * std::sin(ang);
          }
        }
      }
}

TEST(CpuOps, QkvRotaryForwardBackward) {
  struct Shape {
    size_t B;
    int Tn, H, hd, rd;
  };
  const double base = 10000.0;
  for (Shape s : {Shape{2, 5, 3, 8, 2}, Shape{1, 6, 2, 8, 8}, Shape{2, 4, 1, 16, 4}, Shape{1, 3, 2, 4, 0},
                  Shape{1, 40, 1, 8, 4}}) {
    SCOPED_TRACE("B=" + std::to_string(s.B) + " T=" + std::to_string(s.Tn) + " H=" + std::to_string(s.H) +
                 " hd=" + std::to_string(s.hd) + " rd=" + std::to_string(s.rd));
    Rng rng(5, s.Tn * 1000 + s.hd * 10 + s.rd);
    const size_t nq = s.B * s.H * s.Tn * s.hd;
    Vec qkv = randn(rng, 3 * nq);
    const Vec Gq = randn(rng, nq), Gk = randn(rng, nq), Gv = randn(rng, nq);
    const Vec G = concat({&Gq, &Gk, &Gv});
    auto fwd = [&] {
      Vec q(nq), k(nq), v(nq);
      cpu::qkv_rotary_forward(q.data(), k.data(), v.data(), qkv.data(), s.B, s.Tn, s.H, s.hd, s.rd, base);
      return concat({&q, &k, &v});
    };
    const Vec out = fwd();
    Vec nq_(nq), nk(nq), nv(nq);
    naive_qkv_rotary(nq_, nk, nv, qkv, s.B, s.Tn, s.H, s.hd, s.rd, base);
    EXPECT_LT(max_rel(out, concat({&nq_, &nk, &nv})), kExactTol);

    Vec dqkv(qkv.size(), 0.0);
    cpu::qkv_rotary_backward(dqkv.data(), Gq.data(), Gk.data(), Gv.data(), s.B, s.Tn, s.H, s.hd, s.rd, base);
    EXPECT_LT(fd_check(qkv, dqkv, fwd, G), kFdTol) << "dqkv";

    Vec dqkv2(qkv.size(), 0.0);
    for (int rep = 0; rep < 2; ++rep)
      cpu::qkv_rotary_backward(dqkv2.data(), Gq.data(), Gk.data(), Gv.data(), s.B, s.Tn, s.H, s.hd, s.rd, base);
    expect_twice(dqkv, dqkv2, "dqkv");

    FVec qkvf = to_f(qkv), Gqf = to_f(Gq), Gkf = to_f(Gk), Gvf = to_f(Gv);
    FVec qf(nq), kf(nq), vf(nq), dqkvf(qkv.size(), 0.f);
    cpu::qkv_rotary_forward(qf.data(), kf.data(), vf.data(), qkvf.data(), s.B, s.Tn, s.H, s.hd, s.rd, base);
    cpu::qkv_rotary_backward(dqkvf.data(), Gqf.data(), Gkf.data(), Gvf.data(), s.B, s.Tn, s.H, s.hd, s.rd, base);
    FVec outf;
    for (const FVec* p : {&qf, &kf, &vf}) outf.insert(outf.end(), p->begin(), p->end());
    EXPECT_LT(float_err(outf, out), kFloatTol);
    EXPECT_LT(float_err(dqkvf, dqkv), kFloatTol);
  }
}

TEST(CpuOps, QkvRotaryRejectsOddOrOversizedRd) {
  Vec qkv(3 * 8, 0.0), q(8), k(8), v(8);
  EXPECT_THROW(cpu::qkv_rotary_forward(q.data(), k.data(), v.data(), qkv.data(), 1, 1, 1, 8, 3, 10000.0), bt::Error);
  EXPECT_THROW(cpu::qkv_rotary_forward(q.data(), k.data(), v.data(), qkv.data(), 1, 1, 1, 8, 10, 10000.0), bt::Error);
}

// ---------------------------------------------------------------------------------------------
// Causal attention
// ---------------------------------------------------------------------------------------------

TEST(CpuOps, AttentionForwardBackward) {
  struct Shape {
    size_t B;
    int Tn, H, hd;
    size_t fd_checks;
  };
  // hd 32, 64 and 128 take the compile-time head-dim kernels, the others the generic one.
  for (Shape s : {Shape{2, 5, 3, 8, 1000}, Shape{1, 7, 2, 4, 1000}, Shape{1, 1, 1, 3, 1000}, Shape{2, 33, 2, 32, 120},
                  Shape{1, 4, 2, 64, 200}, Shape{1, 3, 1, 128, 200}}) {
    SCOPED_TRACE("B=" + std::to_string(s.B) + " T=" + std::to_string(s.Tn) + " H=" + std::to_string(s.H) +
                 " hd=" + std::to_string(s.hd));
    Rng rng(6, s.Tn * 100 + s.hd);
    const size_t nq = s.B * s.H * s.Tn * s.hd, natt = s.B * s.H * s.Tn * s.Tn;
    Vec q = randn(rng, nq), k = randn(rng, nq), v = randn(rng, nq);
    const Vec G = randn(rng, nq);  // over out [B, T, H * hd]
    auto fwd = [&] {
      Vec out(nq), att(natt);
      cpu::attention_forward(out.data(), att.data(), q.data(), k.data(), v.data(), s.B, s.Tn, s.H, s.hd);
      return out;
    };
    Vec out(nq, 7.0), att(natt, 7.0);  // garbage: the op must write every entry, zeros above the diagonal
    cpu::attention_forward(out.data(), att.data(), q.data(), k.data(), v.data(), s.B, s.Tn, s.H, s.hd);

    // Direct formula.
    Vec nout(nq, 0.0), natt_(natt, 0.0);
    const double scale = 1.0 / std::sqrt(double(s.hd));
    for (size_t b = 0; b < s.B; ++b)
      for (int h = 0; h < s.H; ++h) {
        const size_t bh = b * s.H + h;
        for (int t = 0; t < s.Tn; ++t) {
          Vec sc(t + 1);
          double mx = -1e300, sum = 0;
          for (int j = 0; j <= t; ++j) {
            double d = 0;
            for (int e = 0; e < s.hd; ++e) d += q[(bh * s.Tn + t) * s.hd + e] * k[(bh * s.Tn + j) * s.hd + e];
            sc[j] = d * scale;
            mx = std::max(mx, sc[j]);
          }
          for (int j = 0; j <= t; ++j) sum += std::exp(sc[j] - mx);
          for (int j = 0; j <= t; ++j) {
            const double p = std::exp(sc[j] - mx) / sum;
            natt_[(bh * s.Tn + t) * s.Tn + j] = p;
            for (int e = 0; e < s.hd; ++e)
              nout[((b * s.Tn + t) * s.H + h) * s.hd + e] += p * v[(bh * s.Tn + j) * s.hd + e];
          }
        }
      }
    EXPECT_LT(max_rel(out, nout), kExactTol);
    EXPECT_LT(max_rel(att, natt_), kExactTol);
    for (size_t i = 0; i < natt; ++i) {
      const size_t t = (i / s.Tn) % s.Tn, j = i % s.Tn;
      if (j > t) {
        ASSERT_EQ(att[i], 0.0) << "masked entry " << i;
      }
    }

    auto backward = [&](Vec& dq, Vec& dk, Vec& dv) {
      cpu::attention_backward(dq.data(), dk.data(), dv.data(), G.data(), att.data(), q.data(), k.data(), v.data(),
                              s.B, s.Tn, s.H, s.hd);
    };
    Vec dq(nq, 0.0), dk(nq, 0.0), dv(nq, 0.0);
    backward(dq, dk, dv);
    EXPECT_LT(fd_check(q, dq, fwd, G, s.fd_checks), kFdTol) << "dq";
    EXPECT_LT(fd_check(k, dk, fwd, G, s.fd_checks), kFdTol) << "dk";
    EXPECT_LT(fd_check(v, dv, fwd, G, s.fd_checks), kFdTol) << "dv";

    Vec dq2(nq, 0.0), dk2(nq, 0.0), dv2(nq, 0.0);
    backward(dq2, dk2, dv2);
    backward(dq2, dk2, dv2);
    expect_twice(dq, dq2, "dq");
    expect_twice(dk, dk2, "dk");
    expect_twice(dv, dv2, "dv");

    FVec qf = to_f(q), kf = to_f(k), vf = to_f(v), Gf = to_f(G);
    FVec outf(nq), attf(natt), dqf(nq, 0.f), dkf(nq, 0.f), dvf(nq, 0.f);
    cpu::attention_forward(outf.data(), attf.data(), qf.data(), kf.data(), vf.data(), s.B, s.Tn, s.H, s.hd);
    cpu::attention_backward(dqf.data(), dkf.data(), dvf.data(), Gf.data(), attf.data(), qf.data(), kf.data(),
                            vf.data(), s.B, s.Tn, s.H, s.hd);
    EXPECT_LT(float_err(outf, out), kFloatTol);
    EXPECT_LT(float_err(attf, att), kFloatTol);
    EXPECT_LT(float_err(dqf, dq), kFloatTol);
    EXPECT_LT(float_err(dkf, dk), kFloatTol);
    EXPECT_LT(float_err(dvf, dv), kFloatTol);
  }
}

// Keys hidden by a key mask (model/backend.h AttnMask: pads): the direct formula is HF GPT-NeoX's
// eager attention with attention_mask (a hidden key gets weight 0; a row with no visible key
// averages its causal keys equally), the gradients match finite differences, and an all-ones
// mask gives the unmasked results.
TEST(CpuOps, AttentionKeyMask) {
  struct Shape {
    size_t B;
    int Tn, H, hd;
    size_t fd_checks;
  };
  for (Shape s : {Shape{3, 6, 2, 8, 1000}, Shape{2, 9, 1, 32, 300}, Shape{3, 5, 2, 64, 300}}) {
    SCOPED_TRACE("B=" + std::to_string(s.B) + " T=" + std::to_string(s.Tn) + " hd=" + std::to_string(s.hd));
    Rng rng(61, s.Tn * 100 + s.hd);
    const size_t nq = s.B * s.H * s.Tn * s.hd, natt = s.B * s.H * s.Tn * s.Tn;
    Vec q = randn(rng, nq), k = randn(rng, nq), v = randn(rng, nq);
    const Vec G = randn(rng, nq);
    // Sequence 0: leading pads (rows with no visible key), pads inside; sequence 1: every key
    // visible; sequence 2: pads at the end and one inside.
    std::vector<int32_t> keys(s.B * s.Tn, 1), first(s.B, 0);
    keys[0] = keys[1] = keys[s.Tn / 2 + 1] = 0;
    if (s.B > 2) keys[2 * s.Tn + 2] = keys[3 * s.Tn - 1] = keys[3 * s.Tn - 2] = 0;
    for (size_t b = 0; b < s.B; ++b) {
      first[b] = s.Tn;
      for (int t = s.Tn - 1; t >= 0; --t)
        if (keys[b * s.Tn + t]) first[b] = t;
    }
    ASSERT_EQ(first[0], 2);
    auto fwd = [&] {
      Vec out(nq), att(natt);
      cpu::attention_forward(out.data(), att.data(), q.data(), k.data(), v.data(), s.B, s.Tn, s.H, s.hd, keys.data(),
                             first.data());
      return out;
    };
    Vec out(nq, 7.0), att(natt, 7.0);
    cpu::attention_forward(out.data(), att.data(), q.data(), k.data(), v.data(), s.B, s.Tn, s.H, s.hd, keys.data(),
                           first.data());
    Vec nout(nq, 0.0);
    const double scale = 1.0 / std::sqrt(double(s.hd));
    for (size_t b = 0; b < s.B; ++b)
      for (int h = 0; h < s.H; ++h) {
        const size_t bh = b * s.H + h;
        for (int t = 0; t < s.Tn; ++t) {
          Vec w(t + 1, 0.0);
          bool any = false;
          for (int j = 0; j <= t; ++j) any = any || keys[b * s.Tn + j];
          if (!any) {
            for (int j = 0; j <= t; ++j) w[j] = 1.0 / (t + 1);
          } else {
            double mx = -1e300, sum = 0;
            for (int j = 0; j <= t; ++j) {
              if (!keys[b * s.Tn + j]) continue;
              double d = 0;
              for (int e = 0; e < s.hd; ++e) d += q[(bh * s.Tn + t) * s.hd + e] * k[(bh * s.Tn + j) * s.hd + e];
              w[j] = d * scale;
              mx = std::max(mx, w[j]);
            }
            for (int j = 0; j <= t; ++j) w[j] = keys[b * s.Tn + j] ? std::exp(w[j] - mx) : 0.0;
            for (int j = 0; j <= t; ++j) sum += w[j];
            for (int j = 0; j <= t; ++j) w[j] /= sum;
          }
          for (int j = 0; j <= t; ++j)
            for (int e = 0; e < s.hd; ++e)
              nout[((b * s.Tn + t) * s.H + h) * s.hd + e] += w[j] * v[(bh * s.Tn + j) * s.hd + e];
        }
      }
    EXPECT_LT(max_rel(out, nout), kExactTol);

    auto backward = [&](Vec& dq, Vec& dk, Vec& dv) {
      cpu::attention_backward(dq.data(), dk.data(), dv.data(), G.data(), att.data(), q.data(), k.data(), v.data(),
                              s.B, s.Tn, s.H, s.hd, keys.data());
    };
    Vec dq(nq, 0.0), dk(nq, 0.0), dv(nq, 0.0);
    backward(dq, dk, dv);
    EXPECT_LT(fd_check(q, dq, fwd, G, s.fd_checks), kFdTol) << "dq";
    EXPECT_LT(fd_check(k, dk, fwd, G, s.fd_checks), kFdTol) << "dk";
    EXPECT_LT(fd_check(v, dv, fwd, G, s.fd_checks), kFdTol) << "dv";
    // A hidden key gets no key gradient from any query (its score is a constant).
    for (int h = 0; h < s.H; ++h)
      for (int e = 0; e < s.hd; ++e) ASSERT_EQ(dk[(size_t(h) * s.Tn + 0) * s.hd + e], 0.0);

    // An all-ones mask is the unmasked attention (another instantiation of the kernels: the same
    // values up to rounding; the model never passes one, tests/model ModelPads.AllOnesMaskIsNoMask).
    std::vector<int32_t> ones(s.B * s.Tn, 1), zeros(s.B, 0);
    Vec o1(nq), a1(natt), o2(nq), a2(natt);
    cpu::attention_forward(o1.data(), a1.data(), q.data(), k.data(), v.data(), s.B, s.Tn, s.H, s.hd);
    cpu::attention_forward(o2.data(), a2.data(), q.data(), k.data(), v.data(), s.B, s.Tn, s.H, s.hd, ones.data(),
                           zeros.data());
    EXPECT_LT(max_rel(o1, o2), kExactTol);
    Vec g1(nq, 0.0), g2(nq, 0.0), g3(nq, 0.0), h1(nq, 0.0), h2(nq, 0.0), h3(nq, 0.0);
    cpu::attention_backward(g1.data(), g2.data(), g3.data(), G.data(), a1.data(), q.data(), k.data(), v.data(), s.B,
                            s.Tn, s.H, s.hd);
    cpu::attention_backward(h1.data(), h2.data(), h3.data(), G.data(), a2.data(), q.data(), k.data(), v.data(), s.B,
                            s.Tn, s.H, s.hd, ones.data());
    EXPECT_LT(max_rel(g1, h1), kExactTol);
    EXPECT_LT(max_rel(g2, h2), kExactTol);
    EXPECT_LT(max_rel(g3, h3), kExactTol);
  }
}

// ---------------------------------------------------------------------------------------------
// Pointwise
// ---------------------------------------------------------------------------------------------

TEST(CpuOps, GeluForwardBackward) {
  for (size_t n : {size_t(1), size_t(37), size_t(200)}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    Rng rng(7, n);
    Vec x = randn(rng, n, 2.0);
    if (n > 2) x[0] = 0.0, x[1] = -6.0, x[2] = 6.0;
    const Vec G = randn(rng, n);
    auto fwd = [&] {
      Vec out(n);
      cpu::gelu_forward(out.data(), x.data(), n);
      return out;
    };
    const Vec out = fwd();
    Vec naive(n);
    for (size_t i = 0; i < n; ++i) naive[i] = 0.5 * x[i] * (1.0 + std::erf(x[i] / std::sqrt(2.0)));
    EXPECT_LT(max_rel(out, naive), kExactTol);

    Vec dx(n, 0.0);
    cpu::gelu_backward(dx.data(), G.data(), x.data(), n);
    EXPECT_LT(fd_check(x, dx, fwd, G), kFdTol) << "dx";
    Vec dx2(n, 0.0);
    cpu::gelu_backward(dx2.data(), G.data(), x.data(), n);
    cpu::gelu_backward(dx2.data(), G.data(), x.data(), n);
    expect_twice(dx, dx2, "dx");

    FVec xf = to_f(x), Gf = to_f(G), outf(n), dxf(n, 0.f);
    cpu::gelu_forward(outf.data(), xf.data(), n);
    cpu::gelu_backward(dxf.data(), Gf.data(), xf.data(), n);
    if (n > 1) {  // a single value is compared pointwise: meaningless near GELU's zero slope
      EXPECT_LT(float_err(outf, out), kFloatTol);
      EXPECT_LT(float_err(dxf, dx), kFloatTol);
    }
  }
}

// add_forward has no backward of its own: its input gradients are dout accumulated into each
// input's gradient with `accumulate`. Checked here as such.
TEST(CpuOps, AddAndAccumulate) {
  for (size_t n : {size_t(1), size_t(23), size_t(70000)}) {
    for (bool three : {false, true}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " three=" + std::to_string(three));
      Rng rng(8, n * 2 + three);
      Vec a = randn(rng, n), b = randn(rng, n), c = randn(rng, n);
      const Vec G = randn(rng, n);
      auto fwd = [&] {
        Vec out(n);
        cpu::add_forward(out.data(), a.data(), b.data(), three ? c.data() : nullptr, n);
        return out;
      };
      const Vec out = fwd();
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], three ? a[i] + b[i] + c[i] : a[i] + b[i]);

      // In place (out aliases a) is how residual adds are used.
      Vec inplace = a;
      cpu::add_forward(inplace.data(), inplace.data(), b.data(), three ? c.data() : nullptr, n);
      EXPECT_TRUE(bitwise_equal(inplace, out));

      Vec da(n, 0.0), db(n, 0.0), dc(n, 0.0);
      cpu::accumulate(da.data(), G.data(), n);
      cpu::accumulate(db.data(), G.data(), n);
      cpu::accumulate(dc.data(), G.data(), n);
      const size_t checks = 50;
      EXPECT_LT(fd_check(a, da, fwd, G, checks), kFdTol) << "da";
      EXPECT_LT(fd_check(b, db, fwd, G, checks), kFdTol) << "db";
      if (three) {
        EXPECT_LT(fd_check(c, dc, fwd, G, checks), kFdTol) << "dc";
      }
      cpu::accumulate(da.data(), G.data(), n);
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(da[i], 2 * G[i]);

      FVec af = to_f(a), bf = to_f(b), cf = to_f(c), outf(n);
      cpu::add_forward(outf.data(), af.data(), bf.data(), three ? cf.data() : nullptr, n);
      EXPECT_LT(float_err(outf, out), kFloatTol);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Token-decoder glue
// ---------------------------------------------------------------------------------------------

TEST(CpuOps, TdAssembleForwardBackward) {
  struct Shape {
    size_t B;
    int N, R, LB, D;
  };
  for (Shape s : {Shape{2, 4, 2, 4, 3}, Shape{1, 3, 1, 1, 5}, Shape{3, 2, 2, 1, 2}, Shape{2, 3, 1, 4, 4},
                  Shape{1, 5, 2, 4, 7}}) {
    SCOPED_TRACE("B=" + std::to_string(s.B) + " N=" + std::to_string(s.N) + " R=" + std::to_string(s.R) +
                 " LB=" + std::to_string(s.LB) + " D=" + std::to_string(s.D));
    Rng rng(9, s.N * 100 + s.R * 10 + s.LB);
    const int S = s.R + s.LB - 1;
    const size_t nout = s.B * (s.N - 1) * S * s.D;
    Vec prefix = randn(rng, s.B * s.N * s.R * s.D);
    Vec tok = randn(rng, s.B * s.N * s.LB * s.D);
    const Vec G = randn(rng, nout);
    auto fwd = [&] {
      Vec out(nout);
      cpu::td_assemble_forward(out.data(), prefix.data(), tok.data(), s.B, s.N, s.R, s.LB, s.D);
      return out;
    };
    const Vec out = fwd();
    for (size_t b = 0; b < s.B; ++b)
      for (int i = 0; i + 1 < s.N; ++i)
        for (int p = 0; p < S; ++p)
          for (int d = 0; d < s.D; ++d) {
            const double want = p < s.R ? prefix[((b * s.N + i) * s.R + p) * s.D + d]
                                        : tok[(b * s.N * s.LB + (i + 1) * s.LB + (p - s.R)) * s.D + d];
            ASSERT_EQ(out[((b * (s.N - 1) + i) * S + p) * s.D + d], want);
          }

    Vec dprefix(prefix.size(), 0.0), dtok(tok.size(), 0.0);
    cpu::td_assemble_backward(dprefix.data(), dtok.data(), G.data(), s.B, s.N, s.R, s.LB, s.D);
    EXPECT_LT(fd_check(prefix, dprefix, fwd, G), kFdTol) << "dprefix";
    EXPECT_LT(fd_check(tok, dtok, fwd, G), kFdTol) << "dtok";
    // Block 0's tokens and every block's last token feed no row.
    for (size_t b = 0; b < s.B; ++b)
      for (int t = 0; t < s.N * s.LB; ++t)
        if (t < s.LB || t % s.LB == s.LB - 1) {
          for (int d = 0; d < s.D; ++d) ASSERT_EQ(dtok[(b * s.N * s.LB + t) * s.D + d], 0.0);
        }

    Vec dprefix2(prefix.size(), 0.0), dtok2(tok.size(), 0.0);
    for (int rep = 0; rep < 2; ++rep)
      cpu::td_assemble_backward(dprefix2.data(), dtok2.data(), G.data(), s.B, s.N, s.R, s.LB, s.D);
    expect_twice(dprefix, dprefix2, "dprefix");
    expect_twice(dtok, dtok2, "dtok");

    FVec prefixf = to_f(prefix), tokf = to_f(tok), Gf = to_f(G), outf(nout);
    FVec dprefixf(prefix.size(), 0.f), dtokf(tok.size(), 0.f);
    cpu::td_assemble_forward(outf.data(), prefixf.data(), tokf.data(), s.B, s.N, s.R, s.LB, s.D);
    cpu::td_assemble_backward(dprefixf.data(), dtokf.data(), Gf.data(), s.B, s.N, s.R, s.LB, s.D);
    EXPECT_LT(float_err(outf, out), kFloatTol);
    EXPECT_LT(float_err(dprefixf, dprefix), kFloatTol);
    EXPECT_LT(float_err(dtokf, dtok), kFloatTol);
  }
}

TEST(CpuOps, TdSelectForwardBackward) {
  struct Shape {
    size_t rows;
    int R, LB, D;
  };
  for (Shape s : {Shape{5, 2, 4, 3}, Shape{3, 1, 1, 4}, Shape{4, 2, 1, 7}, Shape{2, 1, 4, 5}}) {
    SCOPED_TRACE("rows=" + std::to_string(s.rows) + " R=" + std::to_string(s.R) + " LB=" + std::to_string(s.LB) +
                 " D=" + std::to_string(s.D));
    Rng rng(10, s.rows * 100 + s.R * 10 + s.LB);
    const int S = s.R + s.LB - 1;
    Vec h = randn(rng, s.rows * S * s.D);
    const Vec G = randn(rng, s.rows * s.LB * s.D);
    auto fwd = [&] {
      Vec out(s.rows * s.LB * s.D);
      cpu::td_select_forward(out.data(), h.data(), s.rows, s.R, s.LB, s.D);
      return out;
    };
    const Vec out = fwd();
    for (size_t r = 0; r < s.rows; ++r)
      for (int j = 0; j < s.LB; ++j)
        for (int d = 0; d < s.D; ++d)
          ASSERT_EQ(out[(r * s.LB + j) * s.D + d], h[(r * S + s.R - 1 + j) * s.D + d]);

    Vec dh(h.size(), 0.0);
    cpu::td_select_backward(dh.data(), G.data(), s.rows, s.R, s.LB, s.D);
    EXPECT_LT(fd_check(h, dh, fwd, G), kFdTol) << "dh";
    Vec dh2(h.size(), 0.0);
    cpu::td_select_backward(dh2.data(), G.data(), s.rows, s.R, s.LB, s.D);
    cpu::td_select_backward(dh2.data(), G.data(), s.rows, s.R, s.LB, s.D);
    expect_twice(dh, dh2, "dh");

    FVec hf = to_f(h), Gf = to_f(G), outf(out.size()), dhf(h.size(), 0.f);
    cpu::td_select_forward(outf.data(), hf.data(), s.rows, s.R, s.LB, s.D);
    cpu::td_select_backward(dhf.data(), Gf.data(), s.rows, s.R, s.LB, s.D);
    EXPECT_LT(float_err(outf, out), kFloatTol);
    EXPECT_LT(float_err(dhf, dh), kFloatTol);
  }
}

// The projection_layer embedder's reorder: in [n, A, C] -> out [n, C, A].
TEST(CpuOps, TransposeForwardBackward) {
  for (auto [n, A, C] : {std::tuple{3, 4, 5}, std::tuple{1, 1, 7}, std::tuple{6, 8, 1}, std::tuple{2, 2, 3}}) {
    SCOPED_TRACE("n=" + std::to_string(n) + " A=" + std::to_string(A) + " C=" + std::to_string(C));
    Rng rng(12, n * 100 + A * 10 + C);
    Vec x = randn(rng, size_t(n) * A * C);
    const Vec G = randn(rng, x.size());
    auto fwd = [&] {
      Vec out(x.size());
      cpu::transpose_forward(out.data(), x.data(), n, A, C);
      return out;
    };
    const Vec out = fwd();
    for (int i = 0; i < n; ++i)
      for (int a = 0; a < A; ++a)
        for (int c = 0; c < C; ++c) ASSERT_EQ(out[(size_t(i) * C + c) * A + a], x[(size_t(i) * A + a) * C + c]);
    Vec dx(x.size(), 0.0);
    cpu::transpose_backward(dx.data(), G.data(), n, A, C);
    EXPECT_LT(fd_check(x, dx, fwd, G), kFdTol) << "dx";
    Vec dx2(x.size(), 0.0);
    cpu::transpose_backward(dx2.data(), G.data(), n, A, C);
    cpu::transpose_backward(dx2.data(), G.data(), n, A, C);
    expect_twice(dx, dx2, "dx");
  }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy
// ---------------------------------------------------------------------------------------------

// sum over counted rows of -log softmax(logits)[target], in double.
double naive_ce(const Vec& logits, const std::vector<int32_t>& tgt, size_t n, int V, Vec* per_row = nullptr) {
  double total = 0;
  for (size_t i = 0; i < n; ++i) {
    double l = 0;
    if (tgt[i] >= 0) {
      double mx = -1e300, sum = 0;
      for (int j = 0; j < V; ++j) mx = std::max(mx, logits[i * V + j]);
      for (int j = 0; j < V; ++j) sum += std::exp(logits[i * V + j] - mx);
      l = mx + std::log(sum) - logits[i * V + tgt[i]];
    }
    if (per_row) (*per_row)[i] = l;
    total += l;
  }
  return total;
}

TEST(CpuOps, CrossEntropy) {
  struct Shape {
    size_t n;
    int V;
  };
  for (Shape s : {Shape{6, 11}, Shape{4, 1000}, Shape{1, 1}, Shape{9, 3}}) {
    SCOPED_TRACE("n=" + std::to_string(s.n) + " V=" + std::to_string(s.V));
    Rng rng(11, s.n * 10000 + s.V);
    Vec logits = randn(rng, s.n * s.V, 2.0);
    auto tgt = rand_tokens(rng, s.n, s.V);
    if (s.n > 2) tgt[1] = -1;  // an ignored row
    size_t counted = 0;
    for (auto t : tgt) counted += t >= 0;
    const double dscale = 1.0 / std::max<size_t>(counted, 1);

    Vec losses(s.n, -7.0);
    Vec dlogits(logits.size(), 123.0);  // overwritten, not accumulated
    cpu::cross_entropy(losses.data(), dlogits.data(), logits.data(), tgt.data(), s.n, s.V, dscale);
    Vec nl(s.n);
    naive_ce(logits, tgt, s.n, s.V, &nl);
    for (size_t i = 0; i < s.n; ++i) {
      EXPECT_NEAR(losses[i], nl[i], 1e-12 * std::max(1.0, std::abs(nl[i]))) << "row " << i;
      if (tgt[i] < 0) {
        EXPECT_EQ(losses[i], 0.0);
        for (int j = 0; j < s.V; ++j) ASSERT_EQ(dlogits[i * s.V + j], 0.0) << "ignored row " << i;
      }
    }
    // dlogits is the gradient of dscale * sum(losses): G = dscale on every row, checked against
    // finite differences of the op's own (double) losses.
    auto fwd = [&] {
      Vec rows(s.n);
      cpu::cross_entropy(rows.data(), static_cast<double*>(nullptr), logits.data(), tgt.data(), s.n, s.V, dscale);
      return rows;
    };
    EXPECT_LT(fd_check(logits, dlogits, fwd, Vec(s.n, dscale)), kFdTol) << "dlogits";
    // Direct formula too.
    Vec want(logits.size(), 0.0);
    for (size_t i = 0; i < s.n; ++i) {
      if (tgt[i] < 0) continue;
      double mx = -1e300, sum = 0;
      for (int j = 0; j < s.V; ++j) mx = std::max(mx, logits[i * s.V + j]);
      for (int j = 0; j < s.V; ++j) sum += std::exp(logits[i * s.V + j] - mx);
      for (int j = 0; j < s.V; ++j)
        want[i * s.V + j] = dscale * (std::exp(logits[i * s.V + j] - mx) / sum - (j == tgt[i] ? 1.0 : 0.0));
    }
    EXPECT_LT(max_rel(dlogits, want, 1e-12), kExactTol);

    // Overwrite semantics: a second call gives the same dlogits (not 2x).
    Vec again = dlogits;
    cpu::cross_entropy(losses.data(), again.data(), logits.data(), tgt.data(), s.n, s.V, dscale);
    EXPECT_TRUE(bitwise_equal(again, dlogits));

    // Losses only.
    Vec losses2(s.n);
    cpu::cross_entropy(losses2.data(), static_cast<double*>(nullptr), logits.data(), tgt.data(), s.n, s.V, dscale);
    EXPECT_TRUE(bitwise_equal(losses2, losses));

    FVec logitsf = to_f(logits), dlogitsf(logits.size(), 5.f);
    std::vector<float> lossesf(s.n);
    cpu::cross_entropy(lossesf.data(), dlogitsf.data(), logitsf.data(), tgt.data(), s.n, s.V, dscale);
    EXPECT_LT(float_err(lossesf, losses), kFloatTol);
    EXPECT_LT(float_err(dlogitsf, dlogits), kFloatTol);
  }
}

TEST(CpuOps, CrossEntropyLargeLogitsAreStable) {
  const int V = 5;
  Vec logits = {1000.0, -1000.0, 999.0, 0.0, 1000.0};
  std::vector<int32_t> tgt = {2};
  Vec loss(1);
  Vec d(V);
  cpu::cross_entropy(loss.data(), d.data(), logits.data(), tgt.data(), 1, V, 1.0);
  const double want = std::log(2.0 + std::exp(-1.0)) + 1.0;  // lse - 999
  EXPECT_NEAR(loss[0], want, 1e-6);
  for (double x : d) EXPECT_TRUE(std::isfinite(x));
}

TEST(CpuOps, CrossEntropyRejectsBadTargets) {
  const int V = 4;
  Vec logits(2 * V, 0.0), d(2 * V);
  Vec loss(2);
  std::vector<int32_t> too_big = {0, V};
  try {
    cpu::cross_entropy(loss.data(), d.data(), logits.data(), too_big.data(), 2, V, 1.0);
    FAIL() << "target == V must throw";
  } catch (const bt::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("target 4"), std::string::npos) << msg;
    EXPECT_NE(msg.find("4)"), std::string::npos) << msg;
  }
  std::vector<int32_t> negative = {-2, 0};
  EXPECT_THROW(cpu::cross_entropy(loss.data(), d.data(), logits.data(), negative.data(), 2, V, 1.0), bt::Error);
  FVec logitsf(2 * V, 0.f), df(2 * V), lossf(2);
  EXPECT_THROW(cpu::cross_entropy(lossf.data(), df.data(), logitsf.data(), too_big.data(), 2, V, 1.0), bt::Error);
}

// ---------------------------------------------------------------------------------------------
// Thread-count independence: the reductions, the tiled GEMMs, attention (shapes large enough
// for the parallel paths; bit for bit)
// ---------------------------------------------------------------------------------------------

TEST(CpuOps, ResultsIndependentOfThreadCount) {
  Rng rng(12);
  const size_t n = 300;
  const int C = 200, OC = 130, V = 300;
  const size_t B = 2;
  const int Tn = 40, H = 3, hd = 32;
  const size_t nq = B * H * Tn * hd;
  const FVec x = to_f(randn(rng, n * C, 1.0, 0.3)), w = to_f(randn(rng, C, 0.2, 1.0)), b = to_f(randn(rng, C));
  const FVec G = to_f(randn(rng, n * C)), Go = to_f(randn(rng, n * OC)), W = to_f(randn(rng, size_t(OC) * C, 0.1));
  const FVec logits = to_f(randn(rng, n * V, 3.0));
  const auto tgt = rand_tokens(rng, n, V);
  const FVec q = to_f(randn(rng, nq)), k = to_f(randn(rng, nq)), v = to_f(randn(rng, nq)), Ga = to_f(randn(rng, nq));
  auto run = [&](int threads) {
    FVec all;
    with_threads(threads, [&] {
      FVec out(n * C), mean(n), rstd(n), dx(n * C, 0.f), dw(C, 0.f), db(C, 0.f);
      cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), n, C, 1e-5);
      cpu::layernorm_backward(dx.data(), dw.data(), db.data(), G.data(), x.data(), w.data(), mean.data(), rstd.data(),
                              n, C);
      FVec mo(n * OC), dinp(n * C, 0.f), dW(W.size(), 0.f), dbias(OC, 0.f);
      cpu::matmul_forward(mo.data(), x.data(), W.data(), b.data(), n, C, OC);
      cpu::matmul_backward(dinp.data(), dW.data(), dbias.data(), Go.data(), x.data(), W.data(), n, C, OC);
      FVec dl(n * V);
      std::vector<float> loss(n);
      cpu::cross_entropy(loss.data(), dl.data(), logits.data(), tgt.data(), n, V, 0.01);
      FVec ao(nq), att(B * H * Tn * Tn), dq(nq, 0.f), dk(nq, 0.f), dv(nq, 0.f);
      cpu::attention_forward(ao.data(), att.data(), q.data(), k.data(), v.data(), B, Tn, H, hd);
      cpu::attention_backward(dq.data(), dk.data(), dv.data(), Ga.data(), att.data(), q.data(), k.data(), v.data(), B,
                              Tn, H, hd);
      for (const FVec* p : {&out, &mean, &rstd, &dx, &dw, &db, &mo, &dinp, &dW, &dbias, &dl, &loss, &ao, &att, &dq,
                            &dk, &dv})
        all.insert(all.end(), p->begin(), p->end());
    });
    return all;
  };
  const FVec ref = run(1);
  EXPECT_TRUE(bitwise_equal(ref, run(2)));
  EXPECT_TRUE(bitwise_equal(ref, run(3)));
}

// Grad::overwrite (the backend's zero-free mode for fresh input gradients) equals adding to zeros.
TEST(CpuOps, OverwriteModeEqualsAddingToZeros) {
  for (bt::DType t : {bt::DType::f32, bt::DType::f64}) {
    auto be = bt::make_cpu_backend(t);
    bt::testing_grad_modes::check_overwrite_equals_add_to_zeros(*be, t, bt::dtype_name(t));
  }
}

}  // namespace

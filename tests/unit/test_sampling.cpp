// The sampling rule (model/sampling.h) and the CPU backend's decoding ops: Philox4x32-10 against
// the Random123 known-answer vectors, the order-preserving keys, greedy ties, the exact top-k /
// top-p cuts (ties included), a chi-square test that top-k / top-p draws follow the temperature
// softmax renormalised over the kept set, independence of the batch composition, the host
// Sampler equal to the backend op, and the decode counters and transfer statistics.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/philox.h"
#include "core/rng.h"
#include "infer/sampler.h"
#include "model/backend.h"
#include "model/cpu/cpu_backend.h"
#include "model/sampling.h"
#include "tests/unit/sampling_check.h"

using namespace bt;

TEST(Philox, Random123KnownAnswers) {
  // Random123's kat_vectors, philox4x32 with 10 rounds: counter, key -> output.
  struct Kat {
    uint32_t c[4], k[2], out[4];
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Kat& k : kats) {
    const Philox4x32 r = philox4x32_10(Philox4x32{{k.c[0], k.c[1], k.c[2], k.c[3]}}, k.k[0], k.k[1]);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(r.v[i], k.out[i]) << "word " << i;
  }
  // philox_draw is (step, seq, 0, 0) under (seed low, seed high).
  const Philox4x32 r = philox4x32_10(Philox4x32{{7, 3, 0, 0}}, 0x89abcdefu, 0x01234567u);
  EXPECT_EQ(philox_draw(0x0123456789abcdefull, 3, 7), (uint64_t(r.v[1]) << 32) | r.v[0]);
}

TEST(Philox, Mulhi64) {
  Rng r(5);
  for (int i = 0; i < 10000; ++i) {
    const uint64_t a = r.next_u64() >> (i % 64), b = r.next_u64() >> ((i / 64) % 64);
    EXPECT_EQ(mulhi64(a, b), uint64_t((unsigned __int128)a * b >> 64)) << a << " * " << b;
  }
  EXPECT_EQ(mulhi64(~0ull, ~0ull), ~0ull - 1);
}

TEST(Sampling, KeysKeepTheOrderOfFloats) {
  Rng r(1);
  std::vector<float> v = {0.f, -0.f, 1.f, -1.f, 1e-38f, -1e-38f, 3e38f, -3e38f, INFINITY, -INFINITY, 1e-45f};
  for (int i = 0; i < 2000; ++i) v.push_back(static_cast<float>(r.normal() * std::pow(10.0, r.below(12) - 6.0)));
  for (float a : v) {
    EXPECT_EQ(sample_key_value(sample_key(a)), a == 0.f ? 0.f : a);
    for (float b : {v[0], v[3], v[7], v[20], v[500]}) {
      EXPECT_EQ(a < b, sample_key(a) < sample_key(b)) << a << " " << b;
      EXPECT_EQ(a == b, sample_key(a) == sample_key(b)) << a << " " << b;
    }
  }
  EXPECT_EQ(sample_mass_shift(2), 61);
  EXPECT_EQ(sample_mass_shift(50304), 46);
  EXPECT_EQ(sample_mass_shift(65536), 46);
}

TEST(Sampling, GreedyTakesTheLowestIndexOfTheLargest) {
  SampleParams p;
  p.greedy = true;
  const std::vector<float> x = {1.f, 3.f, -2.f, 3.f, 0.f};
  EXPECT_EQ(sample_row(x.data(), 5, p, 0, 0), 1);
  p.greedy = false;
  p.temperature = 0;  // also greedy
  EXPECT_EQ(sample_row(x.data(), 5, p, 9, 9), 1);
  const std::vector<float> z = {-0.f, 0.f};  // -0 and +0 are one value
  EXPECT_EQ(sample_row(z.data(), 2, p, 0, 0), 0);
  p.temperature = 1;
  p.top_k = 1;  // top-1 is greedy whatever the draw
  for (uint32_t s = 0; s < 50; ++s) EXPECT_EQ(sample_row(x.data(), 5, p, s, 3 * s), 1);
}

TEST(Sampling, TopKCutsTiesByIndex) {
  // Sorted by (logit desc, index asc): 4 (the 5.0), then 0, 1, 3, 6 (the 4.0s), ... top-3 keeps
  // 4, 0, 1; the 4.0s at 3 and 6 are cut although 3 comes before the kept 4 in index order.
  const std::vector<float> x = {4.f, 4.f, 1.f, 4.f, 5.f, -1.f, 4.f};
  SampleParams p;
  p.top_k = 3;
  std::vector<int> seen(7, 0);
  for (uint32_t s = 0; s < 3000; ++s) seen[sample_row(x.data(), 7, p, 1, s)]++;
  EXPECT_GT(seen[0], 0);
  EXPECT_GT(seen[1], 0);
  EXPECT_GT(seen[4], 0);
  EXPECT_EQ(seen[2] + seen[3] + seen[5] + seen[6], 0) << "a token outside the top-3 was drawn";
}

TEST(Sampling, TopPKeepsTheShortestPrefixThatReachesP) {
  // Probabilities 0.6, 0.3, 0.06, 0.04 (T = 1): top-p 0.85 keeps {0, 1}; 0.95 keeps {0, 1, 2}.
  const std::vector<double> pr = {0.06, 0.6, 0.04, 0.3};
  std::vector<float> x;
  for (double q : pr) x.push_back(static_cast<float>(std::log(q)));
  SampleParams p;
  for (double top_p : {0.85, 0.95, 0.5}) {
    p.top_p = top_p;
    std::vector<int> seen(4, 0);
    for (uint32_t s = 0; s < 4000; ++s) seen[sample_row(x.data(), 4, p, 2, s)]++;
    if (top_p == 0.5) {
      EXPECT_EQ(seen[1], 4000) << "top-p 0.5 keeps the most likely token only";
    } else {
      EXPECT_GT(seen[3], 0);
      EXPECT_EQ(seen[2], 0) << "top-p " << top_p;
      EXPECT_EQ(seen[0] > 0, top_p > 0.9) << "top-p " << top_p;
    }
  }
}

TEST(Sampling, DrawsFollowTheRenormalisedDistributionCpu) {
  auto be = make_cpu_backend(DType::f32);
  for (const sampling_check::Case& c : sampling_check::cases()) sampling_check::chi_square(*be, c, 20000);
}

TEST(Sampling, BatchCompositionDoesNotChangeADraw) {
  // 12 rows of different logits, sampled in one call; the same rows permuted (their streams
  // with them) and each row alone give the same ids.
  auto be = make_cpu_backend(DType::f32);
  const int B = 12, V = 50;
  Rng r(3);
  std::vector<float> logits(B * V);
  for (auto& v : logits) v = static_cast<float>(2 * r.normal());
  SampleParams p;
  p.temperature = 0.9;
  p.top_k = 20;
  p.top_p = 0.95;
  p.seed = 77;
  auto run = [&](const std::vector<int>& rows, int32_t step) {
    const int n = static_cast<int>(rows.size());
    std::vector<float> lg;
    std::vector<int32_t> seq;
    for (int b : rows) {
      lg.insert(lg.end(), logits.begin() + b * V, logits.begin() + (b + 1) * V);
      seq.push_back(100 + b);
    }
    Tensor tl = be->alloc({n, V}, DType::f32), ids = be->alloc({n}, DType::i32), ts = be->alloc({n}, DType::i32),
           st = be->alloc({1}, DType::i32);
    be->upload(tl, lg.data(), DType::f32);
    be->upload(ts, seq.data(), DType::i32);
    be->upload(st, &step, DType::i32);
    be->sample_tokens(tl, DecodeState{ids, Tensor(), Tensor(), ts, st}, p);
    std::vector<int32_t> out(n);
    be->download(out.data(), DType::i32, ids);
    return out;
  };
  std::vector<int> order(B);
  std::iota(order.begin(), order.end(), 0);
  for (int32_t step : {0, 5}) {
    const auto all = run(order, step);
    std::vector<int> perm(order.rbegin(), order.rend());
    std::rotate(perm.begin(), perm.begin() + 5, perm.end());
    const auto permuted = run(perm, step);
    for (int i = 0; i < B; ++i) {
      EXPECT_EQ(permuted[i], all[perm[i]]) << "row " << perm[i] << " at position " << i;
      EXPECT_EQ(run({perm[i]}, step)[0], all[perm[i]]) << "row " << perm[i] << " alone";
    }
  }
  // The host Sampler draws the same (stream 100 + b, step 0).
  Sampler hs(SamplingOptions{false, 0.9, 20, 0.95, 77}, B, [&] {
    std::vector<int32_t> s(B);
    for (int b = 0; b < B; ++b) s[b] = 100 + b;
    return s;
  }());
  const auto all = run(order, 0);
  for (int b = 0; b < B; ++b) EXPECT_EQ(hs.sample(logits.data() + b * V, V, b), all[b]) << "row " << b;
}

TEST(Sampling, DoneRowsAndHistoryAndCounters) {
  auto be = make_cpu_backend(DType::f32);
  const int B = 3, V = 8, W = 4;
  std::vector<float> lg(B * V, 0.f);
  lg[0 * V + 5] = 9.f;  // row 0 -> 5 (the EOS)
  lg[1 * V + 2] = 9.f;  // row 1 -> 2
  lg[2 * V + 7] = 9.f;  // row 2 -> 7, but it is already done
  Tensor tl = be->alloc({B, V}, DType::f32), ids = be->alloc({B}, DType::i32), hist = be->alloc({B, W}, DType::i32),
         done = be->alloc({B}, DType::i32), seq = be->alloc({B}, DType::i32), ctr = be->alloc({3}, DType::i32);
  be->upload(tl, lg.data(), DType::f32);
  const int32_t d0[3] = {0, 0, 1}, s0[3] = {0, 1, 2}, c0[3] = {6, 10, -2};
  be->upload(done, d0, DType::i32);
  be->upload(seq, s0, DType::i32);
  be->upload(ctr, c0, DType::i32);
  be->zero(hist);
  SampleParams p;
  p.greedy = true;
  p.eos_id = 5;
  const TransferStats before = be->transfers();
  be->sample_tokens(tl, DecodeState{ids, hist, done, seq, ctr.slice0(0, 1)}, p);
  be->add_i32(ctr, {1, -3, 4});
  std::vector<int32_t> hi(B), hh(B * W), hd(B), hc(3);
  be->download(hi.data(), DType::i32, ids);
  be->download(hh.data(), DType::i32, hist);
  be->download(hd.data(), DType::i32, done);
  be->download(hc.data(), DType::i32, ctr);
  EXPECT_EQ(hi, (std::vector<int32_t>{5, 2, 5})) << "a done row outputs the EOS";
  EXPECT_EQ(hd, (std::vector<int32_t>{1, 0, 1}));
  // step 6 -> column 6 % 4 = 2
  EXPECT_EQ(hh, (std::vector<int32_t>{0, 0, 5, 0, 0, 0, 2, 0, 0, 0, 5, 0}));
  EXPECT_EQ(hc, (std::vector<int32_t>{7, 7, 2}));
  const TransferStats t = be->transfers();
  EXPECT_EQ(t.d2h_bytes - before.d2h_bytes, size_t(4 * (B + B * W + B + 3)));
  EXPECT_EQ(t.d2h_copies - before.d2h_copies, 4u);
  EXPECT_EQ(t.syncs - before.syncs, 4u);
  EXPECT_EQ(t.h2d_bytes, before.h2d_bytes);
  EXPECT_THROW(be->add_i32(ctr, {1, 2}), Error);  // 2 values for 3 counters
  p.eos_id = V;  // not a token
  EXPECT_THROW(be->sample_tokens(tl, DecodeState{ids, hist, done, seq, ctr.slice0(0, 1)}, p), Error);
}

TEST(Sampling, BadOptionsFailClearly) {
  EXPECT_THROW(sample_params(SamplingOptions{false, 1.0, -1, 1.0, 0}, -1), Error);
  EXPECT_THROW(sample_params(SamplingOptions{false, 1.0, 0, 0.0, 0}, -1), Error);
  EXPECT_THROW(sample_params(SamplingOptions{false, 1.0, 0, 1.5, 0}, -1), Error);
  EXPECT_THROW(sample_params(SamplingOptions{false, NAN, 0, 1.0, 0}, -1), Error);
}

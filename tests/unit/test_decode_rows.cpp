// The decoding ops with per-row state (model/backend.h), which let rows at different positions,
// token indices and sampling parameters decode in one batch (infer/decode_session.h, bt serve):
// each row gives bit for bit what the op gives for that row alone with the row's values as the
// call's; a row whose position lies past its cache writes nothing; add_i32 on [K, n] counters.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "core/rng.h"
#include "model/backend.h"
#include "model/cpu/cpu_backend.h"
#include "model/sampling.h"

using namespace bt;

namespace {

Tensor put(Backend& be, Shape s, const std::vector<float>& x) {
  Tensor t = be.alloc(s, DType::f32);
  be.upload(t, x.data(), DType::f32);
  return t;
}
Tensor put_ids(Backend& be, const std::vector<int32_t>& x) {
  Tensor t = be.alloc({static_cast<int64_t>(x.size())}, DType::i32);
  be.upload(t, x.data(), DType::i32);
  return t;
}
template <class T>
std::vector<T> get(Backend& be, const Tensor& t) {
  std::vector<T> h(t.numel());
  be.download(h.data(), t.dtype, t);
  return h;
}
std::vector<float> random_floats(size_t n, uint64_t seed) {
  Rng r(seed);
  std::vector<float> x(n);
  for (auto& v : x) v = static_cast<float>(r.normal());
  return x;
}

}  // namespace

TEST(DecodeRows, PositionsPerRowEqualOneRowAtATime) {
  auto be = make_cpu_backend(DType::f32);
  const int64_t B = 4, H = 2, hd = 8, Tmax = 9, Tn = 1;
  const RotaryParams rope{4, 10000};
  // Row 3 is parked past its cache.
  const std::vector<int32_t> pos = {3, 0, 8, 9}, start = {1, 0, 2, 0};
  const auto hk = random_floats(B * H * Tmax * hd, 1), hv = random_floats(B * H * Tmax * hd, 2);
  const auto hqkv = random_floats(B * Tn * 3 * H * hd, 3);
  Tensor kc = put(*be, {B, H, Tmax, hd}, hk), vc = put(*be, {B, H, Tmax, hd}, hv);
  Tensor qkv = put(*be, {B, Tn, 3 * H * hd}, hqkv);
  Tensor q = be->alloc({B, H, Tn, hd}, DType::f32), out = be->alloc({B, Tn, H * hd}, DType::f32);
  Tensor dpos = put_ids(*be, pos), dstart = put_ids(*be, start);
  be->qkv_rotary_cache_at(q, kc, vc, qkv, dpos, rope);
  be->attention_cached_at(out, q, kc, vc, dstart, dpos);
  const auto got_k = get<float>(*be, kc), got_v = get<float>(*be, vc), got_out = get<float>(*be, out);
  const size_t row_kv = H * Tmax * hd, row_out = Tn * H * hd;
  for (int64_t b = 0; b < B; ++b) {
    Tensor k1 = put(*be, {1, H, Tmax, hd}, std::vector<float>(hk.begin() + b * row_kv, hk.begin() + (b + 1) * row_kv));
    Tensor v1 = put(*be, {1, H, Tmax, hd}, std::vector<float>(hv.begin() + b * row_kv, hv.begin() + (b + 1) * row_kv));
    const size_t row_qkv = Tn * 3 * H * hd;
    Tensor qkv1 = put(*be, {1, Tn, 3 * H * hd},
                      std::vector<float>(hqkv.begin() + b * row_qkv, hqkv.begin() + (b + 1) * row_qkv));
    Tensor q1 = be->alloc({1, H, Tn, hd}, DType::f32), o1 = be->alloc({1, Tn, H * hd}, DType::f32);
    Tensor s1 = put_ids(*be, {start[b]});
    const std::vector<float> k_row(got_k.begin() + b * row_kv, got_k.begin() + (b + 1) * row_kv);
    const std::vector<float> v_row(got_v.begin() + b * row_kv, got_v.begin() + (b + 1) * row_kv);
    const std::vector<float> o_row(got_out.begin() + b * row_out, got_out.begin() + (b + 1) * row_out);
    if (pos[b] + Tn <= Tmax) {
      be->qkv_rotary_cache(q1, k1, v1, qkv1, pos[b], rope);
      be->attention_cached(o1, q1, k1, v1, s1, pos[b]);
      EXPECT_EQ(k_row, get<float>(*be, k1)) << "row " << b;
      EXPECT_EQ(v_row, get<float>(*be, v1)) << "row " << b;
      EXPECT_EQ(o_row, get<float>(*be, o1)) << "row " << b;
    } else {  // parked: the cache is untouched
      EXPECT_EQ(k_row, std::vector<float>(hk.begin() + b * row_kv, hk.begin() + (b + 1) * row_kv));
      EXPECT_EQ(v_row, std::vector<float>(hv.begin() + b * row_kv, hv.begin() + (b + 1) * row_kv));
    }
  }
  // A row whose start lies past its position attends to nothing: zeros.
  const std::vector<int32_t> far = {int32_t(Tmax), 0, 0, 0};
  be->attention_cached_at(out, q, kc, vc, put_ids(*be, far), dpos);
  const auto o2 = get<float>(*be, out);
  for (size_t i = 0; i < row_out; ++i) ASSERT_EQ(o2[i], 0.f);
  EXPECT_THROW(be->attention_cached_at(out, q, kc, vc, dstart, put_ids(*be, {1, 2})), Error);  // 2 positions, 4 rows
}

TEST(DecodeRows, SamplingPerRowEqualsOneRowAtATime) {
  auto be = make_cpu_backend(DType::f32);
  const int64_t B = 6, V = 40, W = 4;
  const auto lg = random_floats(B * V, 7);
  std::vector<SampleParams> ps(B);
  ps[0].greedy = true;
  ps[1].temperature = 0.8;
  ps[1].seed = 11;
  ps[2].top_k = 5;
  ps[2].seed = 12;
  ps[3].top_p = 0.7;
  ps[3].temperature = 1.3;
  ps[3].seed = uint64_t(1) << 40 | 3;
  ps[4].temperature = 0;  // greedy too
  ps[5].top_k = 3;
  ps[5].top_p = 0.9;
  ps[5].seed = 99;
  ps[5].eos_id = 7;
  for (const SampleParams& p : ps) {  // the packing keeps every field
    int32_t w[kSampleParamWords];
    pack_sample_params(p, w);
    const SampleParams u = unpack_sample_params(w);
    EXPECT_TRUE(u.greedy == p.greedy && u.temperature == p.temperature && u.top_k == p.top_k && u.top_p == p.top_p &&
                u.seed == p.seed && u.eos_id == p.eos_id);
  }
  std::vector<int32_t> words(B * kSampleParamWords);
  for (int64_t b = 0; b < B; ++b) pack_sample_params(ps[b], words.data() + b * kSampleParamWords);
  const std::vector<int32_t> steps = {0, 5, 17, 3, 2, 9}, seqs = {4, 3, 2, 1, 0, 5};
  Tensor tl = put(*be, {B, V}, lg), ids = be->alloc({B}, DType::i32), hist = be->alloc({B, W}, DType::i32);
  Tensor done = be->alloc({B}, DType::i32), params = be->alloc({B, kSampleParamWords}, DType::i32);
  be->upload(params, words.data(), DType::i32);
  be->zero(hist);
  be->zero(done);
  SampleParams unused;
  unused.eos_id = 1;
  be->sample_tokens(tl, DecodeState{ids, hist, done, put_ids(*be, seqs), put_ids(*be, steps), params}, unused);
  const auto got = get<int32_t>(*be, ids), got_hist = get<int32_t>(*be, hist);
  for (int64_t b = 0; b < B; ++b) {
    Tensor id1 = be->alloc({1}, DType::i32), h1 = be->alloc({1, W}, DType::i32), d1 = be->alloc({1}, DType::i32);
    be->zero(h1);
    be->zero(d1);
    be->sample_tokens(tl.slice0(b, b + 1), DecodeState{id1, h1, d1, put_ids(*be, {seqs[b]}), put_ids(*be, {steps[b]})},
                      ps[b]);
    EXPECT_EQ(got[b], get<int32_t>(*be, id1)[0]) << "row " << b;
    EXPECT_EQ(got_hist[b * W + steps[b] % W], got[b]) << "row " << b << ": its own step's column";
    EXPECT_EQ(sample_row(lg.data() + b * V, V, ps[b], seqs[b], steps[b]), got[b]);
  }
}

TEST(DecodeRows, CountersAdvancePerRow) {
  auto be = make_cpu_backend(DType::f32);
  Tensor c = put_ids(*be, {0, 1, 2, 10, 11, 12});  // [2, 3]
  be->add_i32(c, {5, -1});
  EXPECT_EQ(get<int32_t>(*be, c), (std::vector<int32_t>{5, 6, 7, 9, 10, 11}));
  EXPECT_THROW(be->add_i32(c, {1, 2, 3, 4}), Error);  // 4 counters do not divide 6 values
}

// A step of cpu_uniform_batch(n) rows computes each row's matmul alike wherever the row sits
// (bt serve's determinism rests on it).
TEST(DecodeRows, UniformBatchTreatsEveryRowAlike) {
  auto be = make_cpu_backend(DType::f32);
  for (int64_t n : {1, 3, 8, 17, 32, 33, 100, 200, 257}) {
    const int64_t B = cpu_uniform_batch(n);
    ASSERT_GE(B, n);
    for (auto [K, N] : {std::pair<int64_t, int64_t>{64, 64}, {64, 264}, {256, 768}, {64, 4096}}) {
      const auto w = random_floats(N * K, 40), x = random_floats(B * K, 41), probe = random_floats(K, 42);
      Tensor W = put(*be, {N, K}, w), out = be->alloc({B, N}, DType::f32);
      std::vector<float> first;
      for (int64_t at : {int64_t(0), B / 2, B - 1}) {
        std::vector<float> in = x;
        std::copy(probe.begin(), probe.end(), in.begin() + at * K);
        be->matmul_forward(out, put(*be, {B, K}, in), W, Tensor());
        const auto o = get<float>(*be, out);
        const std::vector<float> row(o.begin() + at * N, o.begin() + (at + 1) * N);
        if (first.empty()) first = row;
        ASSERT_EQ(row, first) << "batch " << B << " (for " << n << "), K " << K << ", N " << N << ", row " << at;
      }
    }
  }
}

// The decode session's common part: buffers, row state, replayable steps. See decode_session.h.
#include "infer/decode_session.h"

#include <atomic>
#include <cstring>

#include "core/error.h"
#include "core/timer.h"
#include "infer/decode_buffers.h"

namespace bt {

namespace {
std::atomic<uint64_t> g_sessions{0};
}  // namespace

void SessionBuffers::caches(const DecoderConfig& d, int64_t R, int64_t T, int base, DType act) {
  const int64_t H = d.heads, hd = d.dim / d.heads;
  for (int l = 0; l < d.layers; ++l) {
    add(base + 2 * l, {R, H, T, hd}, act);
    add(base + 2 * l + 1, {R, H, T, hd}, act);
  }
}

SessionBuffers session_buffers(const ModelConfig& m, DType act, const SessionShape& s) {
  BT_CHECK(s.rows >= 1 && s.positions >= 1 && s.prefill_units >= 1, "decode session: rows ", s.rows, ", positions ",
           s.positions, " and prefill units ", s.prefill_units, " must be >= 1");
  SessionBuffers b;
  const int64_t R = s.rows;
  b.add(kStart, {R}, DType::i32);
  b.add(kSeq, {R}, DType::i32);
  b.add(kDone, {R}, DType::i32);
  b.add(kIds, {R}, DType::i32);
  b.add(kCounters, {kDecodeCounters, R}, DType::i32);
  b.add(kLogits, {R, m.vocab_size}, act);
  if (s.row_params) b.add(kParams, {R, kSampleParamWords}, DType::i32);
  if (m.is_block()) block_buffers(m, act, s, b);
  else vanilla_buffers(m, act, s, b);
  return b;
}

DecodePlan plan_session(const ModelConfig& m, DType act, DType stats, const SessionShape& s, size_t align) {
  const SessionBuffers b = session_buffers(m, act, s);
  auto r = [&](size_t n) { return std::max(align, (n + align - 1) / align * align); };
  DecodePlan p;
  for (const auto& x : b.slots) (x.slot >= kCacheBase ? p.kv_cache : p.buffers) += r(x.shape.numel() * dtype_size(x.dtype));
  if (m.is_block()) {
    p.stacks = TransformerStack::cached_scratch_bytes(StackDims::from(m.block_decoder, m), b.rows1, act, stats, align) +
               TransformerStack::cached_scratch_bytes(StackDims::from(m.token_decoder, m), b.rows2, act, stats, align);
  } else {
    p.stacks = TransformerStack::cached_scratch_bytes(StackDims::from(m.decoder, m), b.rows1, act, stats, align);
  }
  return p;
}

std::unique_ptr<DecodeSession> DecodeSession::make(Model& model) {
  return model.config().is_block() ? make_block_session(model) : make_vanilla_session(model);
}

DecodeSession::DecodeSession(Model& model, int64_t unit)
    : model_(model), be_(model.backend()), unit_(unit), id_(++g_sessions) {}

// Captured steps read this session's buffers: drop them with it.
DecodeSession::~DecodeSession() { be_.forget_steps(); }

void DecodeSession::allocate(const SessionShape& s) {
  const SessionBuffers b = session_buffers(model_.config(), be_.act_dtype(), s);
  std::vector<Tensor> by_slot;
  for (const auto& x : b.slots) {
    if (static_cast<int>(slots_.size()) <= x.slot) slots_.resize(x.slot + 1);
    const size_t bytes = x.shape.numel() * dtype_size(x.dtype);
    if (slots_[x.slot].empty() || slots_[x.slot].bytes() < bytes) {
      slots_[x.slot] = be_.alloc({static_cast<int64_t>(std::max<size_t>(bytes, 1))}, DType::u8);
      moved_ = true;
    }
    if (static_cast<int>(by_slot.size()) <= x.slot) by_slot.resize(x.slot + 1);
    by_slot[x.slot] = Tensor(slots_[x.slot].data, x.shape, x.dtype, slots_[x.slot].device);
  }
  auto get = [&](int slot) { return slot < static_cast<int>(by_slot.size()) ? by_slot[slot] : Tensor(); };
  shape_ = s;
  T1_ = b.T1;
  start_ = get(kStart);
  seq_ = get(kSeq);
  done_ = get(kDone);
  ids_ = get(kIds);
  ctr_ = get(kCounters);
  logits_ = get(kLogits);
  params_ = get(kParams);
  hist_ = get(kHist);
  bind(b, get);
  if (moved_) {  // a buffer that a captured step reads or writes moved
    be_.forget_steps();
    ++epoch_;
    moved_ = false;
  }
  // Rows that never ran still go through the steps: their ids must be tokens.
  be_.zero(ids_);
  if (!hist_.empty()) be_.zero(hist_);
  park(0, s.rows);
}

KVCache DecodeSession::cache(const StackDims& d, int64_t T, int base, const std::function<Tensor(int)>& get) const {
  KVCache c;
  c.B = shape_.rows;
  c.Tmax = T;
  for (int i = 0; i < d.layers; ++i) {
    c.k.push_back(get(base + 2 * i));
    c.v.push_back(get(base + 2 * i + 1));
  }
  return c;
}

void DecodeSession::reserve(TransformerStack& st, int64_t rows) {
  const int64_t before = st.cached_capacity();
  st.reserve_cached(rows);
  if (st.cached_capacity() != before) moved_ = true;
}

KVCache DecodeSession::rows_of(const KVCache& c, int64_t r0, int64_t n) {
  if (r0 == 0 && n == c.B) return c;
  KVCache v;
  v.B = n;
  v.Tmax = c.Tmax;
  for (size_t l = 0; l < c.k.size(); ++l) {
    v.k.push_back(c.k[l].slice0(r0, r0 + n));
    v.v.push_back(c.v[l].slice0(r0, r0 + n));
  }
  return v;
}

size_t DecodeSession::kv_cache_bytes() const { return c1_.bytes() + (c2_.k.empty() ? 0 : c2_.bytes()); }

Tensor DecodeSession::counter(int k, int64_t M) const {
  const int64_t R = shape_.rows;
  return Tensor(static_cast<int32_t*>(ctr_.data) + k * R, {M}, DType::i32, ctr_.device);
}

DecodeState DecodeSession::state(int64_t M) const {
  DecodeState st{ids_.slice0(0, M), hist_.empty() ? Tensor() : hist_.slice0(0, M), done_.slice0(0, M),
                 seq_.slice0(0, M), counter(kCtrStep, M)};
  if (shape_.row_params) st.params = params_.slice0(0, M);
  return st;
}

Tensor DecodeSession::logits(int64_t M) const { return logits_.slice0(0, M); }

void DecodeSession::open(int64_t r0, const std::vector<int32_t>& starts) {
  const int64_t n = static_cast<int64_t>(starts.size());
  BT_CHECK(r0 >= 0 && r0 + n <= shape_.rows, "decode session: rows ", r0, "..", r0 + n - 1, " of ", shape_.rows);
  if (n > 0) be_.upload(start_.slice0(r0, r0 + n), starts.data(), DType::i32);
}

void DecodeSession::arm(int64_t r0, const std::vector<RowArm>& rows) {
  const int64_t n = static_cast<int64_t>(rows.size());
  BT_CHECK(r0 >= 0 && r0 + n <= shape_.rows, "decode session: rows ", r0, "..", r0 + n - 1, " of ", shape_.rows);
  if (n == 0) return;
  std::vector<int32_t> seq(n), zero(n, 0), td(n), bd(n), unit(n * unit_), params;
  for (int64_t i = 0; i < n; ++i) {
    const RowArm& a = rows[i];
    BT_CHECK(static_cast<int64_t>(a.last_unit.size()) == unit_, "decode session: the last prompt unit has ",
             a.last_unit.size(), " ids, not ", unit_);
    seq[i] = a.stream;
    arm_counters(a, td[i], bd[i]);
    std::copy(a.last_unit.begin(), a.last_unit.end(), unit.begin() + i * unit_);
    if (shape_.row_params) {
      params.resize((i + 1) * kSampleParamWords);
      pack_sample_params(a.params, params.data() + i * kSampleParamWords);
    }
  }
  be_.upload(seq_.slice0(r0, r0 + n), seq.data(), DType::i32);
  be_.upload(done_.slice0(r0, r0 + n), zero.data(), DType::i32);
  const int64_t R = shape_.rows;
  auto at = [&](int k) { return counter(k, R).slice0(r0, r0 + n); };
  be_.upload(at(kCtrStep), zero.data(), DType::i32);
  be_.upload(at(kCtrTdPos), td.data(), DType::i32);
  be_.upload(at(kCtrBdPos), bd.data(), DType::i32);
  if (shape_.row_params) be_.upload(params_.slice0(r0, r0 + n), params.data(), DType::i32);
  // The last unit is the next step's input: a block model's block (hist), a token (ids).
  be_.upload((hist_.empty() ? ids_ : hist_).slice0(r0, r0 + n), unit.data(), DType::i32);
}

void DecodeSession::park(int64_t r0, int64_t n) {
  BT_CHECK(r0 >= 0 && r0 + n <= shape_.rows, "decode session: rows ", r0, "..", r0 + n - 1, " of ", shape_.rows);
  if (n == 0) return;
  // Past the cache: writes nothing; a start past it: attends to nothing; stopped (done) with EOS 0:
  // samples nothing and feeds token 0 to the next embedding.
  const int32_t past = static_cast<int32_t>(T1_);
  int32_t td = 0, bd = 0;
  park_counters(td, bd);
  std::vector<int32_t> start(n, past), one(n, 1), zero(n, 0), tdv(n, td), bdv(n, bd), params;
  be_.upload(start_.slice0(r0, r0 + n), start.data(), DType::i32);
  be_.upload(done_.slice0(r0, r0 + n), one.data(), DType::i32);
  const int64_t R = shape_.rows;
  auto at = [&](int k) { return counter(k, R).slice0(r0, r0 + n); };
  be_.upload(at(kCtrTdPos), tdv.data(), DType::i32);
  be_.upload(at(kCtrBdPos), bdv.data(), DType::i32);
  if (shape_.row_params) {
    SampleParams p;
    p.greedy = true;
    p.eos_id = 0;
    params.resize(n * kSampleParamWords);
    for (int64_t i = 0; i < n; ++i) pack_sample_params(p, params.data() + i * kSampleParamWords);
    be_.upload(params_.slice0(r0, r0 + n), params.data(), DType::i32);
  }
}

void DecodeSession::read_tokens(int64_t M, int32_t* out) {
  be_.download(out, DType::i32, (hist_.empty() ? ids_ : hist_).slice0(0, M));
}

void DecodeSession::run(int kind, int64_t M, int64_t j, const std::function<void()>& f) {
  if (plain_) {
    f();
    return;
  }
  auto bits = [](double d) {
    uint64_t u;
    std::memcpy(&u, &d, 8);
    return u;
  };
  // Everything the step's ops take from the host: the kind, the rows, the buffers (epoch), the
  // sampling parameters when they are the call's.
  const SampleParams& p = sp_;
  uint64_t h = 1469598103934665603ull;
  for (uint64_t v : {id_, epoch_, uint64_t(kind), uint64_t(j), uint64_t(M), uint64_t(shape_.rows),
                     uint64_t(c1_.Tmax), uint64_t(c2_.Tmax), uint64_t(shape_.row_params)})
    h = (h ^ v) * 1099511628211ull;
  if (!shape_.row_params)
    for (uint64_t v : {uint64_t(p.greedy), bits(p.temperature), uint64_t(int64_t(p.top_k)), bits(p.top_p), p.seed,
                       uint64_t(int64_t(p.eos_id))})
      h = (h ^ v) * 1099511628211ull;
  be_.run_step(h, f);
}

void DecodeSession::phase(double DecodePhases::*part, const std::function<void()>& f) {
  if (!phases_) {
    f();
    return;
  }
  be_.synchronize();
  Timer t;
  f();
  be_.synchronize();
  phases_->*part += t.seconds();
}

void DecodeSession::host_phase(const std::function<void()>& f) { phase(&DecodePhases::host, f); }

void DecodeSession::head_and_sample(Tensor h, Tensor head, int64_t M, int32_t step, int32_t td_pos, int32_t bd_pos) {
  const Tensor logits = logits_.slice0(0, M);
  phase(&DecodePhases::head, [&] { be_.matmul_forward(logits, h.view({M, static_cast<int64_t>(h.numel()) / M}), head, Tensor()); });
  phase(&DecodePhases::sampling, [&] {
    be_.sample_tokens(logits, state(M), sp_);
    be_.add_i32(ctr_, {step, td_pos, bd_pos});
  });
}

}  // namespace bt

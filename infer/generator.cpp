// Generation of one batch on the decode engine (decode_session.h), and the naive reference.
// See generator.h.
//
// Structure of a generate call: (1) the prompts, left-padded to a common number of units
// (blocks or tokens; whole pad units in front are hidden by each row's start); (2) the session's
// buffers for this batch, allocated before any compute; (3) the prefill in chunks, and every row
// armed with its last prompt unit; (4) rounds until every sequence has stopped, the host reading
// back only the new ids (once per round).
#include "infer/generator.h"

#include <algorithm>

#include "core/error.h"
#include "core/timer.h"
#include "infer/decode_buffers.h"

namespace bt {

namespace {

void check_prompt_ids(const std::vector<std::vector<int32_t>>& prompts, int V) {
  for (size_t b = 0; b < prompts.size(); ++b)
    for (int32_t t : prompts[b])
      BT_CHECK(t >= 0 && t < V, "prompt ", b + 1, ": token id ", t, " is out of range for model.vocab_size ", V,
               " (was it encoded with another tokenizer?)");
}

// The session of one generate call: B rows, NP prompt units, gen new tokens; the prefill takes
// at most max(1, prefill_rows / B) units of every row per call.
SessionShape generate_shape(const ModelConfig& m, int64_t B, int64_t NP, int64_t gen, int64_t prefill_rows) {
  BT_CHECK(B >= 1, "decoding needs a batch of at least one sequence, got ", B);
  const int64_t rows = prefill_rows > 0 ? prefill_rows : 4096;
  SessionShape s;
  s.rows = B;
  s.positions = NP + (m.is_block() ? ceil_div(gen, m.block_length) : gen);
  s.prefill_units = B * std::max<int64_t>(1, std::min(rows / B, std::max<int64_t>(1, NP - 1)));
  return s;
}

// Prompt units of a prompt of n tokens: blocks (at least one) or tokens.
int64_t prompt_units(const ModelConfig& m, int64_t n) {
  return m.is_block() ? std::max<int64_t>(1, ceil_div(n, m.block_length)) : n;
}

TransferStats operator-(const TransferStats& a, const TransferStats& b) {
  TransferStats d;
  d.h2d_bytes = a.h2d_bytes - b.h2d_bytes;
  d.d2h_bytes = a.d2h_bytes - b.d2h_bytes;
  d.h2d_copies = a.h2d_copies - b.h2d_copies;
  d.d2h_copies = a.d2h_copies - b.d2h_copies;
  d.syncs = a.syncs - b.syncs;
  return d;
}

// The host's view of the sequences: appends the ids that come back, stops a sequence at EOS.
struct Recorder {
  GenerateResult& res;
  int eos_id;
  void add(int64_t b, int32_t id) {
    if (res.hit_eos[b]) return;
    if (id == eos_id) res.hit_eos[b] = true;
    else res.tokens[b].push_back(id);
  }
  bool all_done() const {
    for (bool d : res.hit_eos)
      if (!d) return false;
    return true;
  }
};

}  // namespace

DecodePlan plan_decode(const ModelConfig& m, DType act, DType stats, int64_t B, int64_t prompt, int64_t gen,
                       int64_t prefill_rows, size_t align) {
  return plan_session(m, act, stats, generate_shape(m, B, prompt_units(m, prompt), gen, prefill_rows), align);
}

int64_t largest_batch(const ModelConfig& m, DType act, DType stats, size_t budget, int64_t prompt, int64_t gen,
                      int64_t max_batch, int64_t prefill_rows, size_t align) {
  auto fits = [&](int64_t B) { return plan_decode(m, act, stats, B, prompt, gen, prefill_rows, align).total() <= budget; };
  if (max_batch < 1 || !fits(1)) return 0;
  // Bisection: the plan grows linearly with B except for the prefill buffers, which hold about
  // prefill_rows rows whatever B (B x floor(prefill_rows / B)), a wobble far below one sequence's
  // KV cache.
  int64_t lo = 1, hi = max_batch;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (fits(mid)) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

Generator::Generator(Model& model) : model_(model), session_(DecodeSession::make(model)) {}

Generator::~Generator() = default;

void Generator::reserve(int64_t B, int64_t prompt, int64_t gen, int64_t prefill_rows) {
  BT_CHECK(B >= 1 && prompt >= 1 && gen >= 1, "generator reserve: batch, prompt and gen must be >= 1");
  session_->allocate(generate_shape(model_.config(), B, prompt_units(model_.config(), prompt), gen, prefill_rows));
  last_B_ = B;
}

GenerateResult Generator::generate(const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& o) {
  const ModelConfig& m = model_.config();
  BT_CHECK(!prompts.empty(), "generate: no prompts");
  BT_CHECK(o.max_new_tokens >= 0, "--max-new-tokens must be >= 0");
  check_prompt_ids(prompts, m.vocab_size);
  BT_CHECK(o.pad_id >= 0 && o.pad_id < m.vocab_size, "generate: pad id ", o.pad_id,
           " is out of range for model.vocab_size ", m.vocab_size);
  BT_CHECK(o.eos_id < m.vocab_size, "generate: eos id ", o.eos_id, " is out of range for model.vocab_size ",
           m.vocab_size);
  BT_CHECK(o.streams.empty() || o.streams.size() == prompts.size(), "generate: ", o.streams.size(),
           " sampling streams for ", prompts.size(), " prompts");
  const SampleParams sp = sample_params(o.sampling, o.eos_id);  // bad sampling options fail before any work
  const int64_t B = static_cast<int64_t>(prompts.size());
  GenerateResult res;
  res.tokens.resize(B);
  res.hit_eos.assign(B, false);
  if (o.max_new_tokens == 0) return res;
  if (!m.is_block())
    for (int64_t b = 0; b < B; ++b)
      BT_CHECK(!prompts[b].empty(), "prompt ", b + 1, " is empty: a vanilla model needs at least one prompt token");

  // The prompts left-padded with pad_id to NP units: a block model's prompt first to whole blocks
  // (at least one; these pads are embedded, as in training with random_pad_first_block), then
  // every prompt with whole pad units to the longest, which attention never sees (start).
  const int64_t U = session_->unit();
  std::vector<int64_t> units(B);
  int64_t NP = 1;
  for (int64_t b = 0; b < B; ++b) NP = std::max(NP, units[b] = prompt_units(m, prompts[b].size()));
  std::vector<int32_t> grid(B * NP * U, o.pad_id);  // [B, NP * U]
  for (int64_t b = 0; b < B; ++b)
    std::copy(prompts[b].begin(), prompts[b].end(), grid.begin() + (b + 1) * NP * U - prompts[b].size());

  const TransferStats t0 = be().transfers();
  const SessionShape shape = generate_shape(m, B, NP, o.max_new_tokens, o.prefill_rows);
  DecodeSession& s = *session_;
  s.allocate(shape);
  s.set_sampling(sp);
  s.set_profile(o.profile, nullptr);
  last_B_ = B;
  res.kv_cache_bytes = s.kv_cache_bytes();
  Recorder rec{res, o.eos_id};
  Timer timer;

  // Prefill: units 0 .. NP-2 in chunks; then each row is armed with its last unit.
  std::vector<int32_t> starts(B);
  for (int64_t b = 0; b < B; ++b) starts[b] = static_cast<int32_t>(NP - units[b]);
  s.open(0, starts);
  const int64_t chunk = shape.prefill_units / B;
  for (int64_t first = 0; first < NP - 1; first += chunk) {
    const int64_t n = std::min(chunk, NP - 1 - first);
    std::vector<int32_t> ids(B * n * U);  // [B, n * U]
    for (int64_t b = 0; b < B; ++b)
      std::copy_n(grid.begin() + b * NP * U + first * U, n * U, ids.begin() + b * n * U);
    s.prefill(0, B, first, n, ids.data());
  }
  std::vector<RowArm> arms(B);
  for (int64_t b = 0; b < B; ++b) {
    arms[b].stream = o.streams.empty() ? static_cast<int32_t>(b) : o.streams[b];
    arms[b].position = static_cast<int32_t>(NP - 1);
    arms[b].last_unit.assign(grid.begin() + (b * NP + NP - 1) * U, grid.begin() + (b + 1) * NP * U);
  }
  s.arm(0, arms);

  // Rounds: U tokens each (the last may be cut short); the host reads them back once per round.
  DecodePhases ph;
  TransferStats t1;
  std::vector<int32_t> h_tokens(B * U);
  int64_t produced = 0;
  for (int64_t g = 0; produced < o.max_new_tokens; ++g) {
    const int64_t n = std::min(U, o.max_new_tokens - produced);  // tokens of this round
    s.first_step(B);
    if (g == 0) {  // the first token is sampled: the prefill ends here
      be().synchronize();
      res.prefill_seconds = timer.seconds();
      res.prefill_transfers = be().transfers() - t0;
      t1 = be().transfers();
      timer.reset();
      if (o.profile) s.set_profile(true, &ph);  // phases are timed in the decode loop only
    }
    for (int64_t j = 1; j < n; ++j) s.next_step(B, j);
    s.host_phase([&] {
      s.read_tokens(B, h_tokens.data());
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < n; ++j) rec.add(b, h_tokens[b * U + j]);
    });
    produced += n;
    if (rec.all_done()) break;
  }
  s.set_profile(false, nullptr);
  be().synchronize();
  res.decode_seconds = timer.seconds();
  res.decode_transfers = be().transfers() - t1;
  res.steps = produced;
  res.phases = ph;
  return res;
}

size_t kv_bytes_per_sequence(const ModelConfig& m, size_t elem_bytes, int64_t prompt, int64_t gen) {
  if (m.is_block()) {
    const int64_t LB = m.block_length;
    const int64_t blocks = std::max<int64_t>(1, ceil_div(prompt, LB)) + ceil_div(gen, LB);
    const int64_t local = m.summation() ? LB : m.token_decoder.prefix_length + LB;
    return elem_bytes * 2 *
           (size_t(m.block_decoder.layers) * m.block_decoder.dim * blocks +
            size_t(m.token_decoder.layers) * m.token_decoder.dim * local);
  }
  return elem_bytes * 2 * size_t(m.decoder.layers) * m.decoder.dim * static_cast<size_t>(prompt + gen);
}

std::vector<std::vector<int32_t>> generate_naive(Model& model, const std::vector<std::vector<int32_t>>& prompts,
                                                 const GenerateOptions& o) {
  const ModelConfig& m = model.config();
  const int L = m.context_length, V = m.vocab_size;
  check_prompt_ids(prompts, V);
  Backend& be = model.backend();
  Sampler sampler(o.sampling, static_cast<int>(prompts.size()), o.streams);
  std::vector<std::vector<int32_t>> out(prompts.size());
  std::vector<float> row(V);
  for (size_t b = 0; b < prompts.size(); ++b) {
    std::vector<int32_t> seq;
    int64_t pads = 0;  // in front of the prompt
    if (m.is_block()) {
      const int64_t LB = m.block_length;
      const int64_t n = static_cast<int64_t>(prompts[b].size());
      pads = std::max<int64_t>(1, ceil_div(n, LB)) * LB - n;
      seq.assign(pads, o.pad_id);
    } else {
      BT_CHECK(!prompts[b].empty(), "prompt ", b + 1, " is empty");
    }
    seq.insert(seq.end(), prompts[b].begin(), prompts[b].end());
    for (int s = 0; s < o.max_new_tokens; ++s) {
      const int n = static_cast<int>(seq.size());
      BT_CHECK(n < L, "generate_naive: the sequence (", n, " tokens) no longer fits model.context_length ", L);
      std::vector<int32_t> window(seq);
      window.resize(L, o.pad_id);  // positions >= n do not influence the logits at n (causality)
      // The pad mask of training: the front pads and the tail are pads.
      std::vector<uint8_t> mask(L, 0);
      std::fill(mask.begin() + pads, mask.begin() + n, uint8_t(1));
      model.forward(window.data(), mask.data(), 1);
      const int64_t r = model.logit_row(0, n);
      be.download(row.data(), DType::f32, model.logits().slice0(r, r + 1));
      const int32_t t = sampler.sample(row.data(), V, static_cast<int>(b));
      if (t == o.eos_id) break;
      out[b].push_back(t);
      seq.push_back(t);
    }
  }
  return out;
}

}  // namespace bt

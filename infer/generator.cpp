// KV-cached decoding for the block and vanilla models, and the naive reference. See generator.h.
//
// Structure of a generate call: (1) the layout: every device buffer of the call is allocated
// before any compute, from one list of shapes that plan_decode also sums; (2) setup uploads
// (pad starts, Philox streams, counters) and the prefill, in chunks; (3) the decode loop, whose
// steps are lambdas of backend ops with fixed arguments run through Backend::run_step, with the
// host reading back only the new ids.
#include "infer/generator.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <tuple>

#include "core/error.h"
#include "core/timer.h"

namespace bt {

namespace {

// Device buffer slots (grow-only, reused across generate calls).
enum Slot : int {
  kStart = 0,        // [B] i32 first visible cache position per sequence
  kSeq = 1,          // [B] i32 Philox stream per row
  kDone = 2,         // [B] i32 1 once a row drew EOS
  kIds = 3,          // [B] i32 the newest token of each row (the next embedding's input)
  kHist = 4,         // [B, L_B] i32 the tokens of the current block (vanilla: unused)
  kCounters = 5,     // [4] i32 token index s, token-decoder position, block-decoder position, unused
  kPromptIds = 6,    // [rows] i32 prompt ids of one prefill call
  kPromptEmb = 7,    // [rows, C] their embeddings
  kBlockEmb = 8,     // [B, D_B] the block embedding of a block-decoder step
  kTokEmb = 9,       // [B, D] the token embedding of a token step
  kPrefixHead = 10,  // prefix: [B, (R-1) * D_T] prefix vectors P_1 .. P_{R-1}; summation: [L_B, B, D_T] E_1 .. E_{L_B}
  kPrefixLast = 11,  // prefix: [B, D_T] prefix vector P_R; summation: [B, D_T] the token decoder's input
  kLogits = 12,      // [B, V]
  kLookT = 13,       // projection_layer: [rows / L_B, E * L_B] channel-major lookups of the blocks being embedded
  kBlocks = 14,      // projection_layer: [rows / L_B, D_B] block vectors
  kBos = 15,         // summation: [B] i32 BOS, the token decoder's first input
  kCacheBase = 16,   // then k, v per layer of the first stack, then of the token decoder
};
// Counters (kCounters).
enum Counter : int { kStep = 0, kTdPos = 1, kBdPos = 2 };
// Replayable steps.
enum StepKind : int { kTdPrefixStep = 1, kTdStep = 2, kBdStep = 3, kVanillaStep = 4 };

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void check_prompt_ids(const std::vector<std::vector<int32_t>>& prompts, int V) {
  for (size_t b = 0; b < prompts.size(); ++b)
    for (int32_t t : prompts[b])
      BT_CHECK(t >= 0 && t < V, "prompt ", b + 1, ": token id ", t, " is out of range for model.vocab_size ", V,
               " (was it encoded with another tokenizer?)");
}

// Every buffer of one generate call, as (slot, shape, dtype), and the stacks' scratch rows.
// NP: prompt blocks (block model) or prompt positions (vanilla).
struct Shapes {
  std::vector<std::tuple<int, Shape, DType>> slots;
  int64_t chunk = 1;             // prompt blocks / positions per prefill call
  int64_t rows1 = 0, rows2 = 0;  // forward_cached rows of the first stack and the token decoder
  int64_t T1 = 0, T2 = 0;        // cache lengths
};

Shapes decode_shapes(const ModelConfig& m, DType act, int64_t B, int64_t NP, int64_t gen, int64_t prefill_rows) {
  BT_CHECK(B >= 1, "decoding needs a batch of at least one sequence, got ", B);
  Shapes s;
  const int64_t V = m.vocab_size, rows = prefill_rows > 0 ? prefill_rows : 4096;
  auto add = [&](int slot, Shape sh, DType t) { s.slots.emplace_back(slot, sh, t); };
  add(kStart, {B}, DType::i32);
  add(kSeq, {B}, DType::i32);
  add(kDone, {B}, DType::i32);
  add(kIds, {B}, DType::i32);
  add(kCounters, {4}, DType::i32);
  add(kLogits, {B, V}, act);
  auto caches = [&](const DecoderConfig& d, int64_t T, int base) {
    const int64_t H = d.heads, hd = d.dim / d.heads;
    for (int l = 0; l < d.layers; ++l) {
      add(base + 2 * l, {B, H, T, hd}, act);
      add(base + 2 * l + 1, {B, H, T, hd}, act);
    }
  };
  if (m.is_block()) {
    const int64_t LB = m.block_length, E = m.embedder_dim, DT = m.token_decoder.dim;
    const int64_t R = m.token_decoder.prefix_length, G = ceil_div(gen, LB);
    s.chunk = std::max<int64_t>(1, std::min(rows / B, std::max<int64_t>(1, NP - 1)));
    const int64_t DB = m.block_decoder.dim;
    add(kHist, {B, LB}, DType::i32);
    add(kPromptIds, {B * s.chunk * LB}, DType::i32);
    add(kPromptEmb, {B * s.chunk * LB, E}, act);
    add(kBlockEmb, {B * LB, E}, act);
    add(kTokEmb, {B, DT}, act);
    if (m.projection_layer()) {  // the prefill's blocks (>= the B blocks of a block-decoder step)
      add(kLookT, {B * s.chunk, E * LB}, act);
      add(kBlocks, {B * s.chunk, DB}, act);
    }
    if (m.summation()) {
      add(kPrefixHead, {R * B, DT}, act);  // R = L_B
      add(kBos, {B}, DType::i32);
    } else if (R > 1) {
      add(kPrefixHead, {B, (R - 1) * DT}, act);
    }
    add(kPrefixLast, {B, DT}, act);
    s.T1 = NP + G;
    s.T2 = m.summation() ? LB : R + LB;
    caches(m.block_decoder, s.T1, kCacheBase);
    caches(m.token_decoder, s.T2, kCacheBase + 2 * m.block_decoder.layers);
    s.rows1 = B * s.chunk;
    s.rows2 = m.summation() ? B : B * std::max<int64_t>(1, R - 1);
  } else {
    const int64_t D = m.decoder.dim;
    s.chunk = std::max<int64_t>(1, std::min(rows / B, std::max<int64_t>(1, NP - 1)));
    add(kPromptIds, {B * s.chunk}, DType::i32);
    add(kPromptEmb, {B * s.chunk, D}, act);
    add(kTokEmb, {B, D}, act);
    s.T1 = NP + gen;
    caches(m.decoder, s.T1, kCacheBase);
    s.rows1 = B * s.chunk;
  }
  return s;
}

std::atomic<uint64_t> g_generators{0};

}  // namespace

// The views of one generate call.
struct Generator::Layout {
  int64_t B = 0, chunk = 1;
  Tensor start, seq, done, ids, hist, ctr, prompt_ids, prompt_emb, block_emb, tok_emb, p_head, p_last, logits;
  Tensor look_t, blocks, bos;  // projection_layer, summation
  KVCache c1, c2;  // block: block decoder, token decoder; vanilla: c1
};

DecodePlan plan_decode(const ModelConfig& m, DType act, DType stats, int64_t B, int64_t prompt, int64_t gen,
                       int64_t prefill_rows, size_t align) {
  const int64_t NP = m.is_block() ? std::max<int64_t>(1, ceil_div(prompt, m.block_length)) : prompt;
  const Shapes s = decode_shapes(m, act, B, NP, gen, prefill_rows);
  auto r = [&](size_t b) { return std::max(align, (b + align - 1) / align * align); };
  DecodePlan p;
  for (const auto& [slot, sh, t] : s.slots) (slot >= kCacheBase ? p.kv_cache : p.buffers) += r(sh.numel() * dtype_size(t));
  if (m.is_block()) {
    p.stacks = TransformerStack::cached_scratch_bytes(StackDims::from(m.block_decoder, m), s.rows1, act, stats, align) +
               TransformerStack::cached_scratch_bytes(StackDims::from(m.token_decoder, m), s.rows2, act, stats, align);
  } else {
    p.stacks = TransformerStack::cached_scratch_bytes(StackDims::from(m.decoder, m), s.rows1, act, stats, align);
  }
  return p;
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

Generator::Generator(Model& model) : model_(model), be_(model.backend()), id_(++g_generators) {
  const ModelConfig& m = model.config();
  const ParamTable& tb = model.table();
  if (m.is_block()) {
    bd_ = std::make_unique<TransformerStack>(
        be_, StackDims::from(m.block_decoder, m),
        stack_views(tb, model.params(), "block_decoder.gpt_neox.", m.block_decoder.layers), StackTensors{});
    td_ = std::make_unique<TransformerStack>(
        be_, StackDims::from(m.token_decoder, m),
        stack_views(tb, model.params(), "token_decoder.gpt_neox.", m.token_decoder.layers), StackTensors{});
  } else {
    dec_ = std::make_unique<TransformerStack>(be_, StackDims::from(m.decoder, m),
                                              stack_views(tb, model.params(), "gpt_neox.", m.decoder.layers),
                                              StackTensors{});
  }
}

// Captured steps read this generator's buffers: drop them with it.
Generator::~Generator() { be_.forget_steps(); }

Tensor Generator::scratch(int slot, Shape s, DType t) {
  if (static_cast<int>(slots_.size()) <= slot) slots_.resize(slot + 1);
  const size_t bytes = s.numel() * dtype_size(t);
  if (slots_[slot].empty() || slots_[slot].bytes() < bytes) {
    slots_[slot] = be_.alloc({static_cast<int64_t>(std::max<size_t>(bytes, 1))}, DType::u8);
    moved_ = true;
  }
  return Tensor(slots_[slot].data, s, t, slots_[slot].device);
}

Generator::Layout Generator::layout(int64_t B, int64_t NP, int64_t gen, int64_t prefill_rows) {
  const ModelConfig& m = model_.config();
  const Shapes s = decode_shapes(m, be_.act_dtype(), B, NP, gen, prefill_rows);
  Layout l;
  l.B = B;
  l.chunk = s.chunk;
  std::vector<Tensor> by_slot;
  for (const auto& [slot, sh, t] : s.slots) {
    if (static_cast<int>(by_slot.size()) <= slot) by_slot.resize(slot + 1);
    by_slot[slot] = scratch(slot, sh, t);
  }
  auto get = [&](int slot) { return slot < static_cast<int>(by_slot.size()) ? by_slot[slot] : Tensor(); };
  l.start = get(kStart);
  l.seq = get(kSeq);
  l.done = get(kDone);
  l.ids = get(kIds);
  l.hist = get(kHist);
  l.ctr = get(kCounters);
  l.prompt_ids = get(kPromptIds);
  l.prompt_emb = get(kPromptEmb);
  l.block_emb = get(kBlockEmb);
  l.tok_emb = get(kTokEmb);
  l.p_head = get(kPrefixHead);
  l.p_last = get(kPrefixLast);
  l.logits = get(kLogits);
  l.look_t = get(kLookT);
  l.blocks = get(kBlocks);
  l.bos = get(kBos);
  last_logits_ = l.logits;
  auto cache = [&](const StackDims& d, int64_t T, int base) {
    KVCache c;
    c.B = B;
    c.Tmax = T;
    for (int i = 0; i < d.layers; ++i) {
      c.k.push_back(get(base + 2 * i));
      c.v.push_back(get(base + 2 * i + 1));
    }
    return c;
  };
  auto reserve = [&](TransformerStack& st, int64_t rows) {
    const int64_t before = st.cached_capacity();
    st.reserve_cached(rows);
    if (st.cached_capacity() != before) moved_ = true;
  };
  if (m.is_block()) {
    l.c1 = cache(bd_->dims(), s.T1, kCacheBase);
    l.c2 = cache(td_->dims(), s.T2, kCacheBase + 2 * bd_->dims().layers);
    reserve(*bd_, s.rows1);
    reserve(*td_, s.rows2);
  } else {
    l.c1 = cache(dec_->dims(), s.T1, kCacheBase);
    reserve(*dec_, s.rows1);
  }
  if (moved_) {  // a buffer that a captured step reads or writes moved
    be_.forget_steps();
    ++epoch_;
    moved_ = false;
  }
  return l;
}

void Generator::reserve(int64_t B, int64_t prompt, int64_t gen, int64_t prefill_rows) {
  const ModelConfig& m = model_.config();
  BT_CHECK(B >= 1 && prompt >= 1 && gen >= 1, "generator reserve: batch, prompt and gen must be >= 1");
  layout(B, m.is_block() ? std::max<int64_t>(1, ceil_div(prompt, m.block_length)) : prompt, gen, prefill_rows);
}

void Generator::embed_host_ids(Tensor out, const std::vector<int32_t>& ids, Tensor id_buf, Tensor table) {
  Tensor t(id_buf.data, {static_cast<int64_t>(ids.size())}, DType::i32, id_buf.device);
  be_.upload(t, ids.data(), DType::i32);
  be_.embedding_forward(out, t, table);
}

uint64_t Generator::step_key(int kind, const Layout& l, const SampleParams& p) const {
  auto bits = [](double d) {
    uint64_t u;
    std::memcpy(&u, &d, 8);
    return u;
  };
  uint64_t h = 1469598103934665603ull;
  for (uint64_t v : {id_, epoch_, uint64_t(kind), uint64_t(l.B), uint64_t(l.c1.Tmax), uint64_t(l.c2.Tmax),
                     uint64_t(p.greedy), bits(p.temperature), uint64_t(int64_t(p.top_k)), bits(p.top_p), p.seed,
                     uint64_t(int64_t(p.eos_id))})
    h = (h ^ v) * 1099511628211ull;
  return h;
}

GenerateResult Generator::generate(const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& o) {
  BT_CHECK(!prompts.empty(), "generate: no prompts");
  BT_CHECK(o.max_new_tokens >= 0, "--max-new-tokens must be >= 0");
  check_prompt_ids(prompts, model_.config().vocab_size);
  BT_CHECK(o.pad_id >= 0 && o.pad_id < model_.config().vocab_size, "generate: pad id ", o.pad_id,
           " is out of range for model.vocab_size ", model_.config().vocab_size);
  BT_CHECK(o.eos_id < model_.config().vocab_size, "generate: eos id ", o.eos_id,
           " is out of range for model.vocab_size ", model_.config().vocab_size);
  BT_CHECK(o.streams.empty() || o.streams.size() == prompts.size(), "generate: ", o.streams.size(),
           " sampling streams for ", prompts.size(), " prompts");
  (void)sample_params(o.sampling, o.eos_id);  // bad sampling options fail before any work
  if (o.max_new_tokens == 0) {
    GenerateResult r;
    r.tokens.resize(prompts.size());
    r.hit_eos.assign(prompts.size(), false);
    return r;
  }
  return model_.config().is_block() ? generate_block(prompts, o) : generate_vanilla(prompts, o);
}

namespace {

TransferStats operator-(const TransferStats& a, const TransferStats& b) {
  TransferStats d;
  d.h2d_bytes = a.h2d_bytes - b.h2d_bytes;
  d.d2h_bytes = a.d2h_bytes - b.d2h_bytes;
  d.h2d_copies = a.h2d_copies - b.h2d_copies;
  d.d2h_copies = a.d2h_copies - b.d2h_copies;
  d.syncs = a.syncs - b.syncs;
  return d;
}

// Runs f, adding its seconds to *acc when profiling (a null acc: not timed).
struct PhaseTimer {
  Backend& be;
  bool on;
  template <class F>
  void operator()(double* acc, F&& f) const {
    if (!on || !acc) {
      f();
      return;
    }
    be.synchronize();
    Timer t;
    f();
    be.synchronize();
    *acc += t.seconds();
  }
};

// The host's view of the sequences: appends the ids that come back, stops a sequence at EOS.
struct Recorder {
  GenerateResult& res;
  int eos_id;
  // Appends token `id` of sequence b; true while b is unfinished.
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

GenerateResult Generator::generate_block(const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& o) {
  const ModelConfig& m = model_.config();
  const int64_t B = static_cast<int64_t>(prompts.size()), LB = m.block_length;
  const int64_t DB = m.block_decoder.dim, DT = m.token_decoder.dim, R = m.token_decoder.prefix_length;
  const int64_t G = ceil_div(o.max_new_tokens, LB);  // blocks to generate
  const bool summation = m.summation();
  const int64_t S0 = model_.row_start();  // the token decoder's position of t_1: R (prefix) or 1 (summation)

  // Prompt blocks: in-block left padding with pad_id (embedded, as in training with
  // random_pad_first_block), then whole pad blocks to align the batch (hidden by start).
  std::vector<int64_t> nb(B);
  int64_t NB = 1;
  for (int64_t b = 0; b < B; ++b) {
    nb[b] = std::max<int64_t>(1, ceil_div(static_cast<int64_t>(prompts[b].size()), LB));
    NB = std::max(NB, nb[b]);
  }
  std::vector<int32_t> grid(B * NB * LB, o.pad_id);  // [B, NB * LB]
  std::vector<int32_t> start(B);
  for (int64_t b = 0; b < B; ++b) {
    start[b] = static_cast<int32_t>(NB - nb[b]);
    std::copy(prompts[b].begin(), prompts[b].end(), grid.begin() + (b + 1) * NB * LB - prompts[b].size());
  }

  const TransferStats t0 = be_.transfers();
  Layout L = layout(B, NB, o.max_new_tokens, o.prefill_rows);
  const Tensor w_exp = model_.param("token_decoder.expansion_layer.weight");  // [R * D_T, D_B]
  const Tensor b_exp = model_.param("token_decoder.expansion_layer.bias");    // [R * D_T]
  const Tensor td_table = model_.param("token_decoder.gpt_neox.embed_in.weight");  // [V, D_T]
  const Tensor head = model_.param("token_decoder.embed_out.weight");           // [V, D_T]
  const SampleParams sp = sample_params(o.sampling, o.eos_id);

  GenerateResult res;
  res.tokens.resize(B);
  res.hit_eos.assign(B, false);
  res.kv_cache_bytes = L.c1.bytes() + L.c2.bytes();
  Recorder rec{res, o.eos_id};
  Timer timer;

  // Setup: pad starts, streams, stop flags, counters (s = 0, the token decoder's first step
  // position S0, the block decoder's first new block NB), summation's BOS ids.
  std::vector<int32_t> streams = o.streams;
  if (streams.empty())
    for (int64_t b = 0; b < B; ++b) streams.push_back(static_cast<int32_t>(b));
  be_.upload(L.start, start.data(), DType::i32);
  be_.upload(L.seq, streams.data(), DType::i32);
  be_.zero(L.done);
  const int32_t ctr0[4] = {0, static_cast<int32_t>(S0), static_cast<int32_t>(NB), 0};
  be_.upload(L.ctr, ctr0, DType::i32);
  if (summation) {
    const std::vector<int32_t> bos(B, m.bos_token_id);
    be_.upload(L.bos, bos.data(), DType::i32);
  }
  const Tensor step = L.ctr.slice0(kStep, kStep + 1), td_pos = L.ctr.slice0(kTdPos, kTdPos + 1),
               bd_pos = L.ctr.slice0(kBdPos, kBdPos + 1);
  const DecodeState st{L.ids, L.hist, L.done, L.seq, step};

  // Prefill: blocks 0 .. NB-2 in chunks, then the last prompt block alone so that its context
  // embedding comes out as a contiguous [B, 1, D_B] (the buffer every block-decoder step writes).
  auto block_ids = [&](int64_t first, int64_t nblocks) {  // [B, nblocks * L_B] of the grid
    std::vector<int32_t> ids(B * nblocks * LB);
    for (int64_t b = 0; b < B; ++b)
      std::copy_n(grid.begin() + b * NB * LB + first * LB, nblocks * LB, ids.begin() + b * nblocks * LB);
    return ids;
  };
  // The model's embedder (concat or projection_layer) on n blocks of ids already on the device
  // -> [n, D_B]; look holds the lookups.
  auto embed = [&](Tensor ids, int64_t n, Tensor look) { return model_.embed_blocks(ids, n, look, L.look_t, L.blocks); };
  auto embed_prompt = [&](int64_t first, int64_t n) {  // n prompt blocks of every row -> [B, n, D_B]
    const std::vector<int32_t> ids = block_ids(first, n);
    Tensor t(L.prompt_ids.data, {B * n * LB}, DType::i32, L.prompt_ids.device);
    be_.upload(t, ids.data(), DType::i32);
    return embed(t, B * n, L.prompt_emb).view({B, n, DB});
  };
  for (int64_t first = 0; first < NB - 1; first += L.chunk) {
    const int64_t n = std::min(L.chunk, NB - 1 - first);
    bd_->forward_cached(embed_prompt(first, n), B, n, first, L.c1, L.start);
  }
  const Tensor ctx = bd_->forward_cached(embed_prompt(NB - 1, 1), B, 1, NB - 1, L.c1, L.start);  // [B, 1, D_B]

  // The steps. Each is a fixed sequence of ops; what changes between calls is on the device.
  DecodePhases ph;
  bool timing = false;  // phases are timed in the decode loop only
  const PhaseTimer phase{be_, o.profile};
  auto at = [&](double DecodePhases::*f) { return timing ? &(ph.*f) : nullptr; };
  auto head_and_sample = [&](Tensor h, std::vector<int32_t> advance) {  // h [B, 1, D_T]
    phase(at(&DecodePhases::head), [&] { be_.matmul_forward(L.logits, h.view({B, DT}), head, Tensor()); });
    phase(at(&DecodePhases::sampling), [&] {
      be_.sample_tokens(L.logits, st, sp);
      be_.add_i32(L.ctr, advance);
    });
  };
  // summation: the expansion E_1 .. E_{L_B} of ctx, one contiguous [B, D_T] each (p_head[j]),
  // and the token decoder's input e(x) + E_{j+1} at position j (x = BOS, t_1 .. t_{L_B-1}).
  auto sum_input = [&](Tensor x_ids, int64_t j) {
    be_.embedding_forward(L.tok_emb, x_ids, td_table);
    be_.add_forward(L.p_last, L.tok_emb, L.p_head.slice0(j * B, (j + 1) * B), Tensor());
    return L.p_last.view({B, 1, DT});
  };
  // ctx -> P_1 .. P_R through the token decoder (its local cache starts empty for every block)
  // -> the block's first token (column 0 of hist). summation: ctx -> E_1 .. E_{L_B}, then
  // e(BOS) + E_1 at position 0.
  auto td_prefix = [&] {
    Tensor h;
    phase(at(&DecodePhases::token_decoder), [&] {
      const Tensor ctx2 = ctx.view({B, DB});
      if (summation) {
        for (int64_t j = 0; j < LB; ++j)
          be_.matmul_forward(L.p_head.slice0(j * B, (j + 1) * B), ctx2, w_exp.slice0(j * DT, (j + 1) * DT),
                             b_exp.slice0(j * DT, (j + 1) * DT));
        h = td_->forward_cached(sum_input(L.bos, 0), B, 1, 0, L.c2, Tensor());
        return;
      }
      if (R > 1) {
        be_.matmul_forward(L.p_head, ctx2, w_exp.slice0(0, (R - 1) * DT), b_exp.slice0(0, (R - 1) * DT));
        td_->forward_cached(L.p_head.view({B, R - 1, DT}), B, R - 1, 0, L.c2, Tensor());
      }
      be_.matmul_forward(L.p_last, ctx2, w_exp.slice0((R - 1) * DT, R * DT), b_exp.slice0((R - 1) * DT, R * DT));
      h = td_->forward_cached(L.p_last.view({B, 1, DT}), B, 1, R - 1, L.c2, Tensor());
    });
    head_and_sample(h, {1, 0, 0, 0});
  };
  // The newest token at the token decoder's position td_pos -> the next token of the block.
  // summation: t_j enters at position j (= td_pos) with E_{j+1}, whose buffer the host names, so
  // each j is its own step.
  auto td_step_at = [&](int64_t j) {
    Tensor h;
    phase(at(&DecodePhases::token_decoder), [&] {
      Tensor x = L.tok_emb.view({B, 1, DT});
      if (summation) x = sum_input(L.ids, j);
      else be_.embedding_forward(L.tok_emb, L.ids, td_table);
      h = td_->forward_cached(x, B, 1, 0, L.c2, Tensor(), td_pos);
    });
    head_and_sample(h, {1, 1, 0, 0});
  };
  // The finished block (hist) -> one block-decoder step at bd_pos -> the next block's first token.
  auto bd_step = [&] {
    phase(at(&DecodePhases::block_decoder), [&] {
      const Tensor x = embed(L.hist.view({B * LB}), B, L.block_emb);
      const Tensor out = bd_->forward_cached(x.view({B, 1, DB}), B, 1, 0, L.c1, L.start, bd_pos);
      BT_CHECK(out.data == ctx.data, "generate: the block decoder's output moved");
      be_.add_i32(L.ctr, {0, -static_cast<int32_t>(LB - 1), 1, 0});  // td_pos back to S0; next block
    });
    td_prefix();
  };
  auto run = [&](int kind, const std::function<void()>& f) {
    if (o.profile) f();
    else be_.run_step(step_key(kind, L, sp), f);
  };

  run(kTdPrefixStep, td_prefix);
  be_.synchronize();
  res.prefill_seconds = timer.seconds();
  res.prefill_transfers = be_.transfers() - t0;
  const TransferStats t1 = be_.transfers();
  timer.reset();
  timing = true;

  std::vector<int32_t> h_hist(B * LB);
  int64_t produced = 0;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t n = std::min(LB, o.max_new_tokens - produced);  // tokens of this block
    for (int64_t j = 1; j < n; ++j) {
      if (summation) run(kTdStep + 8 * static_cast<int>(j), [&] { td_step_at(j); });
      else run(kTdStep, [&] { td_step_at(j); });
    }
    phase(&ph.host, [&] {
      be_.download(h_hist.data(), DType::i32, L.hist);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < n; ++j) rec.add(b, h_hist[b * LB + j]);
    });
    produced += n;
    if (rec.all_done() || produced >= o.max_new_tokens) break;
    run(kBdStep, bd_step);
  }
  be_.synchronize();
  res.decode_seconds = timer.seconds();
  res.decode_transfers = be_.transfers() - t1;
  res.steps = produced;
  res.phases = ph;
  return res;
}

GenerateResult Generator::generate_vanilla(const std::vector<std::vector<int32_t>>& prompts,
                                           const GenerateOptions& o) {
  const ModelConfig& m = model_.config();
  const int64_t B = static_cast<int64_t>(prompts.size()), D = m.decoder.dim;
  int64_t P = 0;
  for (int64_t b = 0; b < B; ++b) {
    BT_CHECK(!prompts[b].empty(), "prompt ", b + 1, " is empty: a vanilla model needs at least one prompt token");
    P = std::max<int64_t>(P, static_cast<int64_t>(prompts[b].size()));
  }
  std::vector<int32_t> grid(B * P, o.pad_id), start(B);  // [B, P] left-padded
  for (int64_t b = 0; b < B; ++b) {
    start[b] = static_cast<int32_t>(P - static_cast<int64_t>(prompts[b].size()));
    std::copy(prompts[b].begin(), prompts[b].end(), grid.begin() + (b + 1) * P - prompts[b].size());
  }
  const TransferStats t0 = be_.transfers();
  Layout L = layout(B, P, o.max_new_tokens, o.prefill_rows);
  const Tensor table = model_.param("gpt_neox.embed_in.weight");  // [V, D]
  const Tensor head = model_.param("embed_out.weight");            // [V, D]
  const SampleParams sp = sample_params(o.sampling, o.eos_id);

  GenerateResult res;
  res.tokens.resize(B);
  res.hit_eos.assign(B, false);
  res.kv_cache_bytes = L.c1.bytes();
  Recorder rec{res, o.eos_id};
  Timer timer;

  // Setup: pad starts, streams, stop flags, counters (s = 0, the first step's position P - 1),
  // and the last prompt token of every row as the first step's input.
  std::vector<int32_t> streams = o.streams, last(B);
  if (streams.empty())
    for (int64_t b = 0; b < B; ++b) streams.push_back(static_cast<int32_t>(b));
  for (int64_t b = 0; b < B; ++b) last[b] = grid[b * P + P - 1];
  be_.upload(L.start, start.data(), DType::i32);
  be_.upload(L.seq, streams.data(), DType::i32);
  be_.zero(L.done);
  const int32_t ctr0[4] = {0, static_cast<int32_t>(P - 1), 0, 0};
  be_.upload(L.ctr, ctr0, DType::i32);
  be_.upload(L.ids, last.data(), DType::i32);
  const Tensor step = L.ctr.slice0(kStep, kStep + 1), pos = L.ctr.slice0(kTdPos, kTdPos + 1);
  const DecodeState st{L.ids, Tensor(), L.done, L.seq, step};

  // Prefill: positions 0 .. P-2 in chunks.
  for (int64_t first = 0; first < P - 1; first += L.chunk) {
    const int64_t n = std::min(L.chunk, P - 1 - first);
    std::vector<int32_t> ids(B * n);
    for (int64_t b = 0; b < B; ++b) std::copy_n(grid.begin() + b * P + first, n, ids.begin() + b * n);
    Tensor x(L.prompt_emb.data, {B * n, D}, L.prompt_emb.dtype, L.prompt_emb.device);
    embed_host_ids(x, ids, L.prompt_ids, table);
    dec_->forward_cached(x.view({B, n, D}), B, n, first, L.c1, L.start);
  }

  DecodePhases ph;
  bool timing = false;
  const PhaseTimer phase{be_, o.profile};
  auto at = [&](double DecodePhases::*f) { return timing ? &(ph.*f) : nullptr; };
  // The newest token at position pos -> the next token.
  auto step_fn = [&] {
    Tensor h;
    phase(at(&DecodePhases::token_decoder), [&] {
      be_.embedding_forward(L.tok_emb, L.ids, table);
      h = dec_->forward_cached(L.tok_emb.view({B, 1, D}), B, 1, 0, L.c1, L.start, pos);
    });
    phase(at(&DecodePhases::head), [&] { be_.matmul_forward(L.logits, h.view({B, D}), head, Tensor()); });
    phase(at(&DecodePhases::sampling), [&] {
      be_.sample_tokens(L.logits, st, sp);
      be_.add_i32(L.ctr, {1, 1, 0, 0});
    });
  };

  std::vector<int32_t> h_ids(B);
  TransferStats t1;
  int64_t produced = 0;
  for (int64_t s = 0; s < o.max_new_tokens; ++s) {
    if (o.profile) step_fn();
    else be_.run_step(step_key(kVanillaStep, L, sp), step_fn);
    if (s == 0) {
      be_.synchronize();
      res.prefill_seconds = timer.seconds();
      res.prefill_transfers = be_.transfers() - t0;
      t1 = be_.transfers();
      timer.reset();
      timing = true;
    }
    phase(timing ? &ph.host : nullptr, [&] {
      be_.download(h_ids.data(), DType::i32, L.ids);
      for (int64_t b = 0; b < B; ++b) rec.add(b, h_ids[b]);
    });
    ++produced;
    if (rec.all_done()) break;
  }
  be_.synchronize();
  res.decode_seconds = timer.seconds();
  res.decode_transfers = be_.transfers() - t1;
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

// KV-cached decoding for the block and vanilla models, and the naive reference. See generator.h.
#include "infer/generator.h"

#include <algorithm>

#include "core/error.h"
#include "core/timer.h"

namespace bt {

namespace {

// Device buffer slots (grow-only, reused across generate calls).
enum Slot : int {
  kStart = 0,     // [B] i32 first visible cache position per sequence
  kIds = 1,       // [n] i32 token ids being embedded
  kEmb = 2,       // [n, C] embeddings fed to a stack
  kPrefixHead = 3,  // [B, (R-1) * D_T] prefix vectors P_1 .. P_{R-1}
  kPrefixLast = 4,  // [B, D_T] prefix vector P_R
  kLogits = 5,    // [B, V]
  kCacheBase = 8, // then k, v per layer of the first stack, then of the token decoder
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void check_prompt_ids(const std::vector<std::vector<int32_t>>& prompts, int V) {
  for (size_t b = 0; b < prompts.size(); ++b)
    for (int32_t t : prompts[b])
      BT_CHECK(t >= 0 && t < V, "prompt ", b + 1, ": token id ", t, " is out of range for model.vocab_size ", V,
               " (was it encoded with another tokenizer?)");
}

}  // namespace

Generator::Generator(Model& model) : model_(model), be_(model.backend()) {
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

Generator::~Generator() = default;

Tensor Generator::scratch(int slot, Shape s, DType t) {
  if (static_cast<int>(slots_.size()) <= slot) slots_.resize(slot + 1);
  const size_t bytes = s.numel() * dtype_size(t);
  if (slots_[slot].empty() || slots_[slot].bytes() < bytes)
    slots_[slot] = be_.alloc({static_cast<int64_t>(std::max<size_t>(bytes, 1))}, DType::u8);
  return Tensor(slots_[slot].data, s, t, slots_[slot].device);
}

void Generator::embed_tokens(Tensor out, const std::vector<int32_t>& ids, Tensor table) {
  Tensor t = scratch(kIds, {static_cast<int64_t>(ids.size())}, DType::i32);
  be_.upload(t, ids.data(), DType::i32);
  be_.embedding_forward(out, t, table);
}

GenerateResult Generator::generate(const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& o) {
  BT_CHECK(!prompts.empty(), "generate: no prompts");
  BT_CHECK(o.max_new_tokens >= 0, "--max-new-tokens must be >= 0");
  check_prompt_ids(prompts, model_.config().vocab_size);
  BT_CHECK(o.pad_id >= 0 && o.pad_id < model_.config().vocab_size, "generate: pad id ", o.pad_id,
           " is out of range for model.vocab_size ", model_.config().vocab_size);
  if (o.max_new_tokens == 0) {
    GenerateResult r;
    r.tokens.resize(prompts.size());
    r.hit_eos.assign(prompts.size(), false);
    return r;
  }
  return model_.config().is_block() ? generate_block(prompts, o) : generate_vanilla(prompts, o);
}

GenerateResult Generator::generate_block(const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& o) {
  const ModelConfig& m = model_.config();
  const int64_t B = static_cast<int64_t>(prompts.size()), LB = m.block_length, E = m.embedder_dim;
  const int64_t DB = m.block_decoder.dim, DT = m.token_decoder.dim, R = m.token_decoder.prefix_length;
  const int V = m.vocab_size;
  const DType act = be_.act_dtype();
  const int64_t G = ceil_div(o.max_new_tokens, LB);  // blocks to generate

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

  // Caches: the block decoder over NB + G blocks, the token decoder's local R + L_B positions.
  const StackDims bdd = bd_->dims(), tdd = td_->dims();
  auto cache_views = [&](const StackDims& d, int64_t Tmax, int base) {
    KVCache c;
    c.B = B;
    c.Tmax = Tmax;
    for (int l = 0; l < d.layers; ++l) {
      c.k.push_back(scratch(base + 2 * l, {B, d.H, Tmax, d.hd}, act));
      c.v.push_back(scratch(base + 2 * l + 1, {B, d.H, Tmax, d.hd}, act));
    }
    return c;
  };
  KVCache bc = cache_views(bdd, NB + G, kCacheBase);
  KVCache tc = cache_views(tdd, R + LB, kCacheBase + 2 * bdd.layers);

  const Tensor emb_table = model_.param("embedder.embeddings.weight");      // [V, E]
  const Tensor w_exp = model_.param("token_decoder.expansion_layer.weight");  // [R * D_T, D_B]
  const Tensor b_exp = model_.param("token_decoder.expansion_layer.bias");    // [R * D_T]
  const Tensor td_table = model_.param("token_decoder.gpt_neox.embed_in.weight");  // [V, D_T]
  const Tensor head = model_.param("token_decoder.embed_out.weight");           // [V, D_T]

  GenerateResult res;
  res.tokens.resize(B);
  res.hit_eos.assign(B, false);
  res.kv_cache_bytes = bc.bytes() + tc.bytes();
  Sampler sampler(o.sampling, static_cast<int>(B));
  h_logits_.resize(static_cast<size_t>(B) * V);
  Timer timer;

  Tensor start_t = scratch(kStart, {B}, DType::i32);
  be_.upload(start_t, start.data(), DType::i32);
  // Block ids [B, nblocks * L_B] of blocks [first, first + nblocks) of the grid.
  auto block_ids = [&](int64_t first, int64_t nblocks) {
    std::vector<int32_t> ids(B * nblocks * LB);
    for (int64_t b = 0; b < B; ++b)
      std::copy_n(grid.begin() + b * NB * LB + first * LB, nblocks * LB, ids.begin() + b * nblocks * LB);
    return ids;
  };
  // Prefill: blocks 0 .. NB-2, then the last prompt block alone so that its context embedding
  // comes out as a contiguous [B, 1, D_B].
  if (NB > 1) {
    Tensor x = scratch(kEmb, {B * (NB - 1) * LB, E}, act);  // [B, NB-1, D_B] as L_B lookups per block
    embed_tokens(x, block_ids(0, NB - 1), emb_table);
    bd_->forward_cached(x.view({B, NB - 1, DB}), B, NB - 1, 0, bc, start_t);
  }
  Tensor x = scratch(kEmb, {B * LB, E}, act);
  embed_tokens(x, block_ids(NB - 1, 1), emb_table);
  Tensor ctx = bd_->forward_cached(x.view({B, 1, DB}), B, 1, NB - 1, bc, start_t);  // [B, 1, D_B]

  std::vector<int32_t> cur(B), block(B * LB);
  int64_t produced = 0;
  bool first_logits = true;
  auto sample_from = [&](Tensor h) {  // h [B, 1, D_T] -> cur[b]
    Tensor lg = scratch(kLogits, {B, V}, act);
    be_.matmul_forward(lg, h.view({B, DT}), head, Tensor());
    be_.download(h_logits_.data(), DType::f32, lg);
    if (first_logits) {
      res.prefill_seconds = timer.seconds();
      timer.reset();
      first_logits = false;
    }
    for (int64_t b = 0; b < B; ++b) cur[b] = sampler.sample(h_logits_.data() + b * V, V, static_cast<int>(b));
  };
  auto record = [&]() {  // appends cur to the unfinished sequences; true when all are done
    bool all_done = true;
    for (int64_t b = 0; b < B; ++b) {
      if (!res.hit_eos[b]) {
        if (cur[b] == o.eos_id)
          res.hit_eos[b] = true;
        else
          res.tokens[b].push_back(cur[b]);
      }
      all_done = all_done && res.hit_eos[b];
    }
    ++produced;
    return all_done || produced >= o.max_new_tokens;
  };

  for (int64_t g = 0; g < G; ++g) {
    // Token decoder: prefill P_1 .. P_R (the local cache starts empty for every block).
    const Tensor ctx2 = ctx.view({B, DB});
    if (R > 1) {
      Tensor p_head = scratch(kPrefixHead, {B, (R - 1) * DT}, act);
      be_.matmul_forward(p_head, ctx2, w_exp.slice0(0, (R - 1) * DT), b_exp.slice0(0, (R - 1) * DT));
      td_->forward_cached(p_head.view({B, R - 1, DT}), B, R - 1, 0, tc, Tensor());
    }
    Tensor p_last = scratch(kPrefixLast, {B, DT}, act);
    be_.matmul_forward(p_last, ctx2, w_exp.slice0((R - 1) * DT, R * DT), b_exp.slice0((R - 1) * DT, R * DT));
    sample_from(td_->forward_cached(p_last.view({B, 1, DT}), B, 1, R - 1, tc, Tensor()));
    bool stop = false;
    for (int64_t j = 0; j < LB; ++j) {
      for (int64_t b = 0; b < B; ++b) block[b * LB + j] = cur[b];
      stop = record();
      if (stop || j + 1 == LB) break;
      Tensor e = scratch(kEmb, {B, DT}, act);
      embed_tokens(e, cur, td_table);
      sample_from(td_->forward_cached(e.view({B, 1, DT}), B, 1, R + j, tc, Tensor()));
    }
    if (stop || g + 1 == G) break;
    // The new block through the block decoder: one incremental step.
    Tensor xb = scratch(kEmb, {B * LB, E}, act);
    embed_tokens(xb, block, emb_table);
    ctx = bd_->forward_cached(xb.view({B, 1, DB}), B, 1, NB + g, bc, start_t);
  }
  be_.synchronize();
  res.decode_seconds = timer.seconds();
  res.steps = produced;
  return res;
}

GenerateResult Generator::generate_vanilla(const std::vector<std::vector<int32_t>>& prompts,
                                           const GenerateOptions& o) {
  const ModelConfig& m = model_.config();
  const int64_t B = static_cast<int64_t>(prompts.size()), D = m.decoder.dim;
  const int V = m.vocab_size;
  const DType act = be_.act_dtype();
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
  const StackDims dd = dec_->dims();
  const int64_t Tmax = P + o.max_new_tokens;
  KVCache c;
  c.B = B;
  c.Tmax = Tmax;
  for (int l = 0; l < dd.layers; ++l) {
    c.k.push_back(scratch(kCacheBase + 2 * l, {B, dd.H, Tmax, dd.hd}, act));
    c.v.push_back(scratch(kCacheBase + 2 * l + 1, {B, dd.H, Tmax, dd.hd}, act));
  }
  const Tensor table = model_.param("gpt_neox.embed_in.weight");  // [V, D]
  const Tensor head = model_.param("embed_out.weight");            // [V, D]

  GenerateResult res;
  res.tokens.resize(B);
  res.hit_eos.assign(B, false);
  res.kv_cache_bytes = c.bytes();
  Sampler sampler(o.sampling, static_cast<int>(B));
  h_logits_.resize(static_cast<size_t>(B) * V);
  Timer timer;

  Tensor start_t = scratch(kStart, {B}, DType::i32);
  be_.upload(start_t, start.data(), DType::i32);
  if (P > 1) {
    std::vector<int32_t> ids(B * (P - 1));
    for (int64_t b = 0; b < B; ++b) std::copy_n(grid.begin() + b * P, P - 1, ids.begin() + b * (P - 1));
    Tensor x = scratch(kEmb, {B * (P - 1), D}, act);
    embed_tokens(x, ids, table);
    dec_->forward_cached(x.view({B, P - 1, D}), B, P - 1, 0, c, start_t);
  }
  std::vector<int32_t> cur(B);
  for (int64_t b = 0; b < B; ++b) cur[b] = grid[b * P + P - 1];
  int64_t produced = 0;
  for (int64_t s = 0; s < o.max_new_tokens; ++s) {
    Tensor x = scratch(kEmb, {B, D}, act);
    embed_tokens(x, cur, table);
    Tensor h = dec_->forward_cached(x.view({B, 1, D}), B, 1, P - 1 + s, c, start_t);
    Tensor lg = scratch(kLogits, {B, V}, act);
    be_.matmul_forward(lg, h.view({B, D}), head, Tensor());
    be_.download(h_logits_.data(), DType::f32, lg);
    if (s == 0) {
      res.prefill_seconds = timer.seconds();
      timer.reset();
    }
    bool all_done = true;
    for (int64_t b = 0; b < B; ++b) {
      cur[b] = sampler.sample(h_logits_.data() + b * V, V, static_cast<int>(b));
      if (!res.hit_eos[b]) {
        if (cur[b] == o.eos_id)
          res.hit_eos[b] = true;
        else
          res.tokens[b].push_back(cur[b]);
      }
      all_done = all_done && res.hit_eos[b];
    }
    ++produced;
    if (all_done) break;
  }
  be_.synchronize();
  res.decode_seconds = timer.seconds();
  res.steps = produced;
  return res;
}

size_t kv_bytes_per_sequence(const ModelConfig& m, size_t elem_bytes, int64_t prompt, int64_t gen) {
  if (m.is_block()) {
    const int64_t LB = m.block_length;
    const int64_t blocks = std::max<int64_t>(1, ceil_div(prompt, LB)) + ceil_div(gen, LB);
    const int64_t local = m.token_decoder.prefix_length + LB;
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
  Sampler sampler(o.sampling, static_cast<int>(prompts.size()));
  std::vector<std::vector<int32_t>> out(prompts.size());
  std::vector<float> row(V);
  for (size_t b = 0; b < prompts.size(); ++b) {
    std::vector<int32_t> seq;
    if (m.is_block()) {
      const int64_t LB = m.block_length;
      const int64_t n = static_cast<int64_t>(prompts[b].size());
      seq.assign(std::max<int64_t>(1, ceil_div(n, LB)) * LB - n, o.pad_id);
    } else {
      BT_CHECK(!prompts[b].empty(), "prompt ", b + 1, " is empty");
    }
    seq.insert(seq.end(), prompts[b].begin(), prompts[b].end());
    for (int s = 0; s < o.max_new_tokens; ++s) {
      const int n = static_cast<int>(seq.size());
      BT_CHECK(n < L, "generate_naive: the sequence (", n, " tokens) no longer fits model.context_length ", L);
      std::vector<int32_t> window(seq);
      window.resize(L, o.pad_id);  // positions >= n do not influence the logits at n (causality)
      model.forward(window.data(), nullptr, 1);
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

// Model schedule: the Block Transformer and the vanilla model, forward and backward, over the
// ops of model/backend.h (one schedule, any backend).
#include "model/model.h"

#include <cmath>

namespace bt {

void LossStats::add(const LossStats& o) {
  loss_sum += o.loss_sum;
  targets += o.targets;
  if (pos_sum.size() < o.pos_sum.size()) {
    pos_sum.resize(o.pos_sum.size(), 0.0);
    pos_count.resize(o.pos_count.size(), 0);
  }
  for (size_t i = 0; i < o.pos_sum.size(); ++i) {
    pos_sum[i] += o.pos_sum[i];
    pos_count[i] += o.pos_count[i];
  }
}

Model::Model(const ModelConfig& cfg, Backend& be, int max_batch, int shard_parts)
    : cfg_(cfg), be_(be), table_(cfg), max_B_(max_batch) {
  BT_CHECK(max_batch >= 0, "model: micro batch must be >= 1 (or 0 for an inference-only model)");
  BT_CHECK(!cfg.is_block() || !cfg.summation() || cfg.bos_token_id >= 0,
           "model: decoding_strategy summation starts each token-decoder row with model.bos_token_id, which is -1 "
           "(the tokenizer's EOS) and was not resolved: no tokenizer or training data gave an EOS; set "
           "model.bos_token_id");
  const int64_t total = static_cast<int64_t>(table_.total());
  const int64_t padded =
      shard_parts > 1 ? static_cast<int64_t>(flat_chunk(table_.total(), shard_parts)) * shard_parts : total;
  params_full_ = be_.alloc({padded}, be_.act_dtype());
  be_.zero(params_full_);
  params_ = Tensor(params_full_.data, {total}, params_full_.dtype, params_full_.device);
  if (max_batch == 0) return;  // inference only (infer/): parameters, no gradients or activations
  grads_full_ = be_.alloc({padded}, be_.grad_dtype());
  be_.zero(grads_full_);
  grads_ = Tensor(grads_full_.data, {total}, grads_full_.dtype, grads_full_.device);
  const int64_t B = max_batch, L = cfg.context_length, V = cfg.vocab_size;
  const DType a = be_.act_dtype();
  tokens_ = be_.alloc({B, L}, DType::i32);
  int64_t rows = 0;
  if (cfg.is_block()) {
    const int64_t LB = cfg.block_length, N = cfg.num_blocks();
    BT_CHECK(N >= 2, "model.context_length (", L, ") must hold at least 2 blocks of model.block_length (", LB, ")");
    const int64_t DB = cfg.block_decoder.dim, DT = cfg.token_decoder.dim, R = cfg.token_decoder.prefix_length;
    const int64_t E = cfg.embedder_dim, S = row_length(), rows_td = B * (N - 1);
    rows = rows_td * LB;
    block_dec_ = std::make_unique<TransformerStack>(
        be_, StackDims::from(cfg.block_decoder, cfg),
        stack_views(table_, params_, "block_decoder.gpt_neox.", cfg.block_decoder.layers),
        stack_views(table_, grads_, "block_decoder.gpt_neox.", cfg.block_decoder.layers));
    token_dec_ = std::make_unique<TransformerStack>(
        be_, StackDims::from(cfg.token_decoder, cfg),
        stack_views(table_, params_, "token_decoder.gpt_neox.", cfg.token_decoder.layers),
        stack_views(table_, grads_, "token_decoder.gpt_neox.", cfg.token_decoder.layers));
    block_dec_->reserve(B, N);
    token_dec_->reserve(rows_td, S);
    keys_a_ = be_.alloc({B, N}, DType::i32);
    first_a_ = be_.alloc({B * N / 2}, DType::i32);  // forward_window packs up to B * N / 2 rows of 2 blocks
    keys_b_ = be_.alloc({rows_td, S}, DType::i32);
    first_b_ = be_.alloc({rows_td}, DType::i32);
    emb_b_ = be_.alloc({B, N, DB}, a);
    d_emb_b_ = be_.alloc({B, N, DB}, a);
    if (cfg.projection_layer()) {
      look_ = be_.alloc({B * L, E}, a);
      look_t_ = be_.alloc({B * N, E * LB}, a);
      d_look_ = be_.alloc({B * L, E}, a);
      d_look_t_ = be_.alloc({B * N, E * LB}, a);
    }
    prefix_ = be_.alloc({B, N, R * DT}, a);
    if (cfg.summation()) {
      td_ids_ = be_.alloc({rows_td * LB}, DType::i32);
    } else {
      tok_emb_ = be_.alloc({B, L, DT}, a);
      d_tok_emb_ = be_.alloc({B, L, DT}, a);
    }
    td_in_ = be_.alloc({rows_td, S, DT}, a);
    td_sel_ = be_.alloc({rows, DT}, a);
    d_sel_ = be_.alloc({rows, DT}, a);
    d_td_out_ = be_.alloc({rows_td, S, DT}, a);
    d_td_in_ = be_.alloc({rows_td, S, DT}, a);
    d_prefix_ = be_.alloc({B, N, R * DT}, a);
    d_ctx_ = be_.alloc({B, N, DB}, a);
  } else {
    const int64_t D = cfg.decoder.dim;
    rows = B * L;
    dec_ = std::make_unique<TransformerStack>(be_, StackDims::from(cfg.decoder, cfg),
                                              stack_views(table_, params_, "gpt_neox.", cfg.decoder.layers),
                                              stack_views(table_, grads_, "gpt_neox.", cfg.decoder.layers));
    dec_->reserve(B, L);
    keys_a_ = be_.alloc({B, L}, DType::i32);
    first_a_ = be_.alloc({std::max<int64_t>(B, B * L / 2)}, DType::i32);  // forward_window: rows of >= 2 tokens
    emb_ = be_.alloc({B, L, D}, a);
    d_emb_b_ = be_.alloc({B, L, D}, a);  // gradient of the token embeddings
    d_sel_ = be_.alloc({rows, D}, a);    // gradient of the decoder output
  }
  targets_ = be_.alloc({rows}, DType::i32);
  logits_ = be_.alloc({rows, V}, a);
  dlogits_ = be_.alloc({rows, V}, a);
  losses_ = be_.alloc({rows}, be_.grad_dtype());
}

void Model::init(uint64_t seed) {
  std::vector<double> w = init_params(table_, seed);
  be_.upload(params_, w.data(), DType::f64);
}

void Model::set_params(const void* host, DType t) { be_.upload(params_, host, t); }
void Model::get_params(void* host, DType t) { be_.download(host, t, params_); }
void Model::zero_grads() {
  if (!grads_.empty()) be_.zero(grads_);
}

Tensor Model::logits_rows(int B) const {
  const int64_t T = last_T_ ? last_T_ : cfg_.context_length;
  const int64_t rows = cfg_.is_block() ? int64_t(B) * (T / cfg_.block_length - 1) * cfg_.block_length : int64_t(B) * T;
  return Tensor(logits_.data, {rows, cfg_.vocab_size}, logits_.dtype, logits_.device);
}

int64_t Model::logit_row(int b, int p) const {
  const int T = last_T_ ? last_T_ : cfg_.context_length;
  if (cfg_.is_block()) {
    const int LB = cfg_.block_length, N = T / LB;
    BT_CHECK(p >= LB && p < T, "block model: position ", p, " is not a target");
    return (int64_t(b) * (N - 1) + (p / LB - 1)) * LB + p % LB;
  }
  BT_CHECK(p >= 1 && p < T, "vanilla model: position ", p, " is not a target");
  return int64_t(b) * T + (p - 1);
}

void Model::build_targets(const int32_t* tokens, const uint8_t* mask, int B) {
  const int L = last_T_;
  if (cfg_.is_block()) {
    const int LB = cfg_.block_length, N = L / LB;
    h_targets_.assign(size_t(B) * (N - 1) * LB, -1);
    for (int b = 0; b < B; ++b)
      for (int p = LB; p < L; ++p) {
        const size_t src = size_t(b) * L + p;
        if (!mask || mask[src]) h_targets_[logit_row(b, p)] = tokens[src];
      }
  } else {
    h_targets_.assign(size_t(B) * L, -1);
    for (int b = 0; b < B; ++b)
      for (int p = 1; p < L; ++p) {
        const size_t src = size_t(b) * L + p;
        if (!mask || mask[src]) h_targets_[logit_row(b, p)] = tokens[src];
      }
  }
}

int64_t Model::row_start() const { return cfg_.summation() ? 1 : cfg_.token_decoder.prefix_length; }
int64_t Model::row_length() const { return row_start() + cfg_.block_length - 1; }

namespace {
// The first elements of a buffer as a tensor of shape s.
Tensor head(Tensor t, Shape s) {
  BT_CHECK(s.numel() <= t.numel(), "model: a buffer of ", t.numel(), " elements viewed as ", s.str());
  return Tensor(t.data, s, t.dtype, t.device);
}
}  // namespace

Tensor Model::embed_blocks(Tensor ids, int64_t n, Tensor look, Tensor look_t, Tensor out) {
  const int64_t LB = cfg_.block_length, E = cfg_.embedder_dim, DB = cfg_.block_decoder.dim;
  be_.embedding_forward(head(look, {n * LB, E}), ids, param("embedder.embeddings.weight"));
  if (!cfg_.projection_layer()) return head(look, {n, DB});  // concat: the L_B lookups side by side
  be_.transpose_forward(head(look_t, {n, E, LB}), head(look, {n, LB, E}));
  be_.matmul_forward(head(out, {n, DB}), head(look_t, {n, E * LB}), param("embedder.projection_layer.weight"),
                     param("embedder.projection_layer.bias"));
  return head(out, {n, DB});
}

AttnMask Model::upload_mask(const std::vector<int32_t>& keys, int64_t rows, int64_t T, Tensor keys_buf,
                            Tensor first_buf) {
  BT_CHECK(size_t(rows * T) <= keys_buf.numel() && size_t(rows) <= first_buf.numel(), "model: a key mask of ", rows,
           " x ", T, " does not fit its buffers (", keys_buf.numel(), ", ", first_buf.numel(), ")");
  h_first_.assign(rows, int32_t(T));
  bool hidden = false;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < T; ++t) {
      if (!keys[r * T + t]) {
        hidden = true;
      } else if (h_first_[r] == T) {
        h_first_[r] = int32_t(t);
      }
    }
  if (!hidden) return {};  // every key visible: the unmasked kernels
  AttnMask m{Tensor(keys_buf.data, {rows, T}, DType::i32, keys_buf.device),
             Tensor(first_buf.data, {rows}, DType::i32, first_buf.device)};
  be_.upload(m.keys, keys.data(), DType::i32);
  be_.upload(m.first, h_first_.data(), DType::i32);
  return m;
}

LossStats Model::forward(const int32_t* tokens, const uint8_t* mask, int B, bool with_grad, double dscale) {
  BT_CHECK(max_B_ > 0, "model: built for inference only (max_batch 0): forward() needs a micro batch");
  BT_CHECK(B >= 1 && B <= max_B_, "model: batch of ", B, " sequences exceeds the micro batch ", max_B_,
           " the model was sized for");
  return forward_impl(tokens, mask, B, cfg_.context_length, with_grad, dscale);
}

LossStats Model::forward_window(const int32_t* tokens, const uint8_t* mask, int B, int T) {
  BT_CHECK(max_B_ > 0, "model: built for inference only (max_batch 0): forward() needs a micro batch");
  const int LB = cfg_.is_block() ? cfg_.block_length : 1;
  BT_CHECK(T >= 2 * LB && T % LB == 0 && T <= cfg_.context_length, "model: windows of ", T,
           " tokens (need a multiple of ", LB, " from ", 2 * LB, " to model.context_length ", cfg_.context_length, ")");
  BT_CHECK(B >= 1 && int64_t(B) * T <= int64_t(max_B_) * cfg_.context_length, "model: ", B, " windows of ", T,
           " tokens exceed the ", max_B_, " x ", cfg_.context_length, " tokens the model was sized for");
  return forward_impl(tokens, mask, B, T, false, 1.0);
}

LossStats Model::forward_impl(const int32_t* tokens, const uint8_t* mask, int B, int T, bool with_grad,
                              double dscale) {
  const int64_t L = T, V = cfg_.vocab_size;
  for (int64_t i = 0; i < int64_t(B) * L; ++i)
    BT_CHECK(tokens[i] >= 0 && tokens[i] < V, "token id ", tokens[i], " at position ", i % L, " of sequence ",
             i / L, " is out of range for model.vocab_size ", V, " (was the data prepared with another tokenizer?)");
  last_B_ = B;
  last_T_ = T;
  have_grad_ = with_grad;
  Tensor tok(tokens_.data, {int64_t(B) * L}, DType::i32, tokens_.device);
  be_.upload(tok, tokens, DType::i32);
  build_targets(tokens, mask, B);
  Tensor tgt(targets_.data, {int64_t(h_targets_.size())}, DType::i32, targets_.device);
  be_.upload(tgt, h_targets_.data(), DType::i32);

  Tensor sel;  // [rows, D] the hidden states that the head turns into logits
  Tensor head;
  if (cfg_.is_block()) {
    const int64_t LB = cfg_.block_length, N = L / LB, DB = cfg_.block_decoder.dim;
    const int64_t DT = cfg_.token_decoder.dim, R = cfg_.token_decoder.prefix_length;
    const int64_t P = row_start(), S = row_length();  // t_1 sits at position P of a row of S
    const int64_t rows_td = int64_t(B) * (N - 1);
    // Pads hidden from attention (the official attention_mask): a block is hidden from the block
    // decoder when all its tokens are pads; in a token-decoder row the prefix is always visible
    // and each input token t_1 .. t_{L_B-1} is hidden when it is a pad.
    mask_a_ = mask_b_ = AttnMask{};
    if (mask) {
      h_keys_.assign(size_t(B) * N, 0);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < N; ++i)
          for (int64_t j = 0; j < LB; ++j) h_keys_[b * N + i] |= mask[b * L + i * LB + j] ? 1 : 0;
      mask_a_ = upload_mask(h_keys_, B, N, keys_a_, first_a_);
      h_keys_.assign(size_t(rows_td) * S, 1);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i + 1 < N; ++i)
          for (int64_t j = 0; j + 1 < LB; ++j)
            h_keys_[(b * (N - 1) + i) * S + P + j] = mask[b * L + (i + 1) * LB + j] ? 1 : 0;
      mask_b_ = upload_mask(h_keys_, rows_td, S, keys_b_, first_b_);
    }
    // 1. lookup embedder: L_B token vectors of width E per block, concatenated (D_B = L_B E) or
    //    through the projection_layer
    Tensor emb_b = embed_blocks(tok, int64_t(B) * N, cfg_.projection_layer() ? look_ : emb_b_, look_t_, emb_b_);
    // 2. block decoder over N block embeddings
    ctx_ = block_dec_->forward(emb_b.view({B, N, DB}), B, N, mask_a_);  // [B, N, D_B]
    // 3. expansion of every context embedding into R vectors (the last block's is unused)
    Tensor prefix(prefix_.data, {int64_t(B) * N, R * DT}, prefix_.dtype, prefix_.device);
    be_.matmul_forward(prefix, ctx_.view({int64_t(B) * N, DB}), param("token_decoder.expansion_layer.weight"),
                       param("token_decoder.expansion_layer.bias"));
    // 4. token decoder rows for target blocks 1..N-1
    Tensor td_in(td_in_.data, {rows_td, S, DT}, td_in_.dtype, td_in_.device);
    if (!cfg_.summation()) {
      // prefix: [P_1..P_R, e(t_1)..e(t_{L_B-1})]
      Tensor tok_emb(tok_emb_.data, {int64_t(B) * L, DT}, tok_emb_.dtype, tok_emb_.device);
      be_.embedding_forward(tok_emb, tok, param("token_decoder.gpt_neox.embed_in.weight"));
      be_.td_assemble_forward(td_in, prefix.view({B, N, R * DT}), tok_emb.view({B, L, DT}), int(R), int(LB));
    } else {
      // summation: [e(BOS) + E_1, e(t_1) + E_2, .., e(t_{L_B-1}) + E_{L_B}], E = the L_B expanded vectors
      h_td_ids_.resize(size_t(rows_td) * LB);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i + 1 < N; ++i) {
          int32_t* row = h_td_ids_.data() + (b * (N - 1) + i) * LB;
          row[0] = cfg_.bos_token_id;
          for (int64_t j = 0; j + 1 < LB; ++j) row[j + 1] = tokens[b * L + (i + 1) * LB + j];
        }
      Tensor ids(td_ids_.data, {rows_td * LB}, DType::i32, td_ids_.device);
      be_.upload(ids, h_td_ids_.data(), DType::i32);
      be_.embedding_forward(td_in.view({rows_td * LB, DT}), ids, param("token_decoder.gpt_neox.embed_in.weight"));
      // the rows of sequence b are contiguous, and so are its blocks 0..N-2 in prefix: one add each
      for (int64_t b = 0; b < B; ++b)
        be_.accumulate(td_in.slice0(b * (N - 1), (b + 1) * (N - 1)), prefix.slice0(b * N, b * N + N - 1).view(
                                                                          {N - 1, S, DT}));
    }
    td_out_ = token_dec_->forward(td_in, rows_td, S, mask_b_);
    sel = Tensor(td_sel_.data, {rows_td * LB, DT}, td_sel_.dtype, td_sel_.device);
    be_.td_select_forward(sel, td_out_, int(P), int(LB));
    head = param("token_decoder.embed_out.weight");
  } else {
    const int64_t D = cfg_.decoder.dim;
    mask_a_ = AttnMask{};
    if (mask) {  // pads hidden from attention, as HF GPT-NeoX does with attention_mask = 0
      h_keys_.assign(mask, mask + size_t(B) * L);
      mask_a_ = upload_mask(h_keys_, B, L, keys_a_, first_a_);
    }
    Tensor emb(emb_.data, {int64_t(B) * L, D}, emb_.dtype, emb_.device);
    be_.embedding_forward(emb, tok, param("gpt_neox.embed_in.weight"));
    dec_out_ = dec_->forward(emb.view({B, L, D}), B, L, mask_a_);
    sel = dec_out_.view({int64_t(B) * L, D});
    head = param("embed_out.weight");
  }
  Tensor logits = logits_rows(B);
  be_.matmul_forward(logits, sel, head, Tensor());
  Tensor losses(losses_.data, {logits.dim(0)}, losses_.dtype, losses_.device);
  Tensor dlogits = with_grad ? Tensor(dlogits_.data, logits.shape, dlogits_.dtype, dlogits_.device) : Tensor();
  be_.cross_entropy(losses, dlogits, logits, tgt, dscale);

  h_losses_.resize(losses.numel());
  be_.download(h_losses_.data(), DType::f64, losses);
  LossStats st;
  const int P = cfg_.is_block() ? cfg_.block_length : 1;
  st.pos_sum.assign(P, 0.0);
  st.pos_count.assign(P, 0);
  for (size_t r = 0; r < h_losses_.size(); ++r) {
    if (h_targets_[r] < 0) continue;
    st.loss_sum += h_losses_[r];
    st.targets += 1;
    st.pos_sum[r % P] += h_losses_[r];
    st.pos_count[r % P] += 1;
  }
  return st;
}

void Model::backward(const std::function<void(const Tensor&)>& on_ready) {
  BT_CHECK(have_grad_, "model: backward() needs a forward with gradients first");
  have_grad_ = false;
  const int B = last_B_;
  const int64_t L = last_T_;
  Tensor tok(tokens_.data, {int64_t(B) * L}, DType::i32, tokens_.device);
  Tensor logits = logits_rows(B);
  Tensor dlogits(dlogits_.data, logits.shape, dlogits_.dtype, dlogits_.device);
  if (cfg_.is_block()) {
    const int64_t LB = cfg_.block_length, N = L / LB, DB = cfg_.block_decoder.dim;
    const int64_t DT = cfg_.token_decoder.dim, R = cfg_.token_decoder.prefix_length;
    const int64_t E = cfg_.embedder_dim, P = row_start(), S = row_length();
    const int64_t rows_td = int64_t(B) * (N - 1);
    Tensor sel(td_sel_.data, {rows_td * LB, DT}, td_sel_.dtype, td_sel_.device);
    Tensor d_sel(d_sel_.data, sel.shape, d_sel_.dtype, d_sel_.device);
    be_.zero(d_sel);
    be_.matmul_backward(d_sel, grad("token_decoder.embed_out.weight"), Tensor(), dlogits, sel,
                        param("token_decoder.embed_out.weight"));
    if (on_ready) on_ready(grad("token_decoder.embed_out.weight"));
    Tensor d_td_out(d_td_out_.data, {rows_td, S, DT}, d_td_out_.dtype, d_td_out_.device);
    be_.zero(d_td_out);
    be_.td_select_backward(d_td_out, d_sel, int(P), int(LB));
    Tensor d_td_in(d_td_in_.data, {rows_td, S, DT}, d_td_in_.dtype, d_td_in_.device);
    be_.zero(d_td_in);
    token_dec_->backward(d_td_out, d_td_in, on_ready);
    Tensor d_prefix(d_prefix_.data, {int64_t(B) * N, R * DT}, d_prefix_.dtype, d_prefix_.device);
    be_.zero(d_prefix);
    if (!cfg_.summation()) {
      Tensor d_tok(d_tok_emb_.data, {B, L, DT}, d_tok_emb_.dtype, d_tok_emb_.device);
      be_.zero(d_tok);
      be_.td_assemble_backward(d_prefix.view({B, N, R * DT}), d_tok, d_td_in, int(R), int(LB));
      be_.embedding_backward(grad("token_decoder.gpt_neox.embed_in.weight"), d_tok.view({int64_t(B) * L, DT}), tok);
    } else {
      Tensor ids(td_ids_.data, {rows_td * LB}, DType::i32, td_ids_.device);
      be_.embedding_backward(grad("token_decoder.gpt_neox.embed_in.weight"), d_td_in.view({rows_td * LB, DT}), ids);
      for (int64_t b = 0; b < B; ++b)
        be_.accumulate(d_prefix.slice0(b * N, b * N + N - 1),
                       d_td_in.slice0(b * (N - 1), (b + 1) * (N - 1)).view({N - 1, R * DT}));
    }
    if (on_ready) on_ready(grad("token_decoder.gpt_neox.embed_in.weight"));
    Tensor d_ctx(d_ctx_.data, {int64_t(B) * N, DB}, d_ctx_.dtype, d_ctx_.device);
    be_.zero(d_ctx);
    be_.matmul_backward(d_ctx, grad("token_decoder.expansion_layer.weight"),
                        grad("token_decoder.expansion_layer.bias"), d_prefix, ctx_.view({int64_t(B) * N, DB}),
                        param("token_decoder.expansion_layer.weight"));
    Tensor d_emb(d_emb_b_.data, {B, N, DB}, d_emb_b_.dtype, d_emb_b_.device);
    be_.zero(d_emb);
    if (on_ready) on_ready(grad("token_decoder.expansion_layer.weight"));
    block_dec_->backward(d_ctx.view({B, N, DB}), d_emb, on_ready);
    if (!cfg_.projection_layer()) {
      be_.embedding_backward(grad("embedder.embeddings.weight"), d_emb.view({int64_t(B) * L, E}), tok);
    } else {
      const int64_t n = int64_t(B) * N;
      Tensor look_t(look_t_.data, {n, E * LB}, look_t_.dtype, look_t_.device);
      Tensor d_look_t(d_look_t_.data, {n, E * LB}, d_look_t_.dtype, d_look_t_.device);
      Tensor d_look(d_look_.data, {n, LB, E}, d_look_.dtype, d_look_.device);
      be_.matmul_backward(d_look_t, grad("embedder.projection_layer.weight"), grad("embedder.projection_layer.bias"),
                          d_emb.view({n, DB}), look_t, param("embedder.projection_layer.weight"), Grad::overwrite);
      if (on_ready) on_ready(grad("embedder.projection_layer.weight"));
      be_.zero(d_look);
      be_.transpose_backward(d_look, d_look_t.view({n, E, LB}));
      be_.embedding_backward(grad("embedder.embeddings.weight"), d_look.view({n * LB, E}), tok);
    }
    if (on_ready) on_ready(grad("embedder.embeddings.weight"));
  } else {
    const int64_t D = cfg_.decoder.dim;
    Tensor out = dec_out_.view({int64_t(B) * L, D});
    Tensor d_out(d_sel_.data, {int64_t(B) * L, D}, d_sel_.dtype, d_sel_.device);
    be_.zero(d_out);
    be_.matmul_backward(d_out, grad("embed_out.weight"), Tensor(), dlogits, out, param("embed_out.weight"));
    if (on_ready) on_ready(grad("embed_out.weight"));
    Tensor d_emb(d_emb_b_.data, {B, L, D}, d_emb_b_.dtype, d_emb_b_.device);
    be_.zero(d_emb);
    dec_->backward(d_out.view({B, L, D}), d_emb, on_ready);
    be_.embedding_backward(grad("gpt_neox.embed_in.weight"), d_emb.view({int64_t(B) * L, D}), tok);
    if (on_ready) on_ready(grad("gpt_neox.embed_in.weight"));
  }
}

double Model::flops_per_token() const {
  // Forward FLOPs of one window, x3 for forward + backward, per token of the window.
  auto stack = [&](const DecoderConfig& d, double positions, double seq) {
    const double D = d.dim, F = d.ffn_dim;
    const double mm = d.layers * (4.0 * D * D + 2.0 * D * F);  // QKV + dense + MLP weights
    const double attn = d.layers * 4.0 * seq * D;              // QK^T and AV per position
    return 2.0 * mm * positions + attn * positions;
  };
  const double L = cfg_.context_length, V = cfg_.vocab_size;
  double fwd = 0;
  if (cfg_.is_block()) {
    const double LB = cfg_.block_length, N = cfg_.num_blocks();
    const double DB = cfg_.block_decoder.dim, DT = cfg_.token_decoder.dim, R = cfg_.token_decoder.prefix_length;
    const double S = double(row_length()), E = cfg_.embedder_dim;
    if (cfg_.projection_layer()) fwd += 2.0 * E * LB * DB * N;  // embedder projection
    fwd += stack(cfg_.block_decoder, N, N);
    fwd += 2.0 * DB * R * DT * N;                   // expansion
    fwd += stack(cfg_.token_decoder, (N - 1) * S, S);
    fwd += 2.0 * V * DT * (N - 1) * LB;             // head
  } else {
    fwd += stack(cfg_.decoder, L, L);
    fwd += 2.0 * V * cfg_.decoder.dim * L;
  }
  return 3.0 * fwd / L;
}

}  // namespace bt

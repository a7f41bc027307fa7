// The block model's decoding strategy (docs/design.md §2.4, docs/inference.md "The decoding
// algorithm"): a prompt is prefilled block by block into the block decoder's cache; a round is
// one block: the block-decoder step on the finished block (for a newly armed row: its last prompt
// block) at the row's block position, the prefix expansion of its context embedding, the token
// decoder's prefill of the prefix in its local cache (positions restart at 0 every block) and the
// first token; then L_B - 1 token-decoder steps. With `decoding_strategy: summation` the expansion
// gives E_1 .. E_{L_B}: e(BOS) + E_1 at position 0, then e(t_j) + E_{j+1} at position j.
#include <algorithm>

#include "core/error.h"
#include "infer/decode_buffers.h"

namespace bt {

namespace {

enum StepKind : int { kBlockStep = 1, kTokenStep = 2 };

// The first numel(s) elements of t as shape s.
Tensor head_of(Tensor t, Shape s) {
  BT_CHECK(s.numel() <= t.numel(), "decode session: ", s.str(), " does not fit its buffer ", t.shape.str());
  return Tensor(t.data, s, t.dtype, t.device);
}

class BlockSession final : public DecodeSession {
 public:
  explicit BlockSession(Model& model) : DecodeSession(model, model.config().block_length) {
    const ModelConfig& m = model.config();
    const ParamTable& tb = model.table();
    bd_ = std::make_unique<TransformerStack>(
        be_, StackDims::from(m.block_decoder, m),
        stack_views(tb, model.params(), "block_decoder.gpt_neox.", m.block_decoder.layers), StackTensors{});
    td_ = std::make_unique<TransformerStack>(
        be_, StackDims::from(m.token_decoder, m),
        stack_views(tb, model.params(), "token_decoder.gpt_neox.", m.token_decoder.layers), StackTensors{});
    LB_ = m.block_length;
    DB_ = m.block_decoder.dim;
    DT_ = m.token_decoder.dim;
    Rp_ = m.token_decoder.prefix_length;
    S0_ = model.row_start();
    summation_ = m.summation();
    w_exp_ = model.param("token_decoder.expansion_layer.weight");         // [R_p * D_T, D_B]
    b_exp_ = model.param("token_decoder.expansion_layer.bias");           // [R_p * D_T]
    td_table_ = model.param("token_decoder.gpt_neox.embed_in.weight");    // [V, D_T]
    head_ = model.param("token_decoder.embed_out.weight");                // [V, D_T]
  }

  void prefill(int64_t r0, int64_t nr, int64_t first, int64_t n, const int32_t* ids) override {
    BT_CHECK(nr * n <= shape_.prefill_units && r0 >= 0 && r0 + nr <= shape_.rows && first >= 0 && first + n < T1_,
             "decode session: prefill of ", nr, " rows x blocks ", first, "..", first + n - 1, " does not fit (",
             shape_.prefill_units, " blocks per call, ", shape_.rows, " rows, ", T1_, " positions)");
    const Tensor t = head_of(prompt_ids_, {nr * n * LB_});
    be_.upload(t, ids, DType::i32);
    const Tensor x = embed(t, nr * n, prompt_emb_).view({nr, n, DB_});
    KVCache c = rows_of(c1_, r0, nr);
    bd_->forward_cached(x, nr, n, first, c, start_.slice0(r0, r0 + nr));
  }

  // The finished block (hist) -> one block-decoder step at each row's block position -> the
  // next block's first token.
  void first_step(int64_t M) override {
    run(kBlockStep, M, 0, [&] {
      Tensor ctx;
      phase(&DecodePhases::block_decoder, [&] {
        const Tensor x = embed(hist_.slice0(0, M).view({M * LB_}), M, block_emb_);
        KVCache c1 = rows_of(c1_, 0, M);
        ctx = bd_->forward_cached(x.view({M, 1, DB_}), M, 1, 0, c1, start_.slice0(0, M), counter(kCtrBdPos, M));
        be_.add_i32(ctr_, {0, -static_cast<int32_t>(LB_ - 1), 1});  // token decoder back to S0; next block
      });
      token_prefix(M, ctx.view({M, DB_}));
    });
  }

  // The newest token at the token decoder's position -> token j of the block. summation: t_j
  // enters at position j with E_{j+1}, whose buffer the host names, so each j is its own step.
  void next_step(int64_t M, int64_t j) override {
    BT_CHECK(j >= 1 && j < LB_, "decode session: token ", j, " of a block of ", LB_);
    run(kTokenStep, M, summation_ ? j : 0, [&] {
      Tensor h;
      phase(&DecodePhases::token_decoder, [&] {
        Tensor x = head_of(tok_emb_, {M, 1, DT_});
        if (summation_) x = sum_input(ids_.slice0(0, M), j, M);
        else be_.embedding_forward(x.view({M, DT_}), ids_.slice0(0, M), td_table_);
        KVCache c2 = rows_of(c2_, 0, M);
        h = td_->forward_cached(x, M, 1, 0, c2, Tensor(), counter(kCtrTdPos, M));
      });
      head_and_sample(h, head_, M, 1, 1, 0);
    });
  }

 protected:
  void bind(const SessionBuffers& b, const std::function<Tensor(int)>& get) override {
    prompt_ids_ = get(kPromptIds);
    prompt_emb_ = get(kPromptEmb);
    block_emb_ = get(kBlockEmb);
    tok_emb_ = get(kTokEmb);
    p_head_ = get(kPrefixHead);
    p_last_ = get(kPrefixLast);
    look_t_ = get(kLookT);
    blocks_ = get(kBlocks);
    bos_ = get(kBos);
    const ModelConfig& m = model_.config();
    c1_ = cache(bd_->dims(), b.T1, kCacheBase, get);
    c2_ = cache(td_->dims(), b.T2, kCacheBase + 2 * bd_->dims().layers, get);
    reserve(*bd_, b.rows1);
    reserve(*td_, b.rows2);
    if (summation_) {
      const std::vector<int32_t> bos(shape_.rows, m.bos_token_id);
      be_.upload(bos_, bos.data(), DType::i32);
    }
  }
  // At a block boundary every row's token decoder stands at S0 + L_B - 1 (the block-decoder step
  // moves it back to S0).
  void arm_counters(const RowArm& a, int32_t& td_pos, int32_t& bd_pos) const override {
    td_pos = static_cast<int32_t>(S0_ + LB_ - 1);
    bd_pos = a.position;
  }
  void park_counters(int32_t& td_pos, int32_t& bd_pos) const override {
    td_pos = static_cast<int32_t>(S0_ + LB_ - 1);
    bd_pos = static_cast<int32_t>(T1_);
  }

 private:
  // The model's embedder (concat or projection_layer) on n blocks of ids already on the device
  // -> [n, D_B]; look holds the lookups.
  Tensor embed(Tensor ids, int64_t n, Tensor look) { return model_.embed_blocks(ids, n, look, look_t_, blocks_); }

  // summation: the token decoder's input e(x) + E_{j+1} at position j (x = BOS, t_1 .. t_{L_B-1}).
  Tensor sum_input(Tensor x_ids, int64_t j, int64_t M) {
    const Tensor e = head_of(tok_emb_, {M, DT_}), in = head_of(p_last_, {M, DT_});
    be_.embedding_forward(e, x_ids, td_table_);
    be_.add_forward(in, e, p_head_.slice0(j * M, (j + 1) * M), Tensor());
    return in.view({M, 1, DT_});
  }

  // ctx [M, D_B] -> P_1 .. P_R through the token decoder (its local cache starts empty for every
  // block) -> the block's first token (column 0 of hist). summation: ctx -> E_1 .. E_{L_B}, then
  // e(BOS) + E_1 at position 0.
  void token_prefix(int64_t M, Tensor ctx) {
    Tensor h;
    KVCache c2 = rows_of(c2_, 0, M);
    phase(&DecodePhases::token_decoder, [&] {
      if (summation_) {
        for (int64_t j = 0; j < LB_; ++j)
          be_.matmul_forward(p_head_.slice0(j * M, (j + 1) * M), ctx, w_exp_.slice0(j * DT_, (j + 1) * DT_),
                             b_exp_.slice0(j * DT_, (j + 1) * DT_));
        h = td_->forward_cached(sum_input(bos_.slice0(0, M), 0, M), M, 1, 0, c2, Tensor());
        return;
      }
      if (Rp_ > 1) {
        const Tensor ph = head_of(p_head_, {M, (Rp_ - 1) * DT_});
        be_.matmul_forward(ph, ctx, w_exp_.slice0(0, (Rp_ - 1) * DT_), b_exp_.slice0(0, (Rp_ - 1) * DT_));
        td_->forward_cached(ph.view({M, Rp_ - 1, DT_}), M, Rp_ - 1, 0, c2, Tensor());
      }
      const Tensor pl = head_of(p_last_, {M, DT_});
      be_.matmul_forward(pl, ctx, w_exp_.slice0((Rp_ - 1) * DT_, Rp_ * DT_), b_exp_.slice0((Rp_ - 1) * DT_, Rp_ * DT_));
      h = td_->forward_cached(pl.view({M, 1, DT_}), M, 1, Rp_ - 1, c2, Tensor());
    });
    head_and_sample(h, head_, M, 1, 0, 0);
  }

  std::unique_ptr<TransformerStack> bd_, td_;
  int64_t LB_ = 0, DB_ = 0, DT_ = 0, Rp_ = 0, S0_ = 0;
  bool summation_ = false;
  Tensor w_exp_, b_exp_, td_table_, head_;
  // Buffers (decode_buffers.h).
  Tensor prompt_ids_, prompt_emb_, block_emb_, tok_emb_, p_head_, p_last_, look_t_, blocks_, bos_;
};

}  // namespace

void block_buffers(const ModelConfig& m, DType act, const SessionShape& s, SessionBuffers& b) {
  const int64_t LB = m.block_length, E = m.embedder_dim, DT = m.token_decoder.dim, DB = m.block_decoder.dim;
  const int64_t Rp = m.token_decoder.prefix_length, R = s.rows, units = s.prefill_units;
  b.add(kHist, {R, LB}, DType::i32);
  b.add(kPromptIds, {units * LB}, DType::i32);
  b.add(kPromptEmb, {units * LB, E}, act);
  b.add(kBlockEmb, {R * LB, E}, act);
  b.add(kTokEmb, {R, DT}, act);
  if (m.projection_layer()) {  // the prefill's blocks or the R blocks of a block-decoder step
    b.add(kLookT, {std::max(units, R), E * LB}, act);
    b.add(kBlocks, {std::max(units, R), DB}, act);
  }
  if (m.summation()) {
    b.add(kPrefixHead, {Rp * R, DT}, act);  // R_p = L_B
    b.add(kBos, {R}, DType::i32);
  } else if (Rp > 1) {
    b.add(kPrefixHead, {R, (Rp - 1) * DT}, act);
  }
  b.add(kPrefixLast, {R, DT}, act);
  b.T1 = s.positions;
  b.T2 = m.summation() ? LB : Rp + LB;
  b.caches(m.block_decoder, R, b.T1, kCacheBase, act);
  b.caches(m.token_decoder, R, b.T2, kCacheBase + 2 * m.block_decoder.layers, act);
  b.rows1 = std::max(units, R);
  b.rows2 = m.summation() ? R : R * std::max<int64_t>(1, Rp - 1);
}

std::unique_ptr<DecodeSession> make_block_session(Model& model) { return std::make_unique<BlockSession>(model); }

}  // namespace bt

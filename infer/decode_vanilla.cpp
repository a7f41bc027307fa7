// The vanilla model's decoding strategy: a prompt's tokens but the last are prefilled into the
// decoder's cache; a round is one token: the newest token at the row's position -> the next.
#include <algorithm>

#include "core/error.h"
#include "infer/decode_buffers.h"

namespace bt {

namespace {

enum StepKind : int { kVanillaStep = 4 };

class VanillaSession final : public DecodeSession {
 public:
  explicit VanillaSession(Model& model) : DecodeSession(model, 1) {
    const ModelConfig& m = model.config();
    dec_ = std::make_unique<TransformerStack>(be_, StackDims::from(m.decoder, m),
                                              stack_views(model.table(), model.params(), "gpt_neox.", m.decoder.layers),
                                              StackTensors{});
    D_ = m.decoder.dim;
    table_ = model.param("gpt_neox.embed_in.weight");  // [V, D]
    head_ = model.param("embed_out.weight");           // [V, D]
  }

  void prefill(int64_t r0, int64_t nr, int64_t first, int64_t n, const int32_t* ids) override {
    BT_CHECK(nr * n <= shape_.prefill_units && r0 >= 0 && r0 + nr <= shape_.rows && first >= 0 && first + n < T1_,
             "decode session: prefill of ", nr, " rows x positions ", first, "..", first + n - 1, " does not fit (",
             shape_.prefill_units, " positions per call, ", shape_.rows, " rows, ", T1_, " positions)");
    const Tensor t(prompt_ids_.data, {nr * n}, DType::i32, prompt_ids_.device);
    const Tensor x(prompt_emb_.data, {nr * n, D_}, prompt_emb_.dtype, prompt_emb_.device);
    be_.upload(t, ids, DType::i32);
    be_.embedding_forward(x, t, table_);
    KVCache c = rows_of(c1_, r0, nr);
    dec_->forward_cached(x.view({nr, n, D_}), nr, n, first, c, start_.slice0(r0, r0 + nr));
  }

  // The newest token at each row's position -> the next token.
  void first_step(int64_t M) override {
    run(kVanillaStep, M, 0, [&] {
      Tensor h;
      phase(&DecodePhases::token_decoder, [&] {
        const Tensor x(tok_emb_.data, {M, D_}, tok_emb_.dtype, tok_emb_.device);
        be_.embedding_forward(x, ids_.slice0(0, M), table_);
        KVCache c = rows_of(c1_, 0, M);
        h = dec_->forward_cached(x.view({M, 1, D_}), M, 1, 0, c, start_.slice0(0, M), counter(kCtrTdPos, M));
      });
      head_and_sample(h, head_, M, 1, 1, 0);
    });
  }
  void next_step(int64_t, int64_t j) override { BT_FAIL("decode session: a vanilla round has one token, not ", j + 1); }

 protected:
  void bind(const SessionBuffers& b, const std::function<Tensor(int)>& get) override {
    prompt_ids_ = get(kPromptIds);
    prompt_emb_ = get(kPromptEmb);
    tok_emb_ = get(kTokEmb);
    c1_ = cache(dec_->dims(), b.T1, kCacheBase, get);
    reserve(*dec_, b.rows1);
  }
  void arm_counters(const RowArm& a, int32_t& pos, int32_t& unused) const override {
    pos = a.position;
    unused = 0;
  }
  void park_counters(int32_t& pos, int32_t& unused) const override {
    pos = static_cast<int32_t>(T1_);
    unused = 0;
  }

 private:
  std::unique_ptr<TransformerStack> dec_;
  int64_t D_ = 0;
  Tensor table_, head_;
  Tensor prompt_ids_, prompt_emb_, tok_emb_;  // decode_buffers.h
};

}  // namespace

void vanilla_buffers(const ModelConfig& m, DType act, const SessionShape& s, SessionBuffers& b) {
  const int64_t D = m.decoder.dim, R = s.rows, units = s.prefill_units;
  b.add(kPromptIds, {units}, DType::i32);
  b.add(kPromptEmb, {units, D}, act);
  b.add(kTokEmb, {R, D}, act);
  b.T1 = s.positions;
  b.caches(m.decoder, R, b.T1, kCacheBase, act);
  b.rows1 = std::max(units, R);
}

std::unique_ptr<DecodeSession> make_vanilla_session(Model& model) { return std::make_unique<VanillaSession>(model); }

}  // namespace bt

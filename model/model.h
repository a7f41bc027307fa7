// The models: the Block Transformer (docs/design.md §2.2: lookup embedder with concat or
// projection_layer, block decoder, expansion, token decoder with the prefix or summation strategy)
// and the vanilla GPT-NeoX baseline, as one schedule of backend ops.
// Parameters and gradients live in two flat buffers laid out by the ParamTable.
#pragma once
#include <memory>
#include <vector>

#include "model/backend.h"
#include "model/config.h"
#include "model/params.h"
#include "model/transformer.h"

namespace bt {

struct LossStats {
  double loss_sum = 0;            // sum of per-target cross-entropy (nats)
  int64_t targets = 0;            // number of non-pad targets
  std::vector<double> pos_sum;    // [L_B] (block) or [1] (vanilla): loss sum per position in block
  std::vector<int64_t> pos_count; // [L_B] or [1]
  void add(const LossStats& o);
  double mean() const { return targets ? loss_sum / static_cast<double>(targets) : 0.0; }
};

class Model {
 public:
  // max_batch: the largest micro-batch (sequences of context_length tokens) forward will see;
  // 0 makes an inference-only model (parameters only, for infer/'s cached decoding).
  // shard_parts > 1 pads the flat buffers to shard_parts x flat_chunk(total, shard_parts)
  // (zeros) for ZeRO-1's in-place collectives (params_padded, grads_padded).
  Model(const ModelConfig& cfg, Backend& be, int max_batch, int shard_parts = 1);
  const ModelConfig& config() const { return cfg_; }
  int max_batch() const { return max_B_; }
  const ParamTable& table() const { return table_; }
  Backend& backend() { return be_; }
  Tensor params() const { return params_; }  // [total] act dtype
  Tensor grads() const { return grads_; }    // [total] grad dtype
  Tensor params_padded() const { return params_full_; }  // [shard_parts x chunk] act dtype
  Tensor grads_padded() const { return grads_full_; }    // [shard_parts x chunk] grad dtype
  Tensor param(const std::string& name) const { return param_view(table_, params_, name); }
  Tensor grad(const std::string& name) const { return param_view(table_, grads_, name); }

  // docs/design.md §2.1 init from a seed (same values on every backend and every rank).
  void init(uint64_t seed);
  // Upload / download all parameters as a host array of `total()` values (f32 or f64).
  void set_params(const void* host, DType t);
  void get_params(void* host, DType t);

  // Runs the model on B windows of L tokens. tokens [B, L]; mask [B, L] (1 = real token, 0 = pad;
  // null = all real), the official pipeline's attention_mask. A pad is never a target and is
  // hidden from attention as the official code hides it (docs/architecture.md, Pads): its key is
  // invisible to every query of the vanilla model and the token decoder, and a block whose L_B
  // tokens are all pads is invisible to the block decoder. Pads still enter the embedder (a
  // block's vector holds its pads' embeddings), and a pad's own query still computes an output
  // (in the token decoder it predicts the next token). With backward, also computes
  // d(dscale * loss_sum)/dlogits, ready for backward().
  LossStats forward(const int32_t* tokens, const uint8_t* mask, int B, bool with_grad = false, double dscale = 1.0);
  // The same forward (no gradient) over B windows of T <= context_length tokens (block: a
  // multiple of L_B, at least 2 blocks), packed so that B * T <= max_batch * context_length:
  // evaluation of short sequences puts many of them in one call (infer/lm_scorer). logits(),
  // logit_row() and row_losses() then describe this [B, T] batch.
  LossStats forward_window(const int32_t* tokens, const uint8_t* mask, int B, int T);
  // Accumulates d(dscale * loss_sum)/dparams into grads() (call zero_grads() first).
  // on_ready (optional): see TransformerStack::backward; called in decreasing address order as
  // the flat gradient buffer becomes final from the top down, the last call at grads() itself.
  void backward(const std::function<void(const Tensor&)>& on_ready = {});
  void zero_grads();

  // Logits of the last forward: [B*(N-1)*L_B, V] (block: rows b, target block i=1..N-1, position
  // j) or [B*L, V] (vanilla). Valid only after a forward without gradient.
  Tensor logits() const { return logits_rows(last_B_); }
  // Row of logits that predicts token position p of window b (p >= L_B for block, >= 1 vanilla).
  int64_t logit_row(int b, int p) const;
  // Cross-entropy of every logit row of the last forward (nats; 0 in rows without a target).
  const std::vector<double>& row_losses() const { return h_losses_; }

  // Model FLOPs per trained token (forward + backward), docs/design.md §8: 6 x matmul params + attention.
  double flops_per_token() const;

  // The embedder (block models): ids [n * L_B] i32 on the device -> block vectors [n, D_B].
  // look [>= n * L_B * E] receives the lookups; with concat the result is look itself, with
  // projection_layer look_t [>= n * E * L_B] is scratch and the result is written to out [>= n * D_B].
  Tensor embed_blocks(Tensor ids, int64_t n, Tensor look, Tensor look_t, Tensor out);
  // Token-decoder row geometry: t_1 enters at position row_start() (R for prefix, 1 for summation)
  // of a row of row_length() = row_start() + L_B - 1 positions; the outputs from position
  // row_start() - 1 on predict t_1 .. t_{L_B}.
  int64_t row_start() const;
  int64_t row_length() const;

 private:
  Tensor logits_rows(int B) const;
  void build_targets(const int32_t* tokens, const uint8_t* mask, int B);
  // Uploads a key mask of `rows` sequences of T keys (host keys [rows * T], 1 = visible) into the
  // buffers keys [>= rows * T], first [>= rows]; an empty mask when every key is visible.
  AttnMask upload_mask(const std::vector<int32_t>& keys, int64_t rows, int64_t T, Tensor keys_buf, Tensor first_buf);
  LossStats forward_impl(const int32_t* tokens, const uint8_t* mask, int B, int T, bool with_grad, double dscale);

  ModelConfig cfg_;
  Backend& be_;
  ParamTable table_;
  int max_B_;
  int last_B_ = 0;
  int last_T_ = 0;  // tokens per window of the last forward (context_length, or forward_window's T)
  bool have_grad_ = false;
  Tensor params_, grads_;            // [total] views of:
  Tensor params_full_, grads_full_;  // the allocations, padded for ZeRO-1
  std::unique_ptr<TransformerStack> block_dec_, token_dec_, dec_;

  // inputs
  Tensor tokens_;   // [B, L] i32
  Tensor targets_;  // [rows] i32 (-1 ignored)
  std::vector<int32_t> h_targets_;
  // key masks (pads hidden from attention), rebuilt by every forward; empty when nothing is hidden
  Tensor keys_a_, first_a_;  // block decoder [B, N], [B] (vanilla: [B, L], [B])
  Tensor keys_b_, first_b_;  // token decoder [B*(N-1), S], [B*(N-1)]
  AttnMask mask_a_, mask_b_;
  std::vector<int32_t> h_keys_, h_first_;
  // block model activations
  Tensor emb_b_;    // [B, N, D_B] block embeddings (concat: the lookups themselves)
  Tensor look_, look_t_;  // projection_layer: lookups [B*L, E] and per block channel-major [B*N, E*L_B]
  Tensor td_ids_;   // summation: [B*(N-1)*L_B] i32 token-decoder inputs [BOS, t_1 .. t_{L_B-1}] per row
  std::vector<int32_t> h_td_ids_;
  Tensor prefix_;   // [B, N, R*D_T] prefix expansion of every context embedding
  Tensor tok_emb_;  // [B, L, D_T] token-decoder token embeddings
  Tensor td_in_;    // [B*(N-1), S, D_T] token-decoder rows
  Tensor td_sel_;   // [B*(N-1)*L_B, D_T] outputs that predict tokens
  Tensor ctx_;      // view of block decoder output [B, N, D_B]
  Tensor td_out_;   // view of token decoder output [B*(N-1), S, D_T]
  // vanilla activations
  Tensor emb_;      // [B, L, D]
  Tensor dec_out_;  // view [B, L, D]
  // classifier
  Tensor logits_, dlogits_;  // [rows, V]
  Tensor losses_;            // [rows] f32
  std::vector<double> h_losses_;
  // backward scratch
  Tensor d_sel_, d_td_out_, d_td_in_, d_prefix_, d_tok_emb_, d_ctx_, d_emb_b_, d_look_, d_look_t_;
};

}  // namespace bt

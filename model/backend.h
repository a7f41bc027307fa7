// The op set that the model schedule (model/transformer.cpp, model/model.cpp) is written
// against. Each backend (model/cpu, model/cuda) implements every op; the schedule itself
// exists once. Tensors carry their shapes; backends take sizes from them and check them.
//
// Conventions, for every backend:
// - Forward ops overwrite their outputs.
// - Backward ops ACCUMULATE (+=) into every gradient they produce (input gradients and
//   parameter gradients alike), so a tensor read by several ops gathers all contributions and
//   gradient accumulation over micro-batches needs no extra pass. Callers zero gradient
//   buffers when a new backward pass starts. Optional gradient outputs may be empty (skipped).
//   The ops whose input gradient is usually a fresh buffer (matmul_backward's dinp,
//   qkv_rotary_backward, attention_backward, gelu_backward) also take Grad::overwrite: they
//   then write it without reading it (the same bits as adding to zeros), which saves the
//   schedule a zero pass and a read per buffer. Parameter gradients always accumulate.
// - Token ids and targets are i32 tensors on the backend's device; target -1 means "ignore".
// - Layouts: activations are [rows, width] row-major; qkv follows GPT-NeoX: per head,
//   q | k | v of hd each, i.e. [B, T, H, 3, hd]; q, k, v after the split are [B, H, T, hd].
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/sampling.h"

namespace bt {

// One LayerNorm output of residual_layernorm_forward: out = LayerNorm(x; w, b), with the row
// statistics mean and rstd (as layernorm_forward writes them). Empty `out`: not computed.
struct LayerNormOut {
  Tensor out, mean, rstd, w, b;
};

// How a backward op writes an input gradient: add to it (the convention), or overwrite it.
enum class Grad { add, overwrite };

// Keys hidden from attention, per sequence: the pads of a padded batch (HF `attention_mask` = 0,
// as the official Block Transformer pipeline sets it for its padding). Query i of sequence b
// attends to the keys j <= i with keys[b, j] = 1, exactly like GPT-NeoX's eager attention in HF
// transformers 4.39.3 (a hidden key's score becomes the dtype's minimum, so its weight is exactly
// 0). A query with no visible key (i < first[b], a row of only pads) averages v_0 .. v_i with
// equal weights, as HF does for those keys, and passes no gradient to q or k (HF also mixes in
// later visible keys there, a causality leak that no path of the official code reaches; we do not
// reproduce it). An empty mask means every key is visible: the unmasked kernels, unchanged.
struct AttnMask {
  Tensor keys;   // [B, T] i32: 1 = visible, 0 = hidden (a pad)
  Tensor first;  // [B] i32: index of the first visible key of each sequence (T when none)
  bool empty() const { return keys.empty(); }
};

struct RotaryParams {
  int rd = 0;           // rotated dims per head (even), rd = int(hd * rotary_pct)
  double base = 10000;  // inv_freq[i] = base^(-2i/rd)
};

// ---- types of the decoding ops (the last section of Backend) ---------------------------------
// The device tensors that sample_tokens reads and writes for a batch of B rows being decoded.
struct DecodeState {
  Tensor ids;   // [B] i32 out: each row's new token (what the next embedding reads)
  Tensor hist;  // [B, W] i32 out, may be empty: the token of step s also goes to column s % W
  Tensor done;  // [B] i32 in/out, may be empty: 1 once a row drew its eos_id; it then outputs eos_id
  Tensor seq;   // [B] i32 the Philox stream of each row: the sequence's own id, not its row
  Tensor step;  // [1] or [B] i32 the token index s (the Philox counter) of all rows or of each row;
                // not advanced by sample_tokens
  Tensor params = Tensor();  // [B, kSampleParamWords] i32, may be empty: each row's own SampleParams
                             // (pack_sample_params, model/sampling.h) instead of the call's
};

// The argument checks of Backend::sample_tokens, the same for every backend: logits [B, V] (or
// [V]: B = 1) against the state's shapes, and eos_id below V. Returns B.
inline int64_t check_sample_tokens(const Tensor& logits, const DecodeState& st, const SampleParams& p) {
  const int64_t B = logits.shape.ndim == 2 ? logits.dim(0) : 1;
  const int V = static_cast<int>(logits.dim(-1));
  BT_CHECK(logits.numel() == size_t(B) * V && st.ids.numel() == size_t(B) && st.seq.numel() == size_t(B) &&
               (st.step.numel() == 1 || st.step.numel() == size_t(B)) &&
               (st.done.empty() || st.done.numel() == size_t(B)) &&
               (st.hist.empty() || (st.hist.shape.ndim == 2 && st.hist.dim(0) == B)) &&
               (st.params.empty() || st.params.numel() == size_t(B) * kSampleParamWords),
           "sample_tokens: logits ", logits.shape.str(), " ids ", st.ids.shape.str(), " seq ", st.seq.shape.str(),
           " step ", st.step.shape.str(), " done ", st.done.shape.str(), " hist ", st.hist.shape.str(), " params ",
           st.params.shape.str());
  BT_CHECK(p.eos_id < V, "sample_tokens: eos id ", p.eos_id, " is not below the vocabulary size ", V);
  return B;
}

// Host <-> device traffic of a backend since it was made (upload, download, synchronize). The
// CPU backend counts the same calls although nothing moves, so that a decoding loop's traffic
// is checked on both.
struct TransferStats {
  uint64_t h2d_bytes = 0, d2h_bytes = 0;
  uint64_t h2d_copies = 0, d2h_copies = 0;
  uint64_t syncs = 0;  // waits of the host for the device (synchronize, and every upload and download)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual Device device() const = 0;
  // dtype of parameters and activations as the ops see them (f32/f64 on CPU, bf16 or f32 on CUDA).
  virtual DType act_dtype() const = 0;
  // dtype of parameter gradients and of the optimizer's master weights and moments.
  virtual DType grad_dtype() const = 0;

  // ---- memory -----------------------------------------------------------------------------
  // Allocates from the backend's arena; memory lives as long as the backend. Contents undefined.
  virtual Tensor alloc(Shape s, DType t) = 0;
  virtual void zero(Tensor t) = 0;
  // Host <-> device copies with conversion: src/dst host memory has dtype host_t.
  virtual void upload(Tensor dst, const void* host, DType host_t) = 0;
  virtual void download(void* host, DType host_t, Tensor src) = 0;
  virtual void synchronize() = 0;
  // Bytes handed out by alloc() so far (0 when the backend does not track it).
  virtual size_t bytes_allocated() const { return 0; }

  // ---- embeddings ---------------------------------------------------------------------------
  // out[n, C] = table[tokens[n], :]           tokens [n] i32, table [V, C]
  virtual void embedding_forward(Tensor out, Tensor tokens, Tensor table) = 0;
  // dtable[tokens[n], :] += dout[n, :]         deterministic (no float atomics)
  virtual void embedding_backward(Tensor dtable, Tensor dout, Tensor tokens) = 0;

  // ---- LayerNorm over the last dim ------------------------------------------------------------
  // out [n, C], mean [n], rstd [n] (grad dtype: fp32 on CUDA; kept for backward), x [n, C], w [C], b [C]
  virtual void layernorm_forward(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor w, Tensor b,
                                 double eps) = 0;
  virtual void layernorm_backward(Tensor dx, Tensor dw, Tensor db, Tensor dout, Tensor x, Tensor w,
                                  Tensor mean, Tensor rstd) = 0;

  // ---- linear: out[n, OC] = inp[n, IC] @ W[OC, IC]^T + bias[OC] (bias may be empty) ----------
  virtual void matmul_forward(Tensor out, Tensor inp, Tensor W, Tensor bias) = 0;
  // dinp [n, IC], dW [OC, IC], dbias [OC]; any may be empty. `dinp_mode` applies to dinp only.
  virtual void matmul_backward(Tensor dinp, Tensor dW, Tensor dbias, Tensor dout, Tensor inp, Tensor W,
                               Grad dinp_mode = Grad::add) = 0;

  // ---- attention ----------------------------------------------------------------------------
  // qkv [B, T, H*3*hd] (NeoX per-head layout) -> q, k, v [B, H, T, hd]; rotary on q and k with
  // positions 0..T-1 on the first rd dims (rotate-half pairing i <-> i + rd/2).
  virtual void qkv_rotary_forward(Tensor q, Tensor k, Tensor v, Tensor qkv, RotaryParams rope) = 0;
  // dqkv from dq, dk, dv (any may be empty: no contribution; with overwrite, its part is 0).
  virtual void qkv_rotary_backward(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv, RotaryParams rope,
                                   Grad mode = Grad::add) = 0;
  // What attention_forward keeps for backward, per backend: CPU keeps the probabilities
  // [B, H, T, T]; CUDA keeps the log-sum-exp [B, H, T] (fp32).
  virtual Shape attention_stats_shape(int64_t B, int64_t H, int64_t T) const = 0;
  virtual DType attention_stats_dtype() const = 0;
  // Causal softmax(q k^T / sqrt(hd)) v; out [B, T, H*hd] with heads merged. mask (optional):
  // keys hidden per sequence (AttnMask above); the backward must get the forward's mask.
  virtual void attention_forward(Tensor out, Tensor stats, Tensor q, Tensor k, Tensor v,
                                 const AttnMask& mask = {}) = 0;
  virtual void attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor out, Tensor stats,
                                  Tensor q, Tensor k, Tensor v, Grad mode = Grad::add,
                                  const AttnMask& mask = {}) = 0;

  // ---- inference with KV caches (infer/) -----------------------------------------------------
  // qkv [B, T, H*3*hd] for absolute positions pos0 .. pos0+T-1 -> q [B, H, T, hd] (rotary at those
  // positions) and k, v (rotary on k) written into the caches kc, vc [B, H, Tmax, hd] at pos0 .. .
  virtual void qkv_rotary_cache(Tensor q, Tensor kc, Tensor vc, Tensor qkv, int64_t pos0, RotaryParams rope) = 0;
  // out [B, T, H*hd]: query t (absolute position pos0 + t) attends to cache positions
  // start[b] .. pos0 + t (causal); start [B] i32 masks each sequence's left padding (empty: 0).
  virtual void attention_cached(Tensor out, Tensor q, Tensor kc, Tensor vc, Tensor start, int64_t pos0) = 0;

  // ---- pointwise ----------------------------------------------------------------------------
  // Exact GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)).
  virtual void gelu_forward(Tensor out, Tensor x) = 0;
  virtual void gelu_backward(Tensor dx, Tensor dout, Tensor x, Grad mode = Grad::add) = 0;
  // out = a + b + c (parallel residual); c may be empty.
  virtual void add_forward(Tensor out, Tensor a, Tensor b, Tensor c) = 0;
  // The end of a layer and the start of the next, fused where the backend can: out = a + b + c
  // (as add_forward), then ln1 and, unless ln2.out is empty, ln2 = LayerNorm(out) with their own
  // weights (the next layer's two LayerNorms under the parallel residual, or the final one). A
  // fused version must give exactly what add_forward and layernorm_forward give.
  virtual void residual_layernorm_forward(Tensor out, Tensor a, Tensor b, Tensor c, const LayerNormOut& ln1,
                                          const LayerNormOut& ln2, double eps) {
    add_forward(out, a, b, c);
    layernorm_forward(ln1.out, ln1.mean, ln1.rstd, out, ln1.w, ln1.b, eps);
    if (!ln2.out.empty()) layernorm_forward(ln2.out, ln2.mean, ln2.rstd, out, ln2.w, ln2.b, eps);
  }
  // dst += src
  virtual void accumulate(Tensor dst, Tensor src) = 0;

  // ---- Block Transformer glue (docs/design.md §2.2) ----------------------------------------------------
  // Token-decoder rows. prefix [B, N, R*D] (prefix expansion of every block's context
  // embedding), tok [B, N*LB, D] (token embeddings) -> out [B, N-1, S, D] with S = R + LB - 1:
  // row (b, i) = [prefix[b, i, 0..R-1], tok[b, (i+1)*LB + 0 .. (i+1)*LB + LB-2]].
  // The last block's prefix is never used.
  virtual void td_assemble_forward(Tensor out, Tensor prefix, Tensor tok, int R, int LB) = 0;
  virtual void td_assemble_backward(Tensor dprefix, Tensor dtok, Tensor dout, int R, int LB) = 0;
  // h [rows, S, D] -> out [rows, LB, D]: positions R-1 .. S-1 (those that predict t_1..t_LB).
  virtual void td_select_forward(Tensor out, Tensor h, int R, int LB) = 0;
  virtual void td_select_backward(Tensor dh, Tensor dout, int R, int LB) = 0;
  // in [n, A, C] -> out [n, C, A]: out[i, c, a] = in[i, a, c]. The projection_layer embedder
  // reorders a block's L_B token vectors [L_B, E] into the Conv1d's channel-major [E, L_B].
  virtual void transpose_forward(Tensor out, Tensor in) = 0;
  // din [n, A, C] += dout [n, C, A] transposed back.
  virtual void transpose_backward(Tensor din, Tensor dout) = 0;

  // ---- classifier ---------------------------------------------------------------------------
  // logits [n, V], targets [n] i32 (-1 ignored) -> losses [n] in grad_dtype() (0 where ignored) and, when
  // dlogits is not empty, dlogits = dscale * (softmax(logits) - onehot(target)) (overwritten,
  // 0 in ignored rows). The CUDA kernel may overwrite logits with dlogits in place.
  virtual void cross_entropy(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets, double dscale) = 0;

  // ---- optimizer ----------------------------------------------------------------------------
  // sum of squares of g (any dtype), accumulated in double on the host side.
  virtual double sum_squares(Tensor g) = 0;
  virtual void scale(Tensor t, double s) = 0;
  // One AdamW step on one parameter tensor. master/m/v are grad_dtype(); param is act_dtype()
  // and is written from master (on CPU param and master may be the same tensor).
  // bias corrections: c1 = 1 - beta1^t, c2 = 1 - beta2^t.
  struct AdamW {
    double lr, beta1, beta2, eps, weight_decay, c1, c2;
  };
  virtual void adamw_update(Tensor param, Tensor master, Tensor grad, Tensor m, Tensor v, const AdamW& h) = 0;

  // ---- decoding on the device (infer/generator.cpp; docs/inference.md) ------------------------
  // Decoding keeps its state on the device: the chosen ids feed the next embedding directly,
  // positions and the Philox counter are device counters, and a step's arguments never change,
  // so a backend can replay a step as a graph (run_step).
  //
  // logits [B, V] -> st.ids [B] (and st.hist, st.done) by the rule of model/sampling.h, with the
  // draw of row b keyed by (seed, st.seq[b], s) where s is st.step[0] or st.step[b]. Row b uses p,
  // or its own parameters st.params[b] when given. Rows with st.done set output their eos_id.
  virtual void sample_tokens(Tensor logits, const DecodeState& st, const SampleParams& p) = 0;
  // Decode counters: c [K, n] i32 on the device (K = add.size(), at most 8; n = c.numel() / K,
  // e.g. one value per row), c[k, i] += add[k].
  virtual void add_i32(Tensor c, const std::vector<int32_t>& add) = 0;
  // qkv_rotary_cache / attention_cached with the absolute position in device memory: pos [1] i32
  // (query t at position pos[0] + t, which must stay below the cache length Tmax), or pos [B]
  // (row b's query t at pos[b] + t, so that rows at different positions decode together; a row
  // whose position lies past its cache writes nothing and attends to the whole cache, which a
  // server uses for its idle rows).
  virtual void qkv_rotary_cache_at(Tensor q, Tensor kc, Tensor vc, Tensor qkv, Tensor pos, RotaryParams rope) = 0;
  virtual void attention_cached_at(Tensor out, Tensor q, Tensor kc, Tensor vc, Tensor start, Tensor pos) = 0;
  // Host <-> device traffic so far.
  virtual TransferStats transfers() const = 0;
  // A replayable step: runs `ops` (calls of this backend's ops). A backend with graphs (CUDA
  // unless BT_CUDA_GRAPHS=0) runs it plainly the first time for a key (allocations, plans and
  // tables settle), captures it the second time and from then on only replays the graph. So the
  // ops must see the same tensors and host arguments at every call with one key; what changes
  // between steps lives in device memory. forget_steps() drops every graph (call it before the
  // tensors a step uses move or are freed).
  virtual void run_step(uint64_t key, const std::function<void()>& ops) {
    (void)key;
    ops();
  }
  virtual void forget_steps() {}
};

// Backends by name: "cpu" (float), "cpu64" (double, for gradient checks), "cuda" (bf16 or fp32).
struct BackendOptions {
  std::string device = "cpu";  // cpu | cuda
  std::string precision = "fp32";  // fp32 | bf16 | fp64 (cpu only)
  int cuda_device = 0;
};
std::unique_ptr<Backend> make_backend(const BackendOptions& o);
bool cuda_available();  // any error from the runtime means "no GPU"
// train.device (auto | cpu | cuda) -> the device the backend will use.
Device resolve_device(const std::string& device);

}  // namespace bt

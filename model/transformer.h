// A GPT-NeoX transformer stack (docs/design.md §2.1): pre-LN, parallel residual, fused QKV in the
// per-head layout, partial rotary, exact-GELU MLP, final LayerNorm. Written once against
// model/backend.h; the block decoder, the token decoder and the vanilla model are instances.
#pragma once
#include <functional>
#include <vector>

#include "model/backend.h"
#include "model/config.h"
#include "model/params.h"

namespace bt {

struct LayerTensors {  // views into the flat parameter (or gradient) buffer of one layer
  Tensor ln1_w, ln1_b, ln2_w, ln2_b;  // [D]
  Tensor qkv_w;   // [3D, D]
  Tensor qkv_b;   // [3D]
  Tensor attn_w;  // [D, D]
  Tensor attn_b;  // [D]
  Tensor fc_w;    // [F, D]
  Tensor fc_b;    // [F]
  Tensor proj_w;  // [D, F]
  Tensor proj_b;  // [D]
};

struct StackTensors {
  std::vector<LayerTensors> layers;
  Tensor lnf_w, lnf_b;  // [D]
};

struct StackDims {
  int layers = 0, D = 0, H = 0, F = 0, hd = 0;
  RotaryParams rope;
  double eps = 1e-5;
  static StackDims from(const DecoderConfig& d, const ModelConfig& m);
};

// Views of one stack's tensors in a flat buffer `flat` laid out by `table`, by name prefix
// ("block_decoder.gpt_neox.", "gpt_neox.", ...).
StackTensors stack_views(const ParamTable& table, Tensor flat, const std::string& prefix, int layers);
Tensor param_view(const ParamTable& table, Tensor flat, const std::string& name);

// Per-layer key/value caches of one stack, for inference (infer/): k[l], v[l] [B, H, Tmax, hd].
struct KVCache {
  std::vector<Tensor> k, v;
  int64_t B = 0, Tmax = 0;
  size_t bytes() const;  // all layers, keys and values
};
KVCache make_kv_cache(Backend& be, const StackDims& d, int64_t B, int64_t Tmax);

class TransformerStack {
 public:
  TransformerStack(Backend& be, StackDims dims, StackTensors params, StackTensors grads);
  // Allocates activations for up to max_rows sequences of length T (once; reused every step).
  void reserve(int64_t max_rows, int64_t T);
  // x [B, T, D] -> returns [B, T, D] (after the final LayerNorm). x is kept (not copied): it
  // must stay unchanged until backward. mask (optional, model/backend.h AttnMask): keys hidden
  // from every layer's attention (pads); its tensors must keep their contents until backward.
  // T <= the reserved T and B * T <= the reserved rows x T.
  Tensor forward(Tensor x, int64_t B, int64_t T, const AttnMask& mask = {});
  // dout [B, T, D] gradient of the stack's output -> dx [B, T, D] accumulated (+=);
  // parameter gradients accumulated into the grads views.
  // on_ready (optional) is called with a gradient tensor each time every parameter gradient at
  // or above that tensor's address in the flat gradient buffer is final (the stack's gradients
  // are laid out in forward order and produced in reverse), so data-parallel reduction of those
  // bytes can start while the rest of the backward pass runs.
  void backward(Tensor dout, Tensor dx, const std::function<void(const Tensor&)>& on_ready = {});
  const StackDims& dims() const { return d_; }

  // ---- inference (no backward; the training buffers above are not used) ----------------------
  // Scratch for forward_cached calls of up to max_tokens rows (B * T); grows when needed (new
  // buffers: what a captured decode step used stays allocated but is no longer the one in use).
  void reserve_cached(int64_t max_tokens);
  int64_t cached_capacity() const { return cached_max_; }
  // Bytes reserve_cached(max_tokens) allocates, each tensor rounded up to `align` (memory plans).
  static size_t cached_scratch_bytes(const StackDims& d, int64_t max_tokens, DType act, DType stats, size_t align);
  // x [B, T, D] at absolute positions pos0 .. pos0+T-1 -> [B, T, D] after the final LayerNorm
  // (valid until the next call). The layers' keys and values of these positions are written into
  // cache, which holds positions < pos0 from earlier calls; start [B] i32 (or empty) hides each
  // sequence's left padding. The same per-layer op sequence as forward().
  // pos (optional, [1] i32 on the device): the positions are pos[0] + pos0 .. instead, read by the
  // ops on the device (qkv_rotary_cache_at, attention_cached_at), so that the same calls serve every
  // step of a replayed decode step (Backend::run_step).
  Tensor forward_cached(Tensor x, int64_t B, int64_t T, int64_t pos0, KVCache& cache, Tensor start,
                        Tensor pos = Tensor());

 private:
  struct CachedScratch {  // [max_tokens, ...] each
    Tensor ln, mean, rstd, qkv, q, atty, attn_out, fch, fch_gelu, mlp_out, res_a, res_b, out;
  };
  CachedScratch cs_;
  int64_t cached_max_ = 0;

  struct LayerActs {
    Tensor res;        // [B, T, D] layer input (residual stream)
    Tensor ln1, ln2;   // [B, T, D]
    Tensor ln1_mean, ln1_rstd, ln2_mean, ln2_rstd;  // [B*T]
    Tensor qkv;        // [B, T, 3D]
    Tensor q, k, v;    // [B, H, T, hd]
    Tensor stats;      // backend-defined: probabilities [B, H, T, T] or lse [B, H, T]
    Tensor atty;       // [B, T, D] attention output, heads merged
    Tensor attn_out;   // [B, T, D]
    Tensor fch;        // [B, T, F]
    Tensor fch_gelu;   // [B, T, F]
    Tensor mlp_out;    // [B, T, D]
  };
  Tensor rows(Tensor t, Shape s) const;  // first-B view of a reserved buffer

  Backend& be_;
  StackDims d_;
  StackTensors p_, g_;
  int64_t max_rows_ = 0, T_ = 0, B_ = 0;
  int64_t Tf_ = 0;  // sequence length of the last forward (<= T_)
  std::vector<LayerActs> acts_;
  Tensor x_in_;                      // [B, T, D] the input given to forward
  AttnMask mask_;                    // the key mask given to forward (views; empty: none)
  Tensor final_res_;                 // [B, T, D] residual after the last layer
  Tensor lnf_, lnf_mean_, lnf_rstd_; // final LayerNorm
  // backward scratch, shared by all layers
  Tensor dres_a_, dres_b_, dln_, datty_, dattn_, dqkv_, dq_, dk_, dv_, dfch_, dfch_gelu_;
};

}  // namespace bt

// The GPT-NeoX layer schedule, forward and backward, over the ops of model/backend.h.
#include "model/transformer.h"

#include <algorithm>
#include <cmath>

namespace bt {

StackDims StackDims::from(const DecoderConfig& d, const ModelConfig& m) {
  StackDims s;
  s.layers = d.layers;
  s.D = d.dim;
  s.H = d.heads;
  s.F = d.ffn_dim;
  s.hd = d.dim / d.heads;
  s.rope.rd = static_cast<int>(s.hd * m.rotary_pct);
  s.rope.base = m.rotary_base;
  s.eps = m.layernorm_eps;
  return s;
}

Tensor param_view(const ParamTable& table, Tensor flat, const std::string& name) {
  const ParamInfo& p = table.find(name);
  Shape s;
  for (int64_t x : p.shape) s.d[s.ndim++] = x;
  return Tensor(static_cast<char*>(flat.data) + p.offset * dtype_size(flat.dtype), s, flat.dtype, flat.device);
}

StackTensors stack_views(const ParamTable& table, Tensor flat, const std::string& prefix, int layers) {
  StackTensors st;
  auto v = [&](const std::string& n) { return param_view(table, flat, prefix + n); };
  for (int l = 0; l < layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    LayerTensors t;
    t.ln1_w = v(p + "input_layernorm.weight");
    t.ln1_b = v(p + "input_layernorm.bias");
    t.ln2_w = v(p + "post_attention_layernorm.weight");
    t.ln2_b = v(p + "post_attention_layernorm.bias");
    t.qkv_w = v(p + "attention.query_key_value.weight");
    t.qkv_b = v(p + "attention.query_key_value.bias");
    t.attn_w = v(p + "attention.dense.weight");
    t.attn_b = v(p + "attention.dense.bias");
    t.fc_w = v(p + "mlp.dense_h_to_4h.weight");
    t.fc_b = v(p + "mlp.dense_h_to_4h.bias");
    t.proj_w = v(p + "mlp.dense_4h_to_h.weight");
    t.proj_b = v(p + "mlp.dense_4h_to_h.bias");
    st.layers.push_back(t);
  }
  st.lnf_w = v("final_layer_norm.weight");
  st.lnf_b = v("final_layer_norm.bias");
  return st;
}

TransformerStack::TransformerStack(Backend& be, StackDims dims, StackTensors params, StackTensors grads)
    : be_(be), d_(dims), p_(std::move(params)), g_(std::move(grads)) {}

void TransformerStack::reserve(int64_t max_rows, int64_t T) {
  BT_CHECK(max_rows_ == 0, "TransformerStack::reserve called twice");
  max_rows_ = max_rows;
  T_ = T;
  const int64_t B = max_rows, D = d_.D, F = d_.F, H = d_.H, hd = d_.hd;
  const DType a = be_.act_dtype();
  auto al = [&](Shape s) { return be_.alloc(s, a); };
  // LayerNorm statistics stay in the gradient dtype (fp32 on CUDA): a bf16 rstd would skew dx.
  auto st = [&](Shape s) { return be_.alloc(s, be_.grad_dtype()); };
  acts_.resize(d_.layers);
  for (auto& L : acts_) {
    L.ln1 = al({B, T, D});
    L.ln2 = al({B, T, D});
    L.ln1_mean = st({B * T});
    L.ln1_rstd = st({B * T});
    L.ln2_mean = st({B * T});
    L.ln2_rstd = st({B * T});
    L.qkv = al({B, T, 3 * D});
    L.q = al({B, H, T, hd});
    L.k = al({B, H, T, hd});
    L.v = al({B, H, T, hd});
    L.stats = be_.alloc(be_.attention_stats_shape(B, H, T), be_.attention_stats_dtype());
    L.atty = al({B, T, D});
    L.attn_out = al({B, T, D});
    L.fch = al({B, T, F});
    L.fch_gelu = al({B, T, F});
    L.mlp_out = al({B, T, D});
    L.res = al({B, T, D});
  }
  final_res_ = al({B, T, D});
  lnf_ = al({B, T, D});
  lnf_mean_ = st({B * T});
  lnf_rstd_ = st({B * T});
  dres_a_ = al({B, T, D});
  dres_b_ = al({B, T, D});
  dln_ = al({B, T, D});
  datty_ = al({B, T, D});
  dattn_ = al({B, T, D});
  dqkv_ = al({B, T, 3 * D});
  dq_ = al({B, H, T, hd});
  dk_ = al({B, H, T, hd});
  dv_ = al({B, H, T, hd});
  dfch_ = al({B, T, F});
  dfch_gelu_ = al({B, T, F});
}

// A [B, ...] view at the start of a buffer reserved for max_rows_ rows.
Tensor TransformerStack::rows(Tensor t, Shape s) const { return Tensor(t.data, s, t.dtype, t.device); }

Tensor TransformerStack::forward(Tensor x, int64_t B, int64_t T, const AttnMask& mask) {
  // Shorter sequences may come in more rows (inference over packed windows): every buffer holds
  // max_rows_ x T_ positions, the attention statistics max_rows_ x T_ x T_.
  BT_CHECK(T <= T_ && B * T <= max_rows_ * T_, "TransformerStack::forward: batch ", B, "x", T,
           " exceeds the reserved ", max_rows_, "x", T_);
  B_ = B;
  Tf_ = T;
  mask_ = mask;
  const int64_t D = d_.D, F = d_.F, H = d_.H, hd = d_.hd;
  x_in_ = x.view({B, T, D});
  Tensor cur = x_in_;
  Tensor out = rows(lnf_, {B, T, D});
  const LayerNormOut final_ln{out, rows(lnf_mean_, {B * T}), rows(lnf_rstd_, {B * T}), p_.lnf_w, p_.lnf_b};
  for (int l = 0; l < d_.layers; ++l) {
    const LayerTensors& w = p_.layers[l];
    LayerActs& A = acts_[l];
    Tensor res = cur;
    Tensor ln1 = rows(A.ln1, {B, T, D}), ln2 = rows(A.ln2, {B, T, D});
    Tensor m1 = rows(A.ln1_mean, {B * T}), r1 = rows(A.ln1_rstd, {B * T});
    Tensor m2 = rows(A.ln2_mean, {B * T}), r2 = rows(A.ln2_rstd, {B * T});
    Tensor qkv = rows(A.qkv, {B, T, 3 * D});
    Tensor q = rows(A.q, {B, H, T, hd}), k = rows(A.k, {B, H, T, hd}), v = rows(A.v, {B, H, T, hd});
    Tensor stats = rows(A.stats, be_.attention_stats_shape(B, H, T));
    Tensor atty = rows(A.atty, {B, T, D}), attn_out = rows(A.attn_out, {B, T, D});
    Tensor fch = rows(A.fch, {B, T, F}), fg = rows(A.fch_gelu, {B, T, F}), mlp = rows(A.mlp_out, {B, T, D});
    if (l == 0) {  // later layers get LN1 and LN2 of their input from the previous layer's residual add
      be_.layernorm_forward(ln1, m1, r1, res, w.ln1_w, w.ln1_b, d_.eps);
      be_.layernorm_forward(ln2, m2, r2, res, w.ln2_w, w.ln2_b, d_.eps);
    }
    // attention branch: LN1 -> QKV -> rotary -> causal attention -> dense
    be_.matmul_forward(qkv, ln1, w.qkv_w, w.qkv_b);
    be_.qkv_rotary_forward(q, k, v, qkv, d_.rope);
    be_.attention_forward(atty, stats, q, k, v, mask_);
    be_.matmul_forward(attn_out, atty, w.attn_w, w.attn_b);
    // MLP branch (parallel residual: LN2 of the same layer input)
    be_.matmul_forward(fch, ln2, w.fc_w, w.fc_b);
    be_.gelu_forward(fg, fch);
    be_.matmul_forward(mlp, fg, w.proj_w, w.proj_b);
    // x + attn + mlp, and the LayerNorms that read it: the next layer's two, or the final one
    if (l + 1 < d_.layers) {
      LayerActs& N = acts_[l + 1];
      const LayerTensors& wn = p_.layers[l + 1];
      const LayerNormOut n1{rows(N.ln1, {B, T, D}), rows(N.ln1_mean, {B * T}), rows(N.ln1_rstd, {B * T}), wn.ln1_w,
                            wn.ln1_b};
      const LayerNormOut n2{rows(N.ln2, {B, T, D}), rows(N.ln2_mean, {B * T}), rows(N.ln2_rstd, {B * T}), wn.ln2_w,
                            wn.ln2_b};
      be_.residual_layernorm_forward(rows(N.res, {B, T, D}), res, attn_out, mlp, n1, n2, d_.eps);
    } else {
      be_.residual_layernorm_forward(rows(final_res_, {B, T, D}), res, attn_out, mlp, final_ln, LayerNormOut{},
                                     d_.eps);
      return out;
    }
    cur = rows(acts_[l + 1].res, {B, T, D});
  }
  // No layers: the final LayerNorm of the input.
  be_.layernorm_forward(final_ln.out, final_ln.mean, final_ln.rstd, cur, final_ln.w, final_ln.b, d_.eps);
  return out;
}

void TransformerStack::backward(Tensor dout, Tensor dx, const std::function<void(const Tensor&)>& on_ready) {
  const int64_t B = B_, T = Tf_, D = d_.D, F = d_.F, H = d_.H, hd = d_.hd;
  // Gradient w.r.t. the residual after the last layer, from the final LayerNorm.
  Tensor dcur = rows(dres_a_, {B, T, D});
  Tensor dnext = rows(dres_b_, {B, T, D});
  be_.zero(dcur);
  Tensor last_res = d_.layers > 0 ? rows(final_res_, {B, T, D}) : x_in_;
  be_.layernorm_backward(dcur, g_.lnf_w, g_.lnf_b, dout.view({B, T, D}), last_res, p_.lnf_w,
                         rows(lnf_mean_, {B * T}), rows(lnf_rstd_, {B * T}));
  if (on_ready) on_ready(g_.lnf_w);
  for (int l = d_.layers - 1; l >= 0; --l) {
    const LayerTensors& w = p_.layers[l];
    const LayerTensors& g = g_.layers[l];
    LayerActs& A = acts_[l];
    Tensor res = l == 0 ? x_in_ : rows(A.res, {B, T, D});
    Tensor ln1 = rows(A.ln1, {B, T, D}), ln2 = rows(A.ln2, {B, T, D});
    Tensor q = rows(A.q, {B, H, T, hd}), k = rows(A.k, {B, H, T, hd}), v = rows(A.v, {B, H, T, hd});
    Tensor stats = rows(A.stats, be_.attention_stats_shape(B, H, T));
    Tensor atty = rows(A.atty, {B, T, D});
    Tensor fch = rows(A.fch, {B, T, F}), fg = rows(A.fch_gelu, {B, T, F});
    // Residual: the layer input receives dcur directly; both branches see dcur as their output grad.
    Tensor dprev = (l == 0) ? dx.view({B, T, D}) : dnext;
    if (l != 0) be_.zero(dprev);
    be_.accumulate(dprev, dcur);
    // MLP branch
    // (each fresh buffer's first writer overwrites it: no zero pass)
    Tensor dfg = rows(dfch_gelu_, {B, T, F}), dfch = rows(dfch_, {B, T, F}), dln = rows(dln_, {B, T, D});
    be_.matmul_backward(dfg, g.proj_w, g.proj_b, dcur, fg, w.proj_w, Grad::overwrite);
    be_.gelu_backward(dfch, dfg, fch, Grad::overwrite);
    be_.matmul_backward(dln, g.fc_w, g.fc_b, dfch, ln2, w.fc_w, Grad::overwrite);
    be_.layernorm_backward(dprev, g.ln2_w, g.ln2_b, dln, res, w.ln2_w, rows(A.ln2_mean, {B * T}),
                           rows(A.ln2_rstd, {B * T}));
    // Attention branch
    Tensor datty = rows(datty_, {B, T, D});
    be_.matmul_backward(datty, g.attn_w, g.attn_b, dcur, atty, w.attn_w, Grad::overwrite);
    Tensor dq = rows(dq_, {B, H, T, hd}), dk = rows(dk_, {B, H, T, hd}), dv = rows(dv_, {B, H, T, hd});
    be_.attention_backward(dq, dk, dv, datty, atty, stats, q, k, v, Grad::overwrite, mask_);
    Tensor dqkv = rows(dqkv_, {B, T, 3 * D});
    be_.qkv_rotary_backward(dqkv, dq, dk, dv, d_.rope, Grad::overwrite);
    be_.matmul_backward(dln, g.qkv_w, g.qkv_b, dqkv, ln1, w.qkv_w, Grad::overwrite);
    be_.layernorm_backward(dprev, g.ln1_w, g.ln1_b, dln, res, w.ln1_w, rows(A.ln1_mean, {B * T}),
                           rows(A.ln1_rstd, {B * T}));
    if (on_ready) on_ready(g.ln1_w);  // the layer's first tensor: the whole layer is final
    std::swap(dcur, dnext);
    if (l == 0) return;
  }
  // No layers: the final LayerNorm's input gradient goes straight to dx.
  be_.accumulate(dx.view({B, T, D}), dcur);
}

// ---- inference --------------------------------------------------------------------------------

size_t KVCache::bytes() const {
  size_t n = 0;
  for (const Tensor& t : k) n += t.bytes();
  for (const Tensor& t : v) n += t.bytes();
  return n;
}

KVCache make_kv_cache(Backend& be, const StackDims& d, int64_t B, int64_t Tmax) {
  KVCache c;
  c.B = B;
  c.Tmax = Tmax;
  for (int l = 0; l < d.layers; ++l) {
    c.k.push_back(be.alloc({B, d.H, Tmax, d.hd}, be.act_dtype()));
    c.v.push_back(be.alloc({B, d.H, Tmax, d.hd}, be.act_dtype()));
    be.zero(c.k.back());
    be.zero(c.v.back());
  }
  return c;
}

void TransformerStack::reserve_cached(int64_t max_tokens) {
  if (max_tokens <= cached_max_) return;
  cached_max_ = max_tokens;
  const int64_t n = max_tokens, D = d_.D, F = d_.F;
  const DType a = be_.act_dtype();
  auto al = [&](Shape s) { return be_.alloc(s, a); };
  auto st = [&](Shape s) { return be_.alloc(s, be_.grad_dtype()); };
  cs_.ln = al({n, D});
  cs_.mean = st({n});
  cs_.rstd = st({n});
  cs_.qkv = al({n, 3 * D});
  cs_.q = al({n, D});
  cs_.atty = al({n, D});
  cs_.attn_out = al({n, D});
  cs_.fch = al({n, F});
  cs_.fch_gelu = al({n, F});
  cs_.mlp_out = al({n, D});
  cs_.res_a = al({n, D});
  cs_.res_b = al({n, D});
  cs_.out = al({n, D});
}

size_t TransformerStack::cached_scratch_bytes(const StackDims& d, int64_t max_tokens, DType act, DType stats,
                                              size_t align) {
  auto r = [&](int64_t elems, DType t) {
    const size_t b = size_t(elems) * dtype_size(t);
    return std::max(align, (b + align - 1) / align * align);
  };
  const int64_t n = max_tokens, D = d.D, F = d.F;
  // As reserve_cached: ln, qkv, q, atty, attn_out, fch, fch_gelu, mlp_out, res_a, res_b, out; mean, rstd.
  return r(n * D, act) + r(n * 3 * D, act) + r(n * D, act) * 3 + r(n * F, act) * 2 + r(n * D, act) * 4 +
         r(n, stats) * 2;
}

Tensor TransformerStack::forward_cached(Tensor x, int64_t B, int64_t T, int64_t pos0, KVCache& cache, Tensor start,
                                        Tensor pos) {
  BT_CHECK(cache.B == B && static_cast<int>(cache.k.size()) == d_.layers, "forward_cached: a cache for ", cache.B,
           " sequences and ", cache.k.size(), " layers given to a batch of ", B, " and ", d_.layers, " layers");
  BT_CHECK(pos0 + T <= cache.Tmax, "forward_cached: positions up to ", pos0 + T, " exceed the KV cache length ",
           cache.Tmax);
  reserve_cached(B * T);
  const int64_t D = d_.D, F = d_.F, H = d_.H, hd = d_.hd;
  auto v = [](Tensor t, Shape s) { return Tensor(t.data, s, t.dtype, t.device); };
  Tensor cur = x.view({B, T, D});
  Tensor ln = v(cs_.ln, {B, T, D}), mean = v(cs_.mean, {B * T}), rstd = v(cs_.rstd, {B * T});
  Tensor qkv = v(cs_.qkv, {B, T, 3 * D}), q = v(cs_.q, {B, H, T, hd});
  Tensor atty = v(cs_.atty, {B, T, D}), attn_out = v(cs_.attn_out, {B, T, D});
  Tensor fch = v(cs_.fch, {B, T, F}), fg = v(cs_.fch_gelu, {B, T, F}), mlp = v(cs_.mlp_out, {B, T, D});
  Tensor bufs[2] = {v(cs_.res_a, {B, T, D}), v(cs_.res_b, {B, T, D})};
  for (int l = 0; l < d_.layers; ++l) {
    const LayerTensors& w = p_.layers[l];
    Tensor res = cur;
    // attention branch: LN1 -> QKV -> rotary into the cache -> attention over the cache -> dense
    be_.layernorm_forward(ln, mean, rstd, res, w.ln1_w, w.ln1_b, d_.eps);
    be_.matmul_forward(qkv, ln, w.qkv_w, w.qkv_b);
    if (pos.empty()) {
      be_.qkv_rotary_cache(q, cache.k[l], cache.v[l], qkv, pos0, d_.rope);
      be_.attention_cached(atty, q, cache.k[l], cache.v[l], start, pos0);
    } else {
      be_.qkv_rotary_cache_at(q, cache.k[l], cache.v[l], qkv, pos, d_.rope);
      be_.attention_cached_at(atty, q, cache.k[l], cache.v[l], start, pos);
    }
    be_.matmul_forward(attn_out, atty, w.attn_w, w.attn_b);
    // MLP branch (parallel residual)
    be_.layernorm_forward(ln, mean, rstd, res, w.ln2_w, w.ln2_b, d_.eps);
    be_.matmul_forward(fch, ln, w.fc_w, w.fc_b);
    be_.gelu_forward(fg, fch);
    be_.matmul_forward(mlp, fg, w.proj_w, w.proj_b);
    Tensor next = bufs[l % 2];
    be_.add_forward(next, res, attn_out, mlp);
    cur = next;
  }
  Tensor out = v(cs_.out, {B, T, D});
  be_.layernorm_forward(out, mean, rstd, cur, p_.lnf_w, p_.lnf_b, d_.eps);
  return out;
}

}  // namespace bt

// ProfilingBackend: forwards every op to the wrapped backend and adds its wall time to a group.
#include "model/profiling_backend.h"

#include "core/timer.h"

namespace bt {
namespace {

class ProfilingBackend final : public Backend {
 public:
  explicit ProfilingBackend(Backend& inner) : in_(inner) {}
  std::string name() const override { return in_.name(); }
  Device device() const override { return in_.device(); }
  DType act_dtype() const override { return in_.act_dtype(); }
  DType grad_dtype() const override { return in_.grad_dtype(); }
  Tensor alloc(Shape s, DType t) override { return in_.alloc(s, t); }
  void zero(Tensor t) override { timed("memory", [&] { in_.zero(t); }); }
  void upload(Tensor dst, const void* host, DType host_t) override {
    timed("memory", [&] { in_.upload(dst, host, host_t); });
  }
  void download(void* host, DType host_t, Tensor src) override {
    timed("memory", [&] { in_.download(host, host_t, src); });
  }
  void synchronize() override { in_.synchronize(); }
  size_t bytes_allocated() const override { return in_.bytes_allocated(); }

  void embedding_forward(Tensor out, Tensor tokens, Tensor table) override {
    timed("embedding", [&] { in_.embedding_forward(out, tokens, table); });
  }
  void embedding_backward(Tensor dtable, Tensor dout, Tensor tokens) override {
    timed("embedding", [&] { in_.embedding_backward(dtable, dout, tokens); });
  }
  void layernorm_forward(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor w, Tensor b, double eps) override {
    timed("layernorm", [&] { in_.layernorm_forward(out, mean, rstd, x, w, b, eps); });
  }
  void layernorm_backward(Tensor dx, Tensor dw, Tensor db, Tensor dout, Tensor x, Tensor w, Tensor mean,
                          Tensor rstd) override {
    timed("layernorm", [&] { in_.layernorm_backward(dx, dw, db, dout, x, w, mean, rstd); });
  }
  void matmul_forward(Tensor out, Tensor inp, Tensor W, Tensor bias) override {
    timed("gemm", [&] { in_.matmul_forward(out, inp, W, bias); });
  }
  void matmul_backward(Tensor dinp, Tensor dW, Tensor dbias, Tensor dout, Tensor inp, Tensor W,
                       Grad dinp_mode) override {
    timed("gemm", [&] { in_.matmul_backward(dinp, dW, dbias, dout, inp, W, dinp_mode); });
  }
  void qkv_rotary_forward(Tensor q, Tensor k, Tensor v, Tensor qkv, RotaryParams rope) override {
    timed("rotary", [&] { in_.qkv_rotary_forward(q, k, v, qkv, rope); });
  }
  void qkv_rotary_backward(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv, RotaryParams rope, Grad mode) override {
    timed("rotary", [&] { in_.qkv_rotary_backward(dqkv, dq, dk, dv, rope, mode); });
  }
  Shape attention_stats_shape(int64_t B, int64_t H, int64_t T) const override {
    return in_.attention_stats_shape(B, H, T);
  }
  DType attention_stats_dtype() const override { return in_.attention_stats_dtype(); }
  void attention_forward(Tensor out, Tensor stats, Tensor q, Tensor k, Tensor v, const AttnMask& mask) override {
    timed("attention", [&] { in_.attention_forward(out, stats, q, k, v, mask); });
  }
  void attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor out, Tensor stats, Tensor q,
                          Tensor k, Tensor v, Grad mode, const AttnMask& mask) override {
    timed("attention", [&] { in_.attention_backward(dq, dk, dv, dout, out, stats, q, k, v, mode, mask); });
  }
  void qkv_rotary_cache(Tensor q, Tensor kc, Tensor vc, Tensor qkv, int64_t pos0, RotaryParams rope) override {
    timed("rotary", [&] { in_.qkv_rotary_cache(q, kc, vc, qkv, pos0, rope); });
  }
  void attention_cached(Tensor out, Tensor q, Tensor kc, Tensor vc, Tensor start, int64_t pos0) override {
    timed("attention", [&] { in_.attention_cached(out, q, kc, vc, start, pos0); });
  }
  void gelu_forward(Tensor out, Tensor x) override { timed("pointwise", [&] { in_.gelu_forward(out, x); }); }
  void gelu_backward(Tensor dx, Tensor dout, Tensor x, Grad mode) override {
    timed("pointwise", [&] { in_.gelu_backward(dx, dout, x, mode); });
  }
  void residual_layernorm_forward(Tensor out, Tensor a, Tensor b, Tensor c, const LayerNormOut& ln1,
                                  const LayerNormOut& ln2, double eps) override {
    timed("layernorm", [&] { in_.residual_layernorm_forward(out, a, b, c, ln1, ln2, eps); });
  }
  void add_forward(Tensor out, Tensor a, Tensor b, Tensor c) override {
    timed("pointwise", [&] { in_.add_forward(out, a, b, c); });
  }
  void accumulate(Tensor dst, Tensor src) override { timed("pointwise", [&] { in_.accumulate(dst, src); }); }
  void td_assemble_forward(Tensor out, Tensor prefix, Tensor tok, int R, int LB) override {
    timed("block glue", [&] { in_.td_assemble_forward(out, prefix, tok, R, LB); });
  }
  void td_assemble_backward(Tensor dprefix, Tensor dtok, Tensor dout, int R, int LB) override {
    timed("block glue", [&] { in_.td_assemble_backward(dprefix, dtok, dout, R, LB); });
  }
  void td_select_forward(Tensor out, Tensor h, int R, int LB) override {
    timed("block glue", [&] { in_.td_select_forward(out, h, R, LB); });
  }
  void transpose_forward(Tensor out, Tensor in) override {
    timed("block glue", [&] { in_.transpose_forward(out, in); });
  }
  void transpose_backward(Tensor din, Tensor dout) override {
    timed("block glue", [&] { in_.transpose_backward(din, dout); });
  }
  void td_select_backward(Tensor dh, Tensor dout, int R, int LB) override {
    timed("block glue", [&] { in_.td_select_backward(dh, dout, R, LB); });
  }
  void cross_entropy(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets, double dscale) override {
    timed("classifier", [&] { in_.cross_entropy(losses, dlogits, logits, targets, dscale); });
  }
  double sum_squares(Tensor g) override {
    double r = 0;
    timed("optimizer", [&] { r = in_.sum_squares(g); });
    return r;
  }
  void scale(Tensor t, double s) override { timed("optimizer", [&] { in_.scale(t, s); }); }
  void adamw_update(Tensor param, Tensor master, Tensor grad, Tensor m, Tensor v, const AdamW& h) override {
    timed("optimizer", [&] { in_.adamw_update(param, master, grad, m, v, h); });
  }

  // Decoding: timed per op like the rest; steps always run plainly here (no graphs), so that
  // each op is timed.
  void sample_tokens(Tensor logits, const DecodeState& st, const SampleParams& p) override {
    timed("sampling", [&] { in_.sample_tokens(logits, st, p); });
  }
  void add_i32(Tensor c, const std::vector<int32_t>& add) override {
    timed("sampling", [&] { in_.add_i32(c, add); });
  }
  void qkv_rotary_cache_at(Tensor q, Tensor kc, Tensor vc, Tensor qkv, Tensor pos, RotaryParams rope) override {
    timed("rotary", [&] { in_.qkv_rotary_cache_at(q, kc, vc, qkv, pos, rope); });
  }
  void attention_cached_at(Tensor out, Tensor q, Tensor kc, Tensor vc, Tensor start, Tensor pos) override {
    timed("attention", [&] { in_.attention_cached_at(out, q, kc, vc, start, pos); });
  }
  TransferStats transfers() const override { return in_.transfers(); }

  std::map<std::string, OpGroupTime> times;

 private:
  template <class F>
  void timed(const char* group, F&& f) {
    in_.synchronize();
    Timer t;
    f();
    in_.synchronize();
    OpGroupTime& g = times[group];
    g.seconds += t.seconds();
    g.calls += 1;
  }
  Backend& in_;
};

}  // namespace

std::unique_ptr<Backend> make_profiling_backend(Backend& inner) { return std::make_unique<ProfilingBackend>(inner); }

std::map<std::string, OpGroupTime> profile_times(const Backend& be) {
  if (auto* p = dynamic_cast<const ProfilingBackend*>(&be)) return p->times;
  return {};
}

void reset_profile(Backend& be) {
  if (auto* p = dynamic_cast<ProfilingBackend*>(&be)) p->times.clear();
}

}  // namespace bt

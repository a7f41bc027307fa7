// CpuBackend<T>: forwards each op of model/backend.h to the templated reference ops of
// model/cpu/ops.h after checking the tensors' shapes. Memory is plain host memory owned by the
// backend (a list of aligned blocks that lives as long as the backend).
#include "model/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "model/cpu/ops.h"

namespace bt {
namespace {

void free_block(void* p) { std::free(p); }

template <class T>
class CpuBackend final : public Backend {
 public:
  std::string name() const override { return dtype_of<T>() == DType::f64 ? "cpu64" : "cpu"; }
  Device device() const override { return Device::cpu; }
  DType act_dtype() const override { return dtype_of<T>(); }
  DType grad_dtype() const override { return dtype_of<T>(); }

  Tensor alloc(Shape s, DType t) override {
    size_t bytes = s.numel() * dtype_size(t);
    size_t rounded = ((bytes + 63) / 64) * 64;
    void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
    BT_CHECK(p != nullptr, "out of host memory allocating ", bytes, " bytes for a tensor ", s.str());
    blocks_.emplace_back(p, &free_block);
    allocated_ += rounded;
    return Tensor(p, s, t, Device::cpu);
  }
  void zero(Tensor t) override {
    if (!t.empty() && t.bytes() > 0) std::memset(t.data, 0, t.bytes());
  }
  void upload(Tensor dst, const void* host, DType host_t) override {
    convert_dtype(dst.data, dst.dtype, host, host_t, dst.numel());
    count(stats_.h2d_bytes, stats_.h2d_copies, dst.bytes());
  }
  void download(void* host, DType host_t, Tensor src) override {
    convert_dtype(host, host_t, src.data, src.dtype, src.numel());
    count(stats_.d2h_bytes, stats_.d2h_copies, src.bytes());
  }
  void synchronize() override { ++stats_.syncs; }
  size_t bytes_allocated() const override { return allocated_; }

  void embedding_forward(Tensor out, Tensor tokens, Tensor table) override {
    const int C = static_cast<int>(table.dim(1));
    BT_CHECK(out.numel() == tokens.numel() * static_cast<size_t>(C), "embedding_forward: out ", out.shape.str(),
             " does not hold ", tokens.numel(), " rows of ", C);
    cpu::embedding_forward(p(out), tokens.ptr<int32_t>(), p(table), tokens.numel(), C);
  }
  void embedding_backward(Tensor dtable, Tensor dout, Tensor tokens) override {
    const int C = static_cast<int>(dtable.dim(1));
    BT_CHECK(dout.numel() == tokens.numel() * static_cast<size_t>(C), "embedding_backward: shapes");
    cpu::embedding_backward(p(dtable), p(dout), tokens.ptr<int32_t>(), tokens.numel(), C);
  }

  void layernorm_forward(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor w, Tensor b, double eps) override {
    const int C = static_cast<int>(x.dim(-1));
    BT_CHECK(w.numel() == static_cast<size_t>(C) && out.numel() == x.numel() && mean.numel() == x.rows(),
             "layernorm_forward: shapes x ", x.shape.str(), " w ", w.shape.str());
    cpu::layernorm_forward(p(out), p(mean), p(rstd), p(x), p(w), p(b), x.rows(), C, eps);
  }
  void layernorm_backward(Tensor dx, Tensor dw, Tensor db, Tensor dout, Tensor x, Tensor w, Tensor mean,
                          Tensor rstd) override {
    cpu::layernorm_backward(p(dx), p(dw), p(db), p(dout), p(x), p(w), p(mean), p(rstd), x.rows(),
                            static_cast<int>(x.dim(-1)));
  }

  void matmul_forward(Tensor out, Tensor inp, Tensor W, Tensor bias) override {
    const int OC = static_cast<int>(W.dim(0)), IC = static_cast<int>(W.dim(1));
    BT_CHECK(inp.dim(-1) == IC && out.dim(-1) == OC && out.rows() == inp.rows(), "matmul_forward: inp ",
             inp.shape.str(), " W ", W.shape.str(), " out ", out.shape.str());
    cpu::matmul_forward(p(out), p(inp), p(W), p(bias), inp.rows(), IC, OC);
  }
  // Grad::overwrite on the CPU: zero the output, then the accumulating op (memory is cheap here).
  void matmul_backward(Tensor dinp, Tensor dW, Tensor dbias, Tensor dout, Tensor inp, Tensor W,
                       Grad dinp_mode) override {
    if (dinp_mode == Grad::overwrite) zero(dinp);
    const int OC = static_cast<int>(W.dim(0)), IC = static_cast<int>(W.dim(1));
    BT_CHECK(dout.dim(-1) == OC && dout.rows() == inp.rows(), "matmul_backward: dout ", dout.shape.str(), " W ",
             W.shape.str());
    cpu::matmul_backward(p(dinp), p(dW), p(dbias), p(dout), p(inp), p(W), inp.rows(), IC, OC);
  }

  void qkv_rotary_forward(Tensor q, Tensor k, Tensor v, Tensor qkv, RotaryParams rope) override {
    const auto B = q.dim(0), H = q.dim(1), Tn = q.dim(2), hd = q.dim(3);
    BT_CHECK(qkv.numel() == 3 * q.numel(), "qkv_rotary_forward: qkv ", qkv.shape.str(), " q ", q.shape.str());
    cpu::qkv_rotary_forward(p(q), p(k), p(v), p(qkv), B, (int)Tn, (int)H, (int)hd, rope.rd, rope.base);
  }
  void qkv_rotary_backward(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv, RotaryParams rope, Grad mode) override {
    if (mode == Grad::overwrite) zero(dqkv);
    const Tensor& ref = !dq.empty() ? dq : (!dk.empty() ? dk : dv);
    if (ref.empty()) return;
    const auto B = ref.dim(0), H = ref.dim(1), Tn = ref.dim(2), hd = ref.dim(3);
    cpu::qkv_rotary_backward(p(dqkv), p(dq), p(dk), p(dv), B, (int)Tn, (int)H, (int)hd, rope.rd, rope.base);
  }
  Shape attention_stats_shape(int64_t B, int64_t H, int64_t Tn) const override { return Shape{B, H, Tn, Tn}; }
  DType attention_stats_dtype() const override { return dtype_of<T>(); }
  void attention_forward(Tensor out, Tensor stats, Tensor q, Tensor k, Tensor v, const AttnMask& mask) override {
    const auto B = q.dim(0), H = q.dim(1), Tn = q.dim(2), hd = q.dim(3);
    BT_CHECK(out.numel() == q.numel() && stats.numel() == (size_t)(B * H * Tn * Tn), "attention_forward: shapes");
    check_mask(mask, B, Tn, "attention_forward");
    cpu::attention_forward(p(out), p(stats), p(q), p(k), p(v), B, (int)Tn, (int)H, (int)hd, mask_keys(mask),
                           mask.empty() ? nullptr : mask.first.ptr<int32_t>());
  }
  void attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor out, Tensor stats, Tensor q,
                          Tensor k, Tensor v, Grad mode, const AttnMask& mask) override {
    if (mode == Grad::overwrite)
      for (const Tensor& t : {dq, dk, dv}) zero(t);
    const auto B = q.dim(0), H = q.dim(1), Tn = q.dim(2), hd = q.dim(3);
    check_mask(mask, B, Tn, "attention_backward");
    cpu::attention_backward(p(dq), p(dk), p(dv), p(dout), p(stats), p(q), p(k), p(v), B, (int)Tn, (int)H, (int)hd,
                            mask_keys(mask));
  }
  static void check_mask(const AttnMask& m, int64_t B, int64_t Tn, const char* op) {
    if (m.empty()) return;
    BT_CHECK(m.keys.dtype == DType::i32 && m.first.dtype == DType::i32 && m.keys.numel() == size_t(B * Tn) &&
                 m.first.numel() == size_t(B),
             op, ": the key mask must be i32 [", B, ", ", Tn, "] with first [", B, "], got ", m.keys.shape.str(), " ",
             dtype_name(m.keys.dtype), " and ", m.first.shape.str());
  }
  static const int32_t* mask_keys(const AttnMask& m) { return m.empty() ? nullptr : m.keys.ptr<int32_t>(); }

  void qkv_rotary_cache(Tensor q, Tensor kc, Tensor vc, Tensor qkv, int64_t pos0, RotaryParams rope) override {
    const auto B = q.dim(0), H = q.dim(1), Tn = q.dim(2), hd = q.dim(3), Tmax = kc.dim(2);
    BT_CHECK(kc.shape == vc.shape && kc.dim(0) == B && kc.dim(1) == H && kc.dim(3) == hd &&
                 qkv.numel() == 3 * q.numel(),
             "qkv_rotary_cache: q ", q.shape.str(), " kc ", kc.shape.str(), " vc ", vc.shape.str(), " qkv ",
             qkv.shape.str());
    cpu::qkv_rotary_cache(p(q), p(kc), p(vc), p(qkv), B, (int)Tn, (int)H, (int)hd, (int)Tmax, pos0, rope.rd,
                          rope.base);
  }
  void attention_cached(Tensor out, Tensor q, Tensor kc, Tensor vc, Tensor start, int64_t pos0) override {
    const auto B = q.dim(0), H = q.dim(1), Tn = q.dim(2), hd = q.dim(3), Tmax = kc.dim(2);
    BT_CHECK(kc.shape == vc.shape && kc.dim(0) == B && kc.dim(1) == H && kc.dim(3) == hd &&
                 out.numel() == q.numel() && (start.empty() || start.numel() == static_cast<size_t>(B)),
             "attention_cached: out ", out.shape.str(), " q ", q.shape.str(), " kc ", kc.shape.str(), " start ",
             start.shape.str());
    cpu::attention_cached(p(out), p(q), p(kc), p(vc), start.empty() ? nullptr : start.ptr<int32_t>(), B, (int)Tn,
                          (int)H, (int)hd, (int)Tmax, pos0);
  }

  void gelu_forward(Tensor out, Tensor x) override { cpu::gelu_forward(p(out), p(x), x.numel()); }
  void gelu_backward(Tensor dx, Tensor dout, Tensor x, Grad mode) override {
    if (mode == Grad::overwrite) zero(dx);
    cpu::gelu_backward(p(dx), p(dout), p(x), x.numel());
  }
  void add_forward(Tensor out, Tensor a, Tensor b, Tensor c) override {
    BT_CHECK(a.numel() == out.numel() && b.numel() == out.numel() && (c.empty() || c.numel() == out.numel()),
             "add_forward: shapes");
    cpu::add_forward(p(out), p(a), p(b), p(c), out.numel());
  }
  void accumulate(Tensor dst, Tensor src) override {
    BT_CHECK(dst.numel() == src.numel(), "accumulate: ", dst.shape.str(), " += ", src.shape.str());
    cpu::accumulate(p(dst), p(src), dst.numel());
  }

  void td_assemble_forward(Tensor out, Tensor prefix, Tensor tok, int R, int LB) override {
    const auto B = prefix.dim(0), N = prefix.dim(1), D = tok.dim(-1);
    BT_CHECK(out.numel() == (size_t)(B * (N - 1) * (R + LB - 1) * D), "td_assemble_forward: out ", out.shape.str());
    cpu::td_assemble_forward(p(out), p(prefix), p(tok), B, (int)N, R, LB, (int)D);
  }
  void td_assemble_backward(Tensor dprefix, Tensor dtok, Tensor dout, int R, int LB) override {
    const auto B = dprefix.dim(0), N = dprefix.dim(1), D = dtok.dim(-1);
    cpu::td_assemble_backward(p(dprefix), p(dtok), p(dout), B, (int)N, R, LB, (int)D);
  }
  void td_select_forward(Tensor out, Tensor h, int R, int LB) override {
    const auto D = h.dim(-1);
    const size_t rows = h.numel() / static_cast<size_t>((R + LB - 1) * D);
    cpu::td_select_forward(p(out), p(h), rows, R, LB, (int)D);
  }
  void td_select_backward(Tensor dh, Tensor dout, int R, int LB) override {
    const auto D = dh.dim(-1);
    const size_t rows = dh.numel() / static_cast<size_t>((R + LB - 1) * D);
    cpu::td_select_backward(p(dh), p(dout), rows, R, LB, (int)D);
  }
  void transpose_forward(Tensor out, Tensor in) override {
    BT_CHECK(in.shape.ndim == 3 && out.numel() == in.numel(), "transpose_forward: in must be [n, A, C], got ",
             in.shape.str(), " (out ", out.shape.str(), ")");
    cpu::transpose_forward(p(out), p(in), size_t(in.dim(0)), int(in.dim(1)), int(in.dim(2)));
  }
  void transpose_backward(Tensor din, Tensor dout) override {
    BT_CHECK(din.shape.ndim == 3 && dout.numel() == din.numel(), "transpose_backward: din must be [n, A, C], got ",
             din.shape.str(), " (dout ", dout.shape.str(), ")");
    cpu::transpose_backward(p(din), p(dout), size_t(din.dim(0)), int(din.dim(1)), int(din.dim(2)));
  }

  void cross_entropy(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets, double dscale) override {
    const int V = static_cast<int>(logits.dim(-1));
    BT_CHECK(targets.numel() == logits.rows() && losses.numel() == logits.rows(), "cross_entropy: logits ",
             logits.shape.str(), " targets ", targets.shape.str());
    cpu::cross_entropy(p(losses), p(dlogits), p(logits), targets.ptr<int32_t>(), logits.rows(), V, dscale);
  }

  double sum_squares(Tensor g) override {
    // Fixed chunks summed in order: the result does not depend on the number of threads, so
    // the clipping factor (and every run) is reproducible bit for bit on any machine.
    const T* x = p(g);
    const size_t n = g.numel(), chunk = 1 << 16, chunks = (n + chunk - 1) / chunk;
    std::vector<double> part(chunks, 0.0);
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < chunks; ++c) {
      double s = 0;
      for (size_t i = c * chunk; i < std::min(n, (c + 1) * chunk); ++i)
        s += static_cast<double>(x[i]) * static_cast<double>(x[i]);
      part[c] = s;
    }
    double s = 0;
    for (double v : part) s += v;
    return s;
  }
  void scale(Tensor t, double s) override {
    T* x = p(t);
    const size_t n = t.numel();
    const T ts = static_cast<T>(s);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) x[i] *= ts;
  }
  void adamw_update(Tensor param, Tensor master, Tensor grad, Tensor m, Tensor v, const AdamW& h) override {
    // Decoupled weight decay (Loshchilov & Hutter): w -= lr * (mhat / (sqrt(vhat) + eps) + wd * w).
    T* w = p(master.empty() ? param : master);
    T* out = p(param);
    const T* g = p(grad);
    T* mm = p(m);
    T* vv = p(v);
    const size_t n = param.numel();
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) {
      const double gi = g[i];
      const double mi = h.beta1 * mm[i] + (1 - h.beta1) * gi;
      const double vi = h.beta2 * vv[i] + (1 - h.beta2) * gi * gi;
      mm[i] = static_cast<T>(mi);
      vv[i] = static_cast<T>(vi);
      const double mhat = mi / h.c1, vhat = vi / h.c2;
      const double wi = w[i];
      const double upd = wi - h.lr * (mhat / (std::sqrt(vhat) + h.eps) + h.weight_decay * wi);
      w[i] = static_cast<T>(upd);
      out[i] = w[i];
    }
  }

  // ---- decoding on the device (here: host memory) --------------------------------------------
  void sample_tokens(Tensor logits, const DecodeState& st, const SampleParams& sp) override {
    const int64_t B = check_sample_tokens(logits, st, sp);
    const int V = static_cast<int>(logits.dim(-1));
    for (const Tensor* t : {&st.ids, &st.seq, &st.step, &st.done, &st.hist, &st.params})
      BT_CHECK(t->empty() || t->dtype == DType::i32, "sample_tokens: ids, seq, step, done, hist and params are i32");
    const T* x = p(logits);
    int32_t* ids = i32(st.ids);
    int32_t* done = st.done.empty() ? nullptr : i32(st.done);
    int32_t* hist = st.hist.empty() ? nullptr : i32(st.hist);
    const int32_t* seq = i32(st.seq);
    const int32_t* steps = i32(st.step);
    const int64_t step_stride = st.step.numel() == 1 ? 0 : 1;
    const int32_t* params = st.params.empty() ? nullptr : i32(st.params);
    const int64_t W = hist ? st.hist.dim(1) : 1;
#pragma omp parallel if (B >= 4 && size_t(B) * V >= (size_t(1) << 15))
    {
      std::vector<float> row(std::is_same_v<T, float> ? 0 : V);
#pragma omp for schedule(dynamic)
      for (int64_t b = 0; b < B; ++b) {
        const SampleParams rp = params ? unpack_sample_params(params + b * kSampleParamWords) : sp;
        const int32_t step = steps[b * step_stride];
        int32_t id;
        if (done && done[b]) {
          id = rp.eos_id;
        } else {
          const float* r = nullptr;
          if constexpr (std::is_same_v<T, float>) {
            r = x + b * V;
          } else {
            for (int i = 0; i < V; ++i) row[i] = static_cast<float>(x[b * V + i]);
            r = row.data();
          }
          id = sample_row(r, V, rp, static_cast<uint32_t>(seq[b]), static_cast<uint32_t>(step));
          if (done && rp.eos_id >= 0 && id == rp.eos_id) done[b] = 1;
        }
        ids[b] = id;
        if (hist) hist[b * W + step % W] = id;
      }
    }
  }
  void add_i32(Tensor c, const std::vector<int32_t>& add) override {
    BT_CHECK(!add.empty() && add.size() <= 8 && c.numel() % add.size() == 0, "add_i32: ", add.size(),
             " values for a tensor ", c.shape.str());
    int32_t* x = i32(c);
    const size_t n = c.numel() / add.size();
    for (size_t k = 0; k < add.size(); ++k)
      for (size_t i = 0; i < n; ++i) x[k * n + i] += add[k];
  }
  void qkv_rotary_cache_at(Tensor q, Tensor kc, Tensor vc, Tensor qkv, Tensor pos, RotaryParams rope) override {
    if (pos.numel() == 1) return qkv_rotary_cache(q, kc, vc, qkv, position(pos, "qkv_rotary_cache_at"), rope);
    const auto B = q.dim(0), H = q.dim(1), Tn = q.dim(2), hd = q.dim(3), Tmax = kc.dim(2);
    BT_CHECK(kc.shape == vc.shape && kc.dim(0) == B && kc.dim(1) == H && kc.dim(3) == hd &&
                 qkv.numel() == 3 * q.numel() && pos.numel() == size_t(B),
             "qkv_rotary_cache_at: q ", q.shape.str(), " kc ", kc.shape.str(), " vc ", vc.shape.str(), " qkv ",
             qkv.shape.str(), " pos ", pos.shape.str());
    cpu::qkv_rotary_cache(p(q), p(kc), p(vc), p(qkv), B, (int)Tn, (int)H, (int)hd, (int)Tmax, 0, rope.rd, rope.base,
                          i32(pos));
  }
  void attention_cached_at(Tensor out, Tensor q, Tensor kc, Tensor vc, Tensor start, Tensor pos) override {
    if (pos.numel() == 1) return attention_cached(out, q, kc, vc, start, position(pos, "attention_cached_at"));
    const auto B = q.dim(0), H = q.dim(1), Tn = q.dim(2), hd = q.dim(3), Tmax = kc.dim(2);
    BT_CHECK(kc.shape == vc.shape && kc.dim(0) == B && kc.dim(1) == H && kc.dim(3) == hd &&
                 out.numel() == q.numel() && (start.empty() || start.numel() == static_cast<size_t>(B)) &&
                 pos.numel() == size_t(B),
             "attention_cached_at: out ", out.shape.str(), " q ", q.shape.str(), " kc ", kc.shape.str(), " start ",
             start.shape.str(), " pos ", pos.shape.str());
    cpu::attention_cached(p(out), p(q), p(kc), p(vc), start.empty() ? nullptr : start.ptr<int32_t>(), B, (int)Tn,
                          (int)H, (int)hd, (int)Tmax, 0, i32(pos));
  }
  TransferStats transfers() const override { return stats_; }

 private:
  // upload and download wait for the device on CUDA: counted as a synchronization here too.
  void count(uint64_t& bytes, uint64_t& copies, size_t n) {
    bytes += n;
    ++copies;
    ++stats_.syncs;
  }
  static int32_t* i32(const Tensor& t) {
    BT_CHECK(t.device == Device::cpu && t.dtype == DType::i32, "cpu backend: expected an i32 host tensor, got ",
             dtype_name(t.dtype), " ", t.shape.str());
    return t.ptr<int32_t>();
  }
  static int64_t position(const Tensor& pos, const char* op) {
    BT_CHECK(pos.numel() == 1, op, ": pos must be one i32 per call or per row on the device, not ", pos.shape.str());
    return *i32(pos);
  }
  static T* p(const Tensor& t) {
    if (t.empty()) return nullptr;
    BT_CHECK(t.device == Device::cpu, "cpu backend given a tensor on another device");
    return t.ptr<T>();
  }

  std::vector<std::unique_ptr<void, void (*)(void*)>> blocks_;
  size_t allocated_ = 0;
  TransferStats stats_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(DType dtype) {
  if (dtype == DType::f64) return std::make_unique<CpuBackend<double>>();
  BT_CHECK(dtype == DType::f32, "the CPU backend computes in f32 or f64, not ", dtype_name(dtype));
  return std::make_unique<CpuBackend<float>>();
}

}  // namespace bt

// CudaBackend: model/backend.h over the kernels of model/cuda (kernels.h) and cuBLASLt.
// Checks every tensor's device, dtype and size before launching, like the CPU backend does,
// and keeps what the ops share: the stream, the arena, the scratch buffer, the GEMM plan
// cache and the rotary cos/sin tables. Host code only (compiled by the host compiler).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "model/cuda/arena.h"
#include "model/cuda/check.h"
#include "model/cuda/cublaslt.h"
#include "model/cuda/cuda_backend.h"
#include "model/cuda/kernels.h"

namespace bt {
namespace {

#ifdef BT_SIMT
constexpr size_t kGemmWorkspace = 256;  // the emulator's GEMMs need none
#else
constexpr size_t kGemmWorkspace = size_t(32) << 20;
#endif
constexpr size_t MiB = size_t(1) << 20;

class CudaBackend final : public Backend {
 public:
  CudaBackend(DType act, int device) : act_(act), device_(device) {
    BT_CHECK(act == DType::bf16 || act == DType::f32, "the CUDA backend computes in bf16 or f32, not ",
             dtype_name(act), " (train.precision: bf16 | fp32)");
    const int count = cuda_device_count();
    BT_CHECK(device >= 0 && device < count, "CUDA device ", device, " does not exist (", count,
             " visible; check CUDA_VISIBLE_DEVICES and the local rank)");
    BT_CUDA_CHECK(cudaSetDevice(device));
    cudaDeviceProp prop{};
    BT_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    BT_CHECK(prop.major >= 8, "GPU ", prop.name, " is sm_", prop.major, prop.minor,
             "; the CUDA backend needs sm_80 or newer (bf16 tensor cores)");
    device_name_ = prop.name;
    // A blocking stream: work that others queue on the legacy default stream (a cudaMemcpy of
    // ours) stays ordered with it.
    BT_CUDA_CHECK(cudaStreamCreate(&stream_));
    cuda::attention_setup(device);
    gemm_ = std::make_unique<cuda::Gemm>(arena_.alloc(kGemmWorkspace, "the cuBLASLt workspace"), kGemmWorkspace);
  }

  ~CudaBackend() override {
    if (stream_) cudaStreamSynchronize(stream_);
    forget_steps();
    if (std::getenv("BT_CUDA_STATS")) {
      const CudaMemoryStats s = stats();
      std::fprintf(stderr,
                   "cuda backend [%s, %s]: arena %zu MiB used of %zu MiB in %zu blocks, scratch %zu MiB, device %zu "
                   "of %zu MiB in use\n",
                   device_name_.c_str(), dtype_name(act_), s.arena_used / MiB, s.arena_reserved / MiB,
                   s.arena_blocks, s.scratch / MiB, s.device_used / MiB, s.device_total / MiB);
    }
    gemm_.reset();
    if (stream_) cudaStreamDestroy(stream_);
  }

  CudaMemoryStats stats() const {
    CudaMemoryStats s;
    s.arena_used = arena_.used();
    s.arena_reserved = arena_.reserved();
    s.arena_blocks = arena_.blocks();
    s.scratch = scratch_.capacity();
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
      s.device_used = total_b - free_b;
      s.device_total = total_b;
    } else {
      (void)cudaGetLastError();
    }
    return s;
  }
  cudaStream_t stream() const { return stream_; }

  std::string name() const override { return "cuda"; }
  Device device() const override { return Device::cuda; }
  DType act_dtype() const override { return act_; }
  DType grad_dtype() const override { return DType::f32; }

  // ---- memory ---------------------------------------------------------------------------------
  Tensor alloc(Shape s, DType t) override {
    not_capturing("alloc");  // cudaMalloc is not allowed during a capture, and a step's buffers are fixed
    const std::string what = std::string("a ") + dtype_name(t) + " tensor " + s.str();
    return Tensor(arena_.alloc(s.numel() * dtype_size(t), what.c_str()), s, t, Device::cuda);
  }
  void zero(Tensor t) override {
    if (t.empty() || t.numel() == 0) return;
    BT_CUDA_CHECK(cudaMemsetAsync(dev(t, "zero"), 0, t.bytes(), stream_));
  }
  void upload(Tensor dst, const void* host, DType host_t) override {
    if (dst.numel() == 0) return;
    not_capturing("upload");
    void* d = dev(dst, "upload");
    if (host_t == dst.dtype) {
      BT_CUDA_CHECK(cudaMemcpyAsync(d, host, dst.bytes(), cudaMemcpyHostToDevice, stream_));
    } else {
      staging_.resize(dst.bytes());
      convert_dtype(staging_.data(), dst.dtype, host, host_t, dst.numel());
      BT_CUDA_CHECK(cudaMemcpyAsync(d, staging_.data(), dst.bytes(), cudaMemcpyHostToDevice, stream_));
    }
    BT_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the host buffer may go away when we return
    stats_.h2d_bytes += dst.bytes();
    ++stats_.h2d_copies;
    ++stats_.syncs;
  }
  void download(void* host, DType host_t, Tensor src) override {
    if (src.numel() == 0) return;
    not_capturing("download");
    const void* d = dev(src, "download");
    stats_.d2h_bytes += src.bytes();
    ++stats_.d2h_copies;
    ++stats_.syncs;
    if (host_t == src.dtype) {
      BT_CUDA_CHECK(cudaMemcpyAsync(host, d, src.bytes(), cudaMemcpyDeviceToHost, stream_));
      BT_CUDA_CHECK(cudaStreamSynchronize(stream_));
    } else {
      staging_.resize(src.bytes());
      BT_CUDA_CHECK(cudaMemcpyAsync(staging_.data(), d, src.bytes(), cudaMemcpyDeviceToHost, stream_));
      BT_CUDA_CHECK(cudaStreamSynchronize(stream_));
      convert_dtype(host, host_t, staging_.data(), src.dtype, src.numel());
    }
  }
  void synchronize() override {
    not_capturing("synchronize");
    BT_CUDA_CHECK(cudaStreamSynchronize(stream_));
    ++stats_.syncs;
  }

  // ---- embeddings -----------------------------------------------------------------------------
  void embedding_forward(Tensor out, Tensor tokens, Tensor table) override {
    const int C = static_cast<int>(table.dim(1));
    BT_CHECK(out.numel() == tokens.numel() * size_t(C), "embedding_forward: out ", out.shape.str(),
             " does not hold ", tokens.numel(), " rows of ", C);
    act(out, "embedding_forward out");
    act(table, "embedding_forward table");
    cuda::embedding_forward(dev(out, "embedding_forward"), ids(tokens, "embedding_forward tokens"),
                            dev(table, "embedding_forward"), tokens.numel(), C, act_, stream_);
  }
  void embedding_backward(Tensor dtable, Tensor dout, Tensor tokens) override {
    if (dtable.empty() || tokens.numel() == 0) return;
    const int V = static_cast<int>(dtable.dim(0)), C = static_cast<int>(dtable.dim(1));
    const size_t n = tokens.numel();
    BT_CHECK(dout.numel() == n * size_t(C), "embedding_backward: dout ", dout.shape.str(), " is not ", n, " x ", C);
    f32(dtable, "embedding_backward dtable");
    act(dout, "embedding_backward dout");
    cuda::embedding_backward(static_cast<float*>(dev(dtable, "embedding_backward")), dev(dout, "embedding_backward"),
                             ids(tokens, "embedding_backward tokens"),
                             n, V, C, act_, scratch_, stream_);
  }

  // ---- LayerNorm ------------------------------------------------------------------------------
  void layernorm_forward(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor w, Tensor b, double eps) override {
    const int C = static_cast<int>(x.dim(-1));
    BT_CHECK(w.numel() == size_t(C) && b.numel() == size_t(C) && out.numel() == x.numel() &&
                 (mean.empty() || mean.numel() == x.rows()) && (rstd.empty() || rstd.numel() == x.rows()),
             "layernorm_forward: shapes x ", x.shape.str(), " w ", w.shape.str(), " out ", out.shape.str());
    act(out, "layernorm_forward out");
    act(x, "layernorm_forward x");
    act(w, "layernorm_forward w");
    act(b, "layernorm_forward b");
    const DType st = stats_dtype(mean, rstd);
    cuda::layernorm_forward(dev(out, "layernorm_forward"), opt(mean), opt(rstd), dev(x, "layernorm_forward"),
                            dev(w, "layernorm_forward"), dev(b, "layernorm_forward"), x.rows(), C, float(eps), act_,
                            st, stream_);
  }
  void layernorm_backward(Tensor dx, Tensor dw, Tensor db, Tensor dout, Tensor x, Tensor w, Tensor mean,
                          Tensor rstd) override {
    const int C = static_cast<int>(x.dim(-1));
    BT_CHECK(dout.numel() == x.numel() && w.numel() == size_t(C) && mean.numel() == x.rows() &&
                 rstd.numel() == x.rows() && (dx.empty() || dx.numel() == x.numel()) &&
                 (dw.empty() || dw.numel() == size_t(C)) && (db.empty() || db.numel() == size_t(C)),
             "layernorm_backward: shapes x ", x.shape.str(), " dout ", dout.shape.str(), " mean ", mean.shape.str());
    if (!dx.empty()) act(dx, "layernorm_backward dx");
    if (!dw.empty()) f32(dw, "layernorm_backward dw");
    if (!db.empty()) f32(db, "layernorm_backward db");
    act(dout, "layernorm_backward dout");
    act(x, "layernorm_backward x");
    act(w, "layernorm_backward w");
    cuda::layernorm_backward(opt(dx), static_cast<float*>(opt(dw)), static_cast<float*>(opt(db)),
                             dev(dout, "layernorm_backward"), dev(x, "layernorm_backward"),
                             dev(w, "layernorm_backward"), dev(mean, "layernorm_backward"),
                             dev(rstd, "layernorm_backward"), x.rows(), C, act_, stats_dtype(mean, rstd), scratch_,
                             stream_);
  }

  // ---- linear ---------------------------------------------------------------------------------
  void matmul_forward(Tensor out, Tensor inp, Tensor W, Tensor bias) override {
    const int OC = static_cast<int>(W.dim(0)), IC = static_cast<int>(W.dim(1));
    BT_CHECK(inp.dim(-1) == IC && out.dim(-1) == OC && out.rows() == inp.rows() &&
                 (bias.empty() || bias.numel() == size_t(OC)),
             "matmul_forward: inp ", inp.shape.str(), " W ", W.shape.str(), " out ", out.shape.str());
    act(out, "matmul_forward out");
    act(inp, "matmul_forward inp");
    act(W, "matmul_forward W");
    if (!bias.empty()) act(bias, "matmul_forward bias");
    cuda::matmul_forward(*gemm_, dev(out, "matmul_forward"), dev(inp, "matmul_forward"), dev(W, "matmul_forward"),
                         opt(bias), inp.rows(), IC, OC, act_, stream_);
  }
  void matmul_backward(Tensor dinp, Tensor dW, Tensor dbias, Tensor dout, Tensor inp, Tensor W,
                       Grad dinp_mode) override {
    const int OC = static_cast<int>(W.dim(0)), IC = static_cast<int>(W.dim(1));
    BT_CHECK(dout.dim(-1) == OC && dout.rows() == inp.rows() && inp.dim(-1) == IC &&
                 (dinp.empty() || dinp.numel() == inp.numel()) && (dW.empty() || dW.numel() == W.numel()) &&
                 (dbias.empty() || dbias.numel() == size_t(OC)),
             "matmul_backward: dout ", dout.shape.str(), " inp ", inp.shape.str(), " W ", W.shape.str());
    if (!dinp.empty()) act(dinp, "matmul_backward dinp");
    if (!dW.empty()) f32(dW, "matmul_backward dW");
    if (!dbias.empty()) f32(dbias, "matmul_backward dbias");
    act(dout, "matmul_backward dout");
    act(inp, "matmul_backward inp");
    act(W, "matmul_backward W");
    cuda::matmul_backward(*gemm_, opt(dinp), static_cast<float*>(opt(dW)), static_cast<float*>(opt(dbias)),
                          dev(dout, "matmul_backward"), dev(inp, "matmul_backward"), dev(W, "matmul_backward"),
                          inp.rows(), IC, OC, act_, dinp_mode == Grad::overwrite, scratch_, stream_);
  }

  // ---- attention ------------------------------------------------------------------------------
  void qkv_rotary_forward(Tensor q, Tensor k, Tensor v, Tensor qkv, RotaryParams rope) override {
    const auto B = q.dim(0), H = q.dim(1), Tn = q.dim(2), hd = q.dim(3);
    BT_CHECK(q.shape.ndim == 4 && k.numel() == q.numel() && v.numel() == q.numel() && qkv.numel() == 3 * q.numel(),
             "qkv_rotary_forward: qkv ", qkv.shape.str(), " q ", q.shape.str());
    for (const Tensor* t : {&q, &k, &v, &qkv}) act(*t, "qkv_rotary_forward");
    const Rope r = rope_table(rope, int(hd), Tn);
    cuda::qkv_rotary_forward(dev(q, "qkv_rotary_forward"), dev(k, "qkv_rotary_forward"),
                             dev(v, "qkv_rotary_forward"), dev(qkv, "qkv_rotary_forward"), int(B), int(Tn), int(H),
                             int(hd), rope.rd, r.cos, r.sin, act_, stream_);
  }
  void qkv_rotary_backward(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv, RotaryParams rope, Grad mode) override {
    if (dqkv.empty()) return;
    const Tensor& ref = !dq.empty() ? dq : (!dk.empty() ? dk : dv);
    if (ref.empty()) {  // no contributions: overwriting leaves zeros
      if (mode == Grad::overwrite) zero(dqkv);
      return;
    }
    const auto B = ref.dim(0), H = ref.dim(1), Tn = ref.dim(2), hd = ref.dim(3);
    BT_CHECK(ref.shape.ndim == 4 && dqkv.numel() == 3 * ref.numel(), "qkv_rotary_backward: dqkv ",
             dqkv.shape.str(), " dq ", ref.shape.str());
    act(dqkv, "qkv_rotary_backward dqkv");
    for (const Tensor* t : {&dq, &dk, &dv})
      if (!t->empty()) {
        act(*t, "qkv_rotary_backward");
        BT_CHECK(t->numel() == ref.numel(), "qkv_rotary_backward: dq, dk, dv differ in size");
      }
    const Rope r = rope_table(rope, int(hd), Tn);
    cuda::qkv_rotary_backward(dev(dqkv, "qkv_rotary_backward"), opt(dq), opt(dk), opt(dv), int(B), int(Tn), int(H), int(hd), rope.rd,
                              r.cos, r.sin, act_, mode == Grad::overwrite, stream_);
  }
  Shape attention_stats_shape(int64_t B, int64_t H, int64_t Tn) const override { return Shape{B, H, Tn}; }
  DType attention_stats_dtype() const override { return DType::f32; }
  // The key mask's device pointers (both null for an empty mask), checked against [B, T].
  std::pair<const int32_t*, const int32_t*> mask_ptrs(const AttnMask& m, int64_t B, int64_t Tn, const char* op) {
    if (m.empty()) return {nullptr, nullptr};
    BT_CHECK(m.keys.numel() == size_t(B * Tn) && m.first.numel() == size_t(B), op, ": the key mask must be [", B,
             ", ", Tn, "] with first [", B, "], got ", m.keys.shape.str(), " and ", m.first.shape.str());
    return {ids(m.keys, op), ids(m.first, op)};
  }
  void attention_forward(Tensor out, Tensor stats, Tensor q, Tensor k, Tensor v, const AttnMask& mask) override {
    const auto B = q.dim(0), H = q.dim(1), Tn = q.dim(2), hd = q.dim(3);
    BT_CHECK(q.shape.ndim == 4 && k.numel() == q.numel() && v.numel() == q.numel() && out.numel() == q.numel() &&
                 stats.numel() == size_t(B * H * Tn),
             "attention_forward: q ", q.shape.str(), " out ", out.shape.str(), " stats ", stats.shape.str());
    for (const Tensor* t : {&out, &q, &k, &v}) act(*t, "attention_forward");
    f32(stats, "attention_forward stats (log-sum-exp)");
    for (const Tensor* t : {&out, &stats, &q, &k, &v}) dev(*t, "attention_forward");
    const auto [keys, first] = mask_ptrs(mask, B, Tn, "attention_forward mask");
    cuda::attention_forward(out.data, static_cast<float*>(stats.data), q.data, k.data, v.data, int(B), int(H),
                            int(Tn), int(hd), act_, keys, first, stream_);
  }
  void attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor out, Tensor stats, Tensor q,
                          Tensor k, Tensor v, Grad mode, const AttnMask& mask) override {
    const auto B = q.dim(0), H = q.dim(1), Tn = q.dim(2), hd = q.dim(3);
    BT_CHECK(q.shape.ndim == 4 && dout.numel() == q.numel() && out.numel() == q.numel() &&
                 stats.numel() == size_t(B * H * Tn) && (dq.empty() || dq.numel() == q.numel()) &&
                 (dk.empty() || dk.numel() == q.numel()) && (dv.empty() || dv.numel() == q.numel()),
             "attention_backward: q ", q.shape.str(), " dout ", dout.shape.str(), " stats ", stats.shape.str());
    for (const Tensor* t : {&dout, &out, &q, &k, &v}) act(*t, "attention_backward");
    for (const Tensor* t : {&dq, &dk, &dv})
      if (!t->empty()) act(*t, "attention_backward");
    f32(stats, "attention_backward stats");
    for (const Tensor* t : {&dout, &out, &stats, &q, &k, &v}) dev(*t, "attention_backward");
    const auto [keys, first] = mask_ptrs(mask, B, Tn, "attention_backward mask");
    cuda::attention_backward(opt(dq), opt(dk), opt(dv), dout.data, out.data, static_cast<const float*>(stats.data),
                             q.data, k.data, v.data, int(B), int(H), int(Tn), int(hd), act_, keys, first,
                             mode == Grad::overwrite, scratch_, stream_);
  }

  // ---- inference ------------------------------------------------------------------------------
  void qkv_rotary_cache(Tensor q, Tensor kc, Tensor vc, Tensor qkv, int64_t pos0, RotaryParams rope) override {
    const auto B = q.dim(0), H = q.dim(1), Tn = q.dim(2), hd = q.dim(3), Tmax = kc.dim(2);
    BT_CHECK(q.shape.ndim == 4 && kc.shape.ndim == 4 && kc.dim(0) == B && kc.dim(1) == H && kc.dim(3) == hd &&
                 vc.shape == kc.shape && qkv.numel() == 3 * q.numel(),
             "qkv_rotary_cache: q ", q.shape.str(), " kc ", kc.shape.str(), " qkv ", qkv.shape.str());
    BT_CHECK(pos0 >= 0 && pos0 + Tn <= Tmax, "qkv_rotary_cache: positions ", pos0, "..", pos0 + Tn - 1,
             " do not fit the cache of ", Tmax);
    for (const Tensor* t : {&q, &kc, &vc, &qkv}) act(*t, "qkv_rotary_cache");
    const Rope r = rope_table(rope, int(hd), pos0 + Tn);
    for (const Tensor* t : {&q, &kc, &vc}) dev(*t, "qkv_rotary_cache");
    cuda::qkv_rotary_cache(q.data, kc.data, vc.data, dev(qkv, "qkv_rotary_cache"), int(B), int(Tn), int(H),
                           int(hd), rope.rd, pos0, Tmax, r.cos, r.sin, act_, stream_);
  }
  void attention_cached(Tensor out, Tensor q, Tensor kc, Tensor vc, Tensor start, int64_t pos0) override {
    const auto B = q.dim(0), H = q.dim(1), Tn = q.dim(2), hd = q.dim(3), Tmax = kc.dim(2);
    BT_CHECK(q.shape.ndim == 4 && kc.shape.ndim == 4 && kc.dim(0) == B && kc.dim(1) == H && kc.dim(3) == hd &&
                 vc.shape == kc.shape && out.numel() == q.numel() && pos0 >= 0 && pos0 + Tn <= Tmax &&
                 (start.empty() || start.numel() == size_t(B)),
             "attention_cached: q ", q.shape.str(), " kc ", kc.shape.str(), " out ", out.shape.str(), " pos0 ", pos0);
    for (const Tensor* t : {&out, &q, &kc, &vc}) act(*t, "attention_cached");
    const int32_t* st = start.empty() ? nullptr : ids(start, "attention_cached start");
    for (const Tensor* t : {&q, &kc, &vc}) dev(*t, "attention_cached");
    cuda::attention_cached(dev(out, "attention_cached"), q.data, kc.data, vc.data, st, int(B), int(H), int(Tn),
                           int(hd), pos0, Tmax, act_, stream_);
  }

  // ---- pointwise ------------------------------------------------------------------------------
  void gelu_forward(Tensor out, Tensor x) override {
    BT_CHECK(out.numel() == x.numel(), "gelu_forward: ", out.shape.str(), " vs ", x.shape.str());
    act(out, "gelu_forward");
    act(x, "gelu_forward");
    cuda::gelu_forward(dev(out, "gelu_forward"), dev(x, "gelu_forward"), x.numel(), act_, stream_);
  }
  void gelu_backward(Tensor dx, Tensor dout, Tensor x, Grad mode) override {
    if (dx.empty()) return;
    BT_CHECK(dx.numel() == x.numel() && dout.numel() == x.numel(), "gelu_backward: shapes");
    for (const Tensor* t : {&dx, &dout, &x}) act(*t, "gelu_backward");
    cuda::gelu_backward(dev(dx, "gelu_backward"), dev(dout, "gelu_backward"), dev(x, "gelu_backward"), x.numel(),
                        act_, mode == Grad::overwrite, stream_);
  }
  void add_forward(Tensor out, Tensor a, Tensor b, Tensor c) override {
    BT_CHECK(a.numel() == out.numel() && b.numel() == out.numel() && (c.empty() || c.numel() == out.numel()),
             "add_forward: shapes");
    for (const Tensor* t : {&out, &a, &b}) act(*t, "add_forward");
    if (!c.empty()) act(c, "add_forward");
    cuda::add_forward(dev(out, "add_forward"), dev(a, "add_forward"), dev(b, "add_forward"), opt(c), out.numel(),
                      act_, stream_);
  }
  void residual_layernorm_forward(Tensor out, Tensor a, Tensor b, Tensor c, const LayerNormOut& ln1,
                                  const LayerNormOut& ln2, double eps) override {
    const int C = static_cast<int>(out.dim(-1));
    const size_t n = out.rows();
    BT_CHECK(a.numel() == out.numel() && b.numel() == out.numel() && (c.empty() || c.numel() == out.numel()),
             "residual_layernorm_forward: out ", out.shape.str(), " a ", a.shape.str(), " b ", b.shape.str());
    for (const Tensor* t : {&out, &a, &b}) act(*t, "residual_layernorm_forward");
    if (!c.empty()) act(c, "residual_layernorm_forward");
    auto check_ln = [&](const LayerNormOut& l) {
      BT_CHECK(l.out.numel() == out.numel() && l.w.numel() == size_t(C) && l.b.numel() == size_t(C) &&
                   (l.mean.empty() || l.mean.numel() == n) && (l.rstd.empty() || l.rstd.numel() == n),
               "residual_layernorm_forward: LayerNorm out ", l.out.shape.str(), " w ", l.w.shape.str(), " for ",
               out.shape.str());
      for (const Tensor* t : {&l.out, &l.w, &l.b}) act(*t, "residual_layernorm_forward LayerNorm");
    };
    check_ln(ln1);
    const bool two = !ln2.out.empty();
    if (two) {
      check_ln(ln2);
      BT_CHECK(stats_dtype(ln2.mean, ln2.rstd) == stats_dtype(ln1.mean, ln1.rstd),
               "residual_layernorm_forward: the two LayerNorms' statistics differ in dtype");
    }
    cuda::residual_layernorm_forward(
        dev(out, "residual_layernorm_forward"), dev(a, "residual_layernorm_forward"),
        dev(b, "residual_layernorm_forward"), opt(c), dev(ln1.out, "residual_layernorm_forward"), opt(ln1.mean),
        opt(ln1.rstd), dev(ln1.w, "residual_layernorm_forward"), dev(ln1.b, "residual_layernorm_forward"),
        two ? dev(ln2.out, "residual_layernorm_forward") : nullptr, two ? opt(ln2.mean) : nullptr,
        two ? opt(ln2.rstd) : nullptr, two ? dev(ln2.w, "residual_layernorm_forward") : nullptr,
        two ? dev(ln2.b, "residual_layernorm_forward") : nullptr, n, C, float(eps), act_,
        stats_dtype(ln1.mean, ln1.rstd), stream_);
  }
  void accumulate(Tensor dst, Tensor src) override {
    BT_CHECK(dst.numel() == src.numel(), "accumulate: ", dst.shape.str(), " += ", src.shape.str());
    cuda::accumulate(dev(dst, "accumulate"), dst.dtype, dev(src, "accumulate"), src.dtype, dst.numel(), stream_);
  }

  // ---- Block Transformer glue ------------------------------------------------------------------
  void td_assemble_forward(Tensor out, Tensor prefix, Tensor tok, int R, int LB) override {
    const auto B = prefix.dim(0), N = prefix.dim(1), D = tok.dim(-1);
    BT_CHECK(out.numel() == size_t(B * (N - 1) * (R + LB - 1) * D) && prefix.numel() == size_t(B * N * R * D) &&
                 tok.numel() == size_t(B * N * LB * D),
             "td_assemble_forward: out ", out.shape.str(), " prefix ", prefix.shape.str(), " tok ", tok.shape.str());
    for (const Tensor* t : {&out, &prefix, &tok}) act(*t, "td_assemble_forward");
    cuda::td_assemble_forward(dev(out, "td_assemble_forward"), dev(prefix, "td_assemble_forward"),
                              dev(tok, "td_assemble_forward"), int(B), int(N), R, LB, int(D), act_, stream_);
  }
  void td_assemble_backward(Tensor dprefix, Tensor dtok, Tensor dout, int R, int LB) override {
    const auto B = dprefix.dim(0), N = dprefix.dim(1), D = dtok.dim(-1);
    BT_CHECK(dout.numel() == size_t(B * (N - 1) * (R + LB - 1) * D) && dprefix.numel() == size_t(B * N * R * D) &&
                 dtok.numel() == size_t(B * N * LB * D),
             "td_assemble_backward: dout ", dout.shape.str(), " dprefix ", dprefix.shape.str(), " dtok ",
             dtok.shape.str());
    for (const Tensor* t : {&dprefix, &dtok, &dout}) act(*t, "td_assemble_backward");
    cuda::td_assemble_backward(opt(dprefix), opt(dtok), dev(dout, "td_assemble_backward"), int(B), int(N), R, LB,
                               int(D), act_, stream_);
  }
  void td_select_forward(Tensor out, Tensor h, int R, int LB) override {
    const auto D = h.dim(-1);
    const size_t rows = h.numel() / size_t((R + LB - 1) * D);
    BT_CHECK(out.numel() == rows * LB * D, "td_select_forward: out ", out.shape.str(), " h ", h.shape.str());
    act(out, "td_select_forward");
    act(h, "td_select_forward");
    cuda::td_select_forward(dev(out, "td_select_forward"), dev(h, "td_select_forward"), rows, R, LB, int(D), act_,
                            stream_);
  }
  void td_select_backward(Tensor dh, Tensor dout, int R, int LB) override {
    if (dh.empty()) return;
    const auto D = dh.dim(-1);
    const size_t rows = dh.numel() / size_t((R + LB - 1) * D);
    BT_CHECK(dout.numel() == rows * LB * D, "td_select_backward: dout ", dout.shape.str(), " dh ", dh.shape.str());
    act(dh, "td_select_backward");
    act(dout, "td_select_backward");
    cuda::td_select_backward(dev(dh, "td_select_backward"), dev(dout, "td_select_backward"), rows, R, LB, int(D),
                             act_, stream_);
  }

  void transpose_forward(Tensor out, Tensor in) override {
    BT_CHECK(in.shape.ndim == 3 && out.numel() == in.numel(), "transpose_forward: in must be [n, A, C], got ",
             in.shape.str(), " (out ", out.shape.str(), ")");
    act(out, "transpose_forward");
    act(in, "transpose_forward");
    cuda::transpose_forward(dev(out, "transpose_forward"), dev(in, "transpose_forward"), size_t(in.dim(0)),
                            int(in.dim(1)), int(in.dim(2)), act_, stream_);
  }
  void transpose_backward(Tensor din, Tensor dout) override {
    BT_CHECK(din.shape.ndim == 3 && dout.numel() == din.numel(), "transpose_backward: din must be [n, A, C], got ",
             din.shape.str(), " (dout ", dout.shape.str(), ")");
    act(din, "transpose_backward");
    act(dout, "transpose_backward");
    cuda::transpose_backward(dev(din, "transpose_backward"), dev(dout, "transpose_backward"), size_t(din.dim(0)),
                             int(din.dim(1)), int(din.dim(2)), act_, stream_);
  }

  // ---- classifier -----------------------------------------------------------------------------
  void cross_entropy(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets, double dscale) override {
    const int V = static_cast<int>(logits.dim(-1));
    BT_CHECK(targets.numel() == logits.rows() && losses.numel() == logits.rows() &&
                 (dlogits.empty() || dlogits.numel() == logits.numel()),
             "cross_entropy: logits ", logits.shape.str(), " targets ", targets.shape.str(), " losses ",
             losses.shape.str());
    f32(losses, "cross_entropy losses");
    act(logits, "cross_entropy logits");
    if (!dlogits.empty()) act(dlogits, "cross_entropy dlogits");
    cuda::cross_entropy(static_cast<float*>(dev(losses, "cross_entropy")), opt(dlogits),
                        dev(logits, "cross_entropy"), ids(targets, "cross_entropy targets"), logits.rows(), V,
                        float(dscale), act_, stream_);
  }

  // ---- optimizer ------------------------------------------------------------------------------
  double sum_squares(Tensor g) override {
    if (g.empty() || g.numel() == 0) return 0.0;
    not_capturing("sum_squares");
    stats_.d2h_bytes += sizeof(double);  // the result comes back to the host
    ++stats_.d2h_copies;
    ++stats_.syncs;
    return cuda::sum_squares(dev(g, "sum_squares"), g.numel(), g.dtype, scratch_, stream_);
  }
  void scale(Tensor t, double s) override {
    if (t.empty()) return;
    cuda::scale(dev(t, "scale"), t.numel(), float(s), t.dtype, stream_);
  }
  void adamw_update(Tensor param, Tensor master, Tensor grad, Tensor m, Tensor v, const AdamW& h) override {
    const size_t n = param.numel();
    BT_CHECK(grad.numel() == n && m.numel() == n && v.numel() == n && (master.empty() || master.numel() == n),
             "adamw_update: param ", param.shape.str(), " grad ", grad.shape.str(), " m ", m.shape.str());
    f32(grad, "adamw_update grad");
    f32(m, "adamw_update m");
    f32(v, "adamw_update v");
    if (!master.empty()) f32(master, "adamw_update master");
    const cuda::AdamWArgs a{float(h.lr),           float(h.beta1),       float(h.beta2), float(h.eps),
                            float(h.weight_decay), float(1.0 / h.c1), float(1.0 / h.c2)};
    cuda::adamw_update(dev(param, "adamw_update"), param.dtype, static_cast<float*>(opt(master)),
                       static_cast<const float*>(grad.data), static_cast<float*>(m.data),
                       static_cast<float*>(v.data), n, a, stream_);
  }

  // ---- decoding on the device ------------------------------------------------------------------
  void sample_tokens(Tensor logits, const DecodeState& st, const SampleParams& p) override {
    const int64_t B = check_sample_tokens(logits, st, p);
    const int V = static_cast<int>(logits.dim(-1));
    act(logits, "sample_tokens logits");
    int32_t* hist = st.hist.empty() ? nullptr : const_cast<int32_t*>(ids(st.hist, "sample_tokens hist"));
    int32_t* done = st.done.empty() ? nullptr : const_cast<int32_t*>(ids(st.done, "sample_tokens done"));
    cuda::sample_tokens(dev(logits, "sample_tokens"), int(B), V, act_,
                        const_cast<int32_t*>(ids(st.ids, "sample_tokens ids")), hist,
                        hist ? int(st.hist.dim(1)) : 1, done, ids(st.seq, "sample_tokens seq"),
                        ids(st.step, "sample_tokens step"), st.step.numel() == 1 ? 0 : 1,
                        st.params.empty() ? nullptr : ids(st.params, "sample_tokens params"), p, stream_);
  }
  void add_i32(Tensor c, const std::vector<int32_t>& add) override {
    BT_CHECK(!add.empty() && add.size() <= 8 && c.numel() % add.size() == 0, "add_i32: ", add.size(),
             " values for a tensor ", c.shape.str());
    cuda::add_i32(const_cast<int32_t*>(ids(c, "add_i32")), add.data(), int(add.size()),
                  int64_t(c.numel() / add.size()), stream_);
  }
  void qkv_rotary_cache_at(Tensor q, Tensor kc, Tensor vc, Tensor qkv, Tensor pos, RotaryParams rope) override {
    const auto B = q.dim(0), H = q.dim(1), Tn = q.dim(2), hd = q.dim(3), Tmax = kc.dim(2);
    BT_CHECK(q.shape.ndim == 4 && kc.shape.ndim == 4 && kc.dim(0) == B && kc.dim(1) == H && kc.dim(3) == hd &&
                 vc.shape == kc.shape && qkv.numel() == 3 * q.numel() &&
                 (pos.numel() == 1 || pos.numel() == size_t(B)) && Tn <= Tmax,
             "qkv_rotary_cache_at: q ", q.shape.str(), " kc ", kc.shape.str(), " qkv ", qkv.shape.str(), " pos ",
             pos.shape.str());
    for (const Tensor* t : {&q, &kc, &vc, &qkv}) act(*t, "qkv_rotary_cache_at");
    const Rope r = rope_table(rope, int(hd), Tmax);  // any position of the cache
    for (const Tensor* t : {&q, &kc, &vc}) dev(*t, "qkv_rotary_cache_at");
    cuda::qkv_rotary_cache(q.data, kc.data, vc.data, dev(qkv, "qkv_rotary_cache_at"), int(B), int(Tn), int(H),
                           int(hd), rope.rd, 0, Tmax, r.cos, r.sin, act_, stream_, ids(pos, "qkv_rotary_cache_at pos"),
                           pos.numel() == 1 ? 0 : 1);
  }
  void attention_cached_at(Tensor out, Tensor q, Tensor kc, Tensor vc, Tensor start, Tensor pos) override {
    const auto B = q.dim(0), H = q.dim(1), Tn = q.dim(2), hd = q.dim(3), Tmax = kc.dim(2);
    BT_CHECK(q.shape.ndim == 4 && kc.shape.ndim == 4 && kc.dim(0) == B && kc.dim(1) == H && kc.dim(3) == hd &&
                 vc.shape == kc.shape && out.numel() == q.numel() && Tn <= Tmax &&
                 (pos.numel() == 1 || pos.numel() == size_t(B)) &&
                 (start.empty() || start.numel() == size_t(B)),
             "attention_cached_at: q ", q.shape.str(), " kc ", kc.shape.str(), " out ", out.shape.str(), " pos ",
             pos.shape.str());
    for (const Tensor* t : {&out, &q, &kc, &vc}) act(*t, "attention_cached_at");
    const int32_t* st = start.empty() ? nullptr : ids(start, "attention_cached_at start");
    for (const Tensor* t : {&q, &kc, &vc}) dev(*t, "attention_cached_at");
    cuda::attention_cached(dev(out, "attention_cached_at"), q.data, kc.data, vc.data, st, int(B), int(H), int(Tn),
                           int(hd), 0, Tmax, act_, stream_, ids(pos, "attention_cached_at pos"), pos.numel() == 1 ? 0 : 1);
  }
  TransferStats transfers() const override { return stats_; }

  // Replayable steps as CUDA graphs: the first call of a key runs plainly, the second captures
  // the stream into a graph (thread-local capture mode: a synchronizing call inside fails) and
  // launches it, later calls only launch it.
  void run_step(uint64_t key, const std::function<void()>& ops) override {
    if (!graphs_) {
      ops();
      return;
    }
    StepGraph& g = steps_[key];
    if (g.exec) {
      BT_CUDA_CHECK(cudaGraphLaunch(g.exec, stream_));
      ++graph_stats_.replays;
      return;
    }
    if (g.calls++ == 0) {
      ops();
      return;
    }
    BT_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    capturing_ = true;
    try {
      ops();
    } catch (...) {
      capturing_ = false;
      cudaGraph_t broken = nullptr;
      cudaStreamEndCapture(stream_, &broken);
      if (broken) cudaGraphDestroy(broken);
      (void)cudaGetLastError();
      throw;
    }
    capturing_ = false;
    cudaGraph_t graph = nullptr;
    BT_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
    const cudaError_t e = cudaGraphInstantiate(&g.exec, graph, 0);
    cudaGraphDestroy(graph);
    BT_CUDA_CHECK(e);
    ++graph_stats_.captures;
    BT_CUDA_CHECK(cudaGraphLaunch(g.exec, stream_));
    ++graph_stats_.replays;
  }
  void forget_steps() override {
    for (auto& [key, g] : steps_)
      if (g.exec) cudaGraphExecDestroy(g.exec);
    steps_.clear();
  }
  void set_graphs(bool on) {
    if (!on) forget_steps();
    graphs_ = on;
  }
  CudaGraphStats graph_stats() const {
    CudaGraphStats s = graph_stats_;
    s.enabled = graphs_;
    s.graphs = steps_.size();
    return s;
  }

 private:
  struct Rope {
    const float* cos = nullptr;  // [positions, rd/2]
    const float* sin = nullptr;
  };
  struct RopeTable {
    float* cos = nullptr;
    float* sin = nullptr;
    int64_t positions = 0;
  };

  // cos/sin tables covering positions 0 .. positions-1 for (rd, base); computed on the host in
  // double like the CPU reference, grown by doubling (old tables stay in the arena: queued
  // kernels may still read them).
  Rope rope_table(const RotaryParams& rope, int hd, int64_t positions) {
    BT_CHECK(rope.rd >= 0 && rope.rd <= hd && rope.rd % 2 == 0, "rotary dims ", rope.rd,
             " must be even and within the head dim ", hd,
             " (rotary_pct gives an odd or too large count; pick a head dim that makes it even)");
    if (rope.rd == 0 || positions == 0) return {};
    RopeTable& t = ropes_[{rope.rd, rope.base}];
    if (t.positions < positions) {
      const int64_t P = std::max<int64_t>(positions, 2 * t.positions);
      const int half = rope.rd / 2;
      std::vector<float> c(size_t(P) * half), s(size_t(P) * half);
      for (int i = 0; i < half; ++i) {
        const double inv_freq = std::pow(rope.base, -2.0 * i / rope.rd);
        for (int64_t p = 0; p < P; ++p) {
          const double a = double(p) * inv_freq;
          c[size_t(p) * half + i] = float(std::cos(a));
          s[size_t(p) * half + i] = float(std::sin(a));
        }
      }
      not_capturing("growing the rotary tables");
      t.cos = static_cast<float*>(arena_.alloc(c.size() * 4, "rotary cos table"));
      t.sin = static_cast<float*>(arena_.alloc(s.size() * 4, "rotary sin table"));
      BT_CUDA_CHECK(cudaMemcpyAsync(t.cos, c.data(), c.size() * 4, cudaMemcpyHostToDevice, stream_));
      BT_CUDA_CHECK(cudaMemcpyAsync(t.sin, s.data(), s.size() * 4, cudaMemcpyHostToDevice, stream_));
      BT_CUDA_CHECK(cudaStreamSynchronize(stream_));
      stats_.h2d_bytes += 8 * c.size();
      stats_.h2d_copies += 2;
      ++stats_.syncs;
      t.positions = P;
    }
    return {t.cos, t.sin};
  }

  // Host-synchronizing calls cannot be part of a graph: a step that makes one is a bug.
  void not_capturing(const char* what) const {
    BT_CHECK(!capturing_, what, " inside a replayable step (Backend::run_step): a captured step must stay on the "
             "device; move the transfer out of the step");
  }
  void* dev(const Tensor& t, const char* op) const {
    BT_CHECK(!t.empty(), op, ": a required tensor is empty");
    BT_CHECK(t.device == Device::cuda, op, ": tensor ", t.shape.str(),
             " is in host memory; the CUDA backend takes tensors it allocated (use upload)");
    return t.data;
  }
  void* opt(const Tensor& t) const { return t.empty() ? nullptr : dev(t, "cuda op"); }
  void act(const Tensor& t, const char* op) const {
    BT_CHECK(t.dtype == act_, op, ": tensor ", t.shape.str(), " is ", dtype_name(t.dtype), ", expected ",
             dtype_name(act_), " (the backend's activation dtype)");
  }
  void f32(const Tensor& t, const char* op) const {
    BT_CHECK(t.dtype == DType::f32, op, ": tensor ", t.shape.str(), " is ", dtype_name(t.dtype),
             ", expected f32 (gradients of parameters, statistics and optimizer state are f32)");
  }
  const int32_t* ids(const Tensor& t, const char* op) const {
    BT_CHECK(t.dtype == DType::i32, op, ": ids must be i32, not ", dtype_name(t.dtype));
    return static_cast<const int32_t*>(dev(t, op));
  }
  DType stats_dtype(const Tensor& mean, const Tensor& rstd) const {
    const Tensor& s = mean.empty() ? rstd : mean;
    if (s.empty()) return act_;
    BT_CHECK(mean.empty() || rstd.empty() || mean.dtype == rstd.dtype, "layernorm: mean and rstd dtypes differ");
    return s.dtype;
  }

  DType act_;
  int device_;
  std::string device_name_;
  cudaStream_t stream_ = nullptr;
  cuda::Arena arena_;
  cuda::Scratch scratch_;
  std::unique_ptr<cuda::Gemm> gemm_;  // after arena_: destroyed before its workspace goes
  std::map<std::pair<int, double>, RopeTable> ropes_;
  std::vector<unsigned char> staging_;
  TransferStats stats_;
  struct StepGraph {
    int calls = 0;
    cudaGraphExec_t exec = nullptr;
  };
  std::map<uint64_t, StepGraph> steps_;
  bool graphs_ = [] {
    const char* e = std::getenv("BT_CUDA_GRAPHS");
    return !(e && std::string(e) == "0");
  }();
  bool capturing_ = false;
  CudaGraphStats graph_stats_;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(DType act_dtype, int device) {
  return std::make_unique<CudaBackend>(act_dtype, device);
}

void* cuda_stream(Backend& be) {
  auto* c = dynamic_cast<CudaBackend*>(&be);
  return c ? static_cast<void*>(c->stream()) : nullptr;
}

void cuda_set_graphs(Backend& be, bool on) {
  if (auto* c = dynamic_cast<CudaBackend*>(&be)) c->set_graphs(on);
}

CudaGraphStats cuda_graph_stats(Backend& be) {
  auto* c = dynamic_cast<CudaBackend*>(&be);
  return c ? c->graph_stats() : CudaGraphStats{};
}

CudaMemoryStats cuda_memory_stats(Backend& be) {
  auto* c = dynamic_cast<CudaBackend*>(&be);
  return c ? c->stats() : CudaMemoryStats{};
}

}  // namespace bt

// AdamW over pieces of the flat buffer: each parameter tensor (or its part inside the shard)
// is one backend call with its own weight-decay setting.
#include "optim/adamw.h"

#include <algorithm>
#include <cmath>

namespace bt {

namespace {
Tensor sub(Tensor flat, size_t offset, size_t n) {
  return Tensor(static_cast<char*>(flat.data) + offset * dtype_size(flat.dtype), {static_cast<int64_t>(n)},
                flat.dtype, flat.device);
}
}  // namespace

AdamW::AdamW(Model& model, const OptimConfig& o, size_t begin, size_t end)
    : model_(model), o_(o), begin_(begin), end_(std::min(end, model.table().total())) {
  BT_CHECK(begin_ < end_, "AdamW: empty parameter range");
  Backend& be = model.backend();
  const int64_t n = static_cast<int64_t>(end_ - begin_);
  m_ = be.alloc({n}, be.grad_dtype());
  v_ = be.alloc({n}, be.grad_dtype());
  be.zero(m_);
  be.zero(v_);
  if (be.act_dtype() != be.grad_dtype()) {
    master_ = be.alloc({n}, be.grad_dtype());
    sync_master_from_params();
  }
  for (const auto& p : model.table().entries()) {
    const size_t a = std::max(p.offset, begin_), b = std::min(p.offset + p.numel, end_);
    if (a < b) pieces_.push_back({a, b - a, param_decays(p, o.decay)});
  }
}

void AdamW::sync_master_from_params() {
  if (master_.empty()) return;
  Backend& be = model_.backend();
  std::vector<float> host(end_ - begin_);
  be.download(host.data(), DType::f32, sub(model_.params(), begin_, end_ - begin_));
  be.upload(master_, host.data(), DType::f32);
}

void AdamW::get_state(float* m, float* v, float* master) const {
  Backend& be = model_.backend();
  be.download(m, DType::f32, m_);
  be.download(v, DType::f32, v_);
  if (master) {
    if (master_.empty())
      be.download(master, DType::f32, sub(model_.params(), begin_, end_ - begin_));
    else
      be.download(master, DType::f32, master_);
  }
}

void AdamW::set_state(const float* m, const float* v, const float* master) {
  Backend& be = model_.backend();
  be.upload(m_, m, DType::f32);
  be.upload(v_, v, DType::f32);
  if (master_.empty()) return;
  if (master)
    be.upload(master_, master, DType::f32);
  else
    sync_master_from_params();
}

void AdamW::step(double lr) {
  ++t_;
  Backend& be = model_.backend();
  Backend::AdamW h{lr, o_.beta1, o_.beta2, o_.eps, 0.0, 1.0 - std::pow(o_.beta1, double(t_)),
                   1.0 - std::pow(o_.beta2, double(t_))};
  for (const Piece& pc : pieces_) {
    h.weight_decay = pc.decay ? o_.weight_decay : 0.0;
    const size_t local = pc.offset - begin_;
    be.adamw_update(sub(model_.params(), pc.offset, pc.numel),
                    master_.empty() ? Tensor() : sub(master_, local, pc.numel), sub(model_.grads(), pc.offset, pc.numel),
                    sub(m_, local, pc.numel), sub(v_, local, pc.numel), h);
  }
}

double grad_norm(Backend& be, Tensor grads) { return std::sqrt(be.sum_squares(grads)); }

double clip_factor(double norm, double max_norm) {
  if (max_norm <= 0 || !(norm > max_norm)) return 1.0;
  return max_norm / (norm + 1e-6);
}

}  // namespace bt

// AdamW with decoupled weight decay over the flat parameter buffer, global-norm clipping, and a
// shard range so that ZeRO-1 ranks each update only their slice of the parameters.
#pragma once
#include <cstdint>
#include <vector>

#include "model/model.h"

namespace bt {

class AdamW {
 public:
  // Updates the elements [begin, end) of the flat buffers (the whole model by default).
  AdamW(Model& model, const OptimConfig& o, size_t begin = 0, size_t end = SIZE_MAX);
  // One step with learning rate lr on the (already averaged and clipped) gradients.
  void step(double lr);
  int64_t steps_done() const { return t_; }
  void set_steps_done(int64_t t) { t_ = t; }
  Tensor m() const { return m_; }            // [end - begin] grad dtype
  Tensor v() const { return v_; }            // [end - begin] grad dtype
  Tensor master() const { return master_; }  // [end - begin] grad dtype; empty when params are the master copy
  size_t begin() const { return begin_; }
  size_t end() const { return end_; }
  // Copies the parameters into the master copy (after loading or broadcasting weights).
  void sync_master_from_params();
  // The state as fp32 host arrays of end() - begin() values, for checkpoints. master may be null
  // (skipped on get; on set: the master copy is taken from the parameters).
  void get_state(float* m, float* v, float* master) const;
  void set_state(const float* m, const float* v, const float* master);

 private:
  Model& model_;
  OptimConfig o_;
  size_t begin_, end_;
  int64_t t_ = 0;
  Tensor m_, v_, master_;
  struct Piece {
    size_t offset, numel;  // within the flat buffer
    bool decay;
  };
  std::vector<Piece> pieces_;
};

// Global L2 norm of a gradient buffer (sqrt of the sum of squares).
double grad_norm(Backend& be, Tensor grads);
// Scales grads so that their norm is at most max_norm; returns the factor applied (1 if none).
double clip_factor(double norm, double max_norm);

}  // namespace bt

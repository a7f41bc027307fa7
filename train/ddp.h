// Data-parallel gradient reduction (docs/design.md §5).
// GradReducer: sums the flat gradient buffer over ranks in buckets, starting each bucket as
// soon as the backward pass has made all of its gradients final (Model::backward's on_ready
// callback), so that communication overlaps the rest of the backward pass.
// ZeroShard: ZeRO-1 bookkeeping: this rank's slice of the flat buffers, reduce-scatter of
// gradients into it, all-gather of parameters from every rank's slice.
#pragma once
#include <cstddef>
#include <vector>

#include "model/backend.h"
#include "train/comm.h"

namespace bt {

class GradReducer {
 public:
  // grads: the flat gradient buffer [total]; buckets of bucket_elems from the top down.
  GradReducer(Communicator& comm, Tensor grads, size_t bucket_elems);
  // Starts every not-yet-started bucket that lies entirely at or above `ready` (a view into
  // the gradient buffer whose offset is the watermark).
  void on_ready(const Tensor& ready);
  // Starts the remaining buckets and waits for all of them; then resets for the next step.
  void finish();
  size_t buckets() const { return starts_.size(); }

 private:
  Communicator& comm_;
  Tensor grads_;
  std::vector<size_t> starts_, ends_;  // bucket k covers [starts_[k], ends_[k]), k = 0 the top
  size_t next_ = 0;                    // first bucket not yet started
};

class ZeroShard {
 public:
  ZeroShard(Communicator& comm, size_t total);
  size_t begin() const { return begin_; }
  size_t end() const { return end_; }
  // The collectives work in place on the model's padded flat buffers ([world x chunk], Model
  // with shard_parts = world): no staging copies.
  // grads summed over ranks into this rank's slice grads[begin, end) (the rest stale).
  void reduce_scatter_grads(Tensor grads_padded);
  // params: every rank's updated slice gathered into the full buffer.
  void all_gather_params(Tensor params_padded);
  // Host arrays: this rank's slice of a [total] array gathered into the full array.
  void all_gather_host(float* full);

 private:
  Tensor chunk_of(Tensor padded) const;  // this rank's [chunk] of a [world x chunk] buffer
  Communicator& comm_;
  size_t total_, chunk_, begin_, end_;
};

// A view of n elements of a flat buffer starting at offset.
Tensor flat_slice(Tensor flat, size_t offset, size_t n);

}  // namespace bt

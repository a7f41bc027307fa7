// Bucketed, overlapped gradient all-reduce and ZeRO-1 sharding over a Communicator.
#include "train/ddp.h"

#include <algorithm>
#include <cstring>

#include "model/params.h"

namespace bt {

Tensor flat_slice(Tensor flat, size_t offset, size_t n) {
  BT_CHECK(offset + n <= flat.numel(), "flat_slice [", offset, ", ", offset + n, ") of ", flat.numel());
  return Tensor(static_cast<char*>(flat.data) + offset * dtype_size(flat.dtype), {static_cast<int64_t>(n)},
                flat.dtype, flat.device);
}

GradReducer::GradReducer(Communicator& comm, Tensor grads, size_t bucket_elems) : comm_(comm), grads_(grads) {
  const size_t total = grads.numel();
  bucket_elems = std::max<size_t>(bucket_elems, 1);
  for (size_t end = total; end > 0;) {
    const size_t start = end > bucket_elems ? end - bucket_elems : 0;
    starts_.push_back(start);
    ends_.push_back(end);
    end = start;
  }
}

void GradReducer::on_ready(const Tensor& ready) {
  const size_t w = static_cast<size_t>(static_cast<const char*>(ready.data) - static_cast<const char*>(grads_.data)) /
                   dtype_size(grads_.dtype);
  while (next_ < starts_.size() && starts_[next_] >= w) {
    comm_.all_reduce_start(flat_slice(grads_, starts_[next_], ends_[next_] - starts_[next_]), ReduceOp::sum);
    ++next_;
  }
}

void GradReducer::finish() {
  for (; next_ < starts_.size(); ++next_)
    comm_.all_reduce_start(flat_slice(grads_, starts_[next_], ends_[next_] - starts_[next_]), ReduceOp::sum);
  comm_.wait_all();
  next_ = 0;
}

ZeroShard::ZeroShard(Communicator& comm, size_t total) : comm_(comm), total_(total) {
  chunk_ = flat_chunk(total, comm.world());
  begin_ = std::min(total, chunk_ * static_cast<size_t>(comm.rank()));
  end_ = std::min(total, begin_ + chunk_);
  BT_CHECK(begin_ < end_, "ZeRO-1: rank ", comm.rank(), " has an empty shard (", total, " parameters over ", comm.world(),
           " ranks); use fewer ranks or train.zero=0");
}

Tensor ZeroShard::chunk_of(Tensor padded) const {
  BT_CHECK(padded.numel() == chunk_ * static_cast<size_t>(comm_.world()), "ZeRO-1: the flat buffer has ",
           padded.numel(), " elements, not world x chunk = ", chunk_ * static_cast<size_t>(comm_.world()),
           " (make the model with shard_parts = world)");
  return flat_slice(padded, chunk_ * static_cast<size_t>(comm_.rank()), chunk_);
}

void ZeroShard::reduce_scatter_grads(Tensor grads_padded) {
  // The padding (past total) is zero on every rank and stays zero.
  comm_.reduce_scatter(chunk_of(grads_padded), grads_padded, ReduceOp::sum);
}

void ZeroShard::all_gather_params(Tensor params_padded) {
  comm_.all_gather(params_padded, chunk_of(params_padded));
}

void ZeroShard::all_gather_host(float* full) {
  std::vector<float> mine(chunk_, 0.f), all(chunk_ * static_cast<size_t>(comm_.world()));
  std::memcpy(mine.data(), full + begin_, (end_ - begin_) * sizeof(float));
  comm_.all_gather_host(all.data(), mine.data(), chunk_ * sizeof(float));
  std::memcpy(full, all.data(), total_ * sizeof(float));
}

}  // namespace bt

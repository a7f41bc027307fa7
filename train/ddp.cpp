// Bucketed, overlapped gradient all-reduce and ZeRO-1 sharding over a Communicator.
#include "train/ddp.h"

#include <algorithm>
#include <cstring>

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

ZeroShard::ZeroShard(Backend& be, Communicator& comm, size_t total) : be_(be), comm_(comm), total_(total) {
  const size_t world = static_cast<size_t>(comm.world());
  chunk_ = ((total + world - 1) / world + 15) / 16 * 16;
  begin_ = std::min(total, chunk_ * static_cast<size_t>(comm.rank()));
  end_ = std::min(total, begin_ + chunk_);
  BT_CHECK(begin_ < end_, "ZeRO-1: rank ", comm.rank(), " has an empty shard (", total, " parameters over ", world,
           " ranks); use fewer ranks or train.zero=0");
  const int64_t padded = static_cast<int64_t>(chunk_ * world);
  gpad_ = be.alloc({padded}, be.grad_dtype());
  gshard_ = be.alloc({static_cast<int64_t>(chunk_)}, be.grad_dtype());
  ppad_ = be.alloc({padded}, be.act_dtype());
  pshard_ = be.alloc({static_cast<int64_t>(chunk_)}, be.act_dtype());
  be.zero(gpad_);
  be.zero(ppad_);
}

void ZeroShard::reduce_scatter_grads(Tensor grads) {
  // Copy into a buffer padded to world x chunk (the tail stays zero), reduce-scatter, and put
  // this rank's summed slice back in place.
  Tensor head = flat_slice(gpad_, 0, total_);
  be_.zero(head);
  be_.accumulate(head, grads);
  comm_.reduce_scatter(gshard_, gpad_, ReduceOp::sum);
  Tensor mine = flat_slice(grads, begin_, end_ - begin_);
  be_.zero(mine);
  be_.accumulate(mine, flat_slice(gshard_, 0, end_ - begin_));
}

void ZeroShard::all_gather_params(Tensor params) {
  be_.zero(pshard_);
  be_.accumulate(flat_slice(pshard_, 0, end_ - begin_), flat_slice(params, begin_, end_ - begin_));
  comm_.all_gather(ppad_, pshard_);
  Tensor full = flat_slice(ppad_, 0, total_);
  be_.zero(params);
  be_.accumulate(params, full);
}

void ZeroShard::all_gather_host(float* full) {
  std::vector<float> mine(chunk_, 0.f), all(chunk_ * static_cast<size_t>(comm_.world()));
  std::memcpy(mine.data(), full + begin_, (end_ - begin_) * sizeof(float));
  comm_.all_gather_host(all.data(), mine.data(), chunk_ * sizeof(float));
  std::memcpy(full, all.data(), total_ * sizeof(float));
}

}  // namespace bt

// The backend's device memory: arena blocks and the scratch buffer (see arena.h).
#include "model/cuda/arena.h"

#include <algorithm>

#include "model/cuda/check.h"

namespace bt::cuda {

namespace {
constexpr size_t kAlign = 256;
constexpr size_t kMaxBlock = size_t(8) << 30;  // later blocks double up to this
constexpr size_t MiB = size_t(1) << 20;
}  // namespace

Arena::~Arena() {
  for (Block& b : blocks_) cudaFree(b.base);  // errors ignored: nothing to do about them here
}

void* Arena::alloc(size_t bytes, const char* what) {
  const size_t need = std::max(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
  if (!blocks_.empty()) {
    Block& b = blocks_.back();
    if (b.top + need <= b.size) {
      void* p = b.base + b.top;
      b.top += need;
      used_ += need;
      return p;
    }
  }
  // A new block: the doubling size, or exactly what is needed when the GPU has no more.
  size_t size = std::max(need, next_block_);
  void* base = nullptr;
  cudaError_t e = cudaMalloc(&base, size);
  if (e == cudaErrorMemoryAllocation && size > need) {
    (void)cudaGetLastError();
    size = need;
    e = cudaMalloc(&base, size);
  }
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    BT_FAIL("out of GPU memory allocating ", need / MiB, " MiB for ", what, " (the backend already holds ",
            reserved_ / MiB, " MiB; the GPU has ", free_b / MiB, " of ", total_b / MiB,
            " MiB free): lower train.micro_batch or model.context_length, or free the GPU (nvidia-smi)");
  }
  blocks_.push_back({static_cast<char*>(base), size, need});
  reserved_ += size;
  used_ += need;
  next_block_ = std::min(kMaxBlock, std::max(next_block_, size) * 2);
  return base;
}

Scratch::~Scratch() {
  if (p_) cudaFree(p_);
}

void* Scratch::get(size_t bytes, void* stream) {
  if (bytes <= cap_) return p_;
  const size_t size = std::max(bytes + bytes / 4, size_t(4) << 20);
  if (p_) {
    // Kernels queued earlier may still read the old buffer.
    BT_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
    BT_CUDA_CHECK(cudaFree(p_));
    p_ = nullptr;
    cap_ = 0;
  }
  BT_CUDA_CHECK(cudaMalloc(&p_, size));
  cap_ = size;
  return p_;
}

}  // namespace bt::cuda

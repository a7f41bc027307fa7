// The CUDA backend (docs/design.md §3): bf16 (or fp32) parameters and activations, fp32 master weights,
// gradients and moments; cuBLASLt GEMMs and hand-written kernels for every other op
// (docs/cuda.md). This header has no CUDA types, so g++-compiled code (tests, trainer, NCCL
// communicator) can use it. Builds without CUDA link model/cuda_none.cpp instead: no devices,
// and make_cuda_backend fails.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

#include "model/backend.h"

namespace bt {

// False only in builds without CUDA (model/cuda_none.cpp).
bool cuda_built();
// Number of usable GPUs; 0 when the runtime reports any error (no driver, no device).
int cuda_device_count();
// cuda_device_count() > 0 and a kernel of this build ran on device 0 (right driver, right sm).
bool cuda_usable();
// The device's marketing name ("NVIDIA H200"), "" on error.
std::string cuda_device_name(int device);
std::unique_ptr<Backend> make_cuda_backend(DType act_dtype, int device);

// The stream every op of a CUDA backend runs on (a cudaStream_t), for code that must order its
// own work with the backend's (NCCL all-reduce); null when be is not a CUDA backend.
void* cuda_stream(Backend& be);

struct CudaMemoryStats {
  size_t arena_used = 0;      // bytes handed out as tensors (incl. the cuBLASLt workspace)
  size_t arena_reserved = 0;  // bytes held in cudaMalloc blocks
  size_t arena_blocks = 0;
  size_t scratch = 0;         // bytes of the temporaries buffer
  size_t device_used = 0;     // total - free of the device right now (all processes, context incl.)
  size_t device_total = 0;
};
// Zero stats when be is not a CUDA backend.
CudaMemoryStats cuda_memory_stats(Backend& be);

// CUDA graphs of replayable decode steps (Backend::run_step). On by default; BT_CUDA_GRAPHS=0
// (or cuda_set_graphs(be, false)) runs every step as plain launches.
struct CudaGraphStats {
  bool enabled = false;
  size_t graphs = 0;      // step keys seen (captured or not yet)
  uint64_t captures = 0;  // graphs captured and instantiated
  uint64_t replays = 0;   // graph launches
};
void cuda_set_graphs(Backend& be, bool on);  // no-op for other backends
CudaGraphStats cuda_graph_stats(Backend& be);

}  // namespace bt

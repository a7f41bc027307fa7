// Error checks for the CUDA runtime: every call is checked with its file and line, and the
// message tells the user what to do about the common failures. Host-only (no device code), so
// the .cpp files of the backend can include it.
#pragma once
#include <cuda_runtime.h>

#include "core/error.h"

namespace bt::cuda {

// What the user can do about a CUDA error, by error code ("" when there is nothing to add).
inline const char* cuda_hint(cudaError_t e) {
  switch (e) {
    case cudaErrorMemoryAllocation:
      return " (out of GPU memory: lower train.micro_batch or model.context_length, or free the GPU; nvidia-smi shows "
             "who holds it)";
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
      return " (no usable GPU: check nvidia-smi, the driver version and CUDA_VISIBLE_DEVICES, or use train.device=cpu)";
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
      return " (this bt was built for other GPUs: reconfigure with -DCMAKE_CUDA_ARCHITECTURES=<your sm> and rebuild)";
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
      return " (a kernel faulted: this is a bug; rerun under compute-sanitizer and report the op and shapes)";
    default:
      return "";
  }
}

[[noreturn]] inline void fail_cuda(cudaError_t e, const char* what, const char* file, int line) {
  ::bt::fail_at(file, line, "CUDA error ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ") in ", what,
                cuda_hint(e));
}

}  // namespace bt::cuda

// BT_CUDA_CHECK(cudaMalloc(...)): throws bt::Error naming the call, the error and a hint.
#define BT_CUDA_CHECK(call)                                                             \
  do {                                                                                  \
    cudaError_t bt_err_ = (call);                                                       \
    if (bt_err_ != cudaSuccess) ::bt::cuda::fail_cuda(bt_err_, #call, __FILE__, __LINE__); \
  } while (0)
// After a <<<...>>> launch (name: a string literal): bad launch configurations surface here,
// faults inside the kernel at the next synchronizing call.
#define BT_KERNEL_CHECK(name)                                                                    \
  do {                                                                                           \
    cudaError_t bt_err_ = cudaGetLastError();                                                    \
    if (bt_err_ != cudaSuccess) ::bt::cuda::fail_cuda(bt_err_, "launch of " name, __FILE__, __LINE__); \
  } while (0)


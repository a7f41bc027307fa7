// Device discovery. Any runtime error (no driver, no device, insufficient driver) means "no GPU";
// cuda_usable() also proves that a kernel of this build runs on device 0.
#include <cuda_runtime.h>

#include "core/error.h"
#include "model/cuda/check.h"
#include "model/cuda/common.cuh"
#include "model/cuda/cuda_backend.h"
#include "model/cuda/kernels.h"

namespace bt {

namespace cuda {
namespace {
__global__ void probe(int* out) { *out = 42; }
}  // namespace

bool probe_kernel(int device) {
  if (cudaSetDevice(device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  int* d = nullptr;
  int h = 0;
  bool ok = cudaMalloc(&d, sizeof(int)) == cudaSuccess;
  if (ok) {
    BT_LAUNCH(1, 1, 0, 0, probe)(d);
    ok = cudaGetLastError() == cudaSuccess && cudaMemcpy(&h, d, sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess &&
         h == 42;
    cudaFree(d);
  }
  (void)cudaGetLastError();
  return ok;
}
}  // namespace cuda

bool cuda_built() { return true; }

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

bool cuda_usable() {
  static const bool usable = cuda_device_count() > 0 && cuda::probe_kernel(0);
  return usable;
}

}  // namespace bt

namespace bt {

std::string cuda_device_name(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return "";
  }
  return prop.name;
}

}  // namespace bt

// Backend selection (docs/design.md §3): "auto" picks CUDA when a GPU answers, else the CPU. Which CUDA
// backend this is (the real one, none, or the SIMT emulator) is decided when the executable is
// linked (model/CMakeLists.txt).
#include "model/backend.h"

#include "model/cpu/cpu_backend.h"
#include "model/cuda/cuda_backend.h"

namespace bt {

bool cuda_available() { return cuda_device_count() > 0; }

Device resolve_device(const std::string& device) {
  if (device == "cuda") return Device::cuda;
  if (device == "auto" && cuda_available()) return Device::cuda;
  return Device::cpu;
}

std::unique_ptr<Backend> make_backend(const BackendOptions& o) {
  std::string dev = o.device;
  if (dev == "auto") dev = cuda_available() ? "cuda" : "cpu";
  if (dev == "cpu") return make_cpu_backend(o.precision == "fp64" ? DType::f64 : DType::f32);
  BT_CHECK(dev == "cuda", "train.device must be auto, cpu or cuda, not '", dev, "'");
  BT_CHECK(cuda_built(), "train.device is cuda but this bt was built without CUDA (configure with -DBT_CUDA=ON)");
  BT_CHECK(cuda_available(), "train.device is cuda but no GPU is visible (check nvidia-smi, CUDA_VISIBLE_DEVICES)");
  return make_cuda_backend(o.precision == "bf16" ? DType::bf16 : DType::f32, o.cuda_device);
}

}  // namespace bt

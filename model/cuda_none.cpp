// model/cuda/cuda_backend.h for builds without CUDA: no devices, no CUDA backend. Linked instead
// of model/cuda when nvcc is missing or BT_CUDA=OFF, so callers need no #ifdef.
#include "core/error.h"
#include "model/cuda/cuda_backend.h"

namespace bt {

bool cuda_built() { return false; }
int cuda_device_count() { return 0; }
bool cuda_usable() { return false; }
std::string cuda_device_name(int) { return ""; }
std::unique_ptr<Backend> make_cuda_backend(DType, int) {
  BT_FAIL("this bt was built without CUDA (configure with -DBT_CUDA=ON on a machine with the CUDA toolkit)");
}
void* cuda_stream(Backend&) { return nullptr; }
CudaMemoryStats cuda_memory_stats(Backend&) { return {}; }
void cuda_set_graphs(Backend&, bool) {}
CudaGraphStats cuda_graph_stats(Backend&) { return {}; }

}  // namespace bt

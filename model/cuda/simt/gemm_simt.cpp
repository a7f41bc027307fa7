// SIMT emulator: the Gemm of cublaslt.h without cuBLASLt. Every GEMM takes the fallback path
// (gemm_simple.cu, an emulated kernel), as BT_CUDA_GEMM=simple does on a GPU; the plan cache
// and the cuBLASLt calls of cublaslt.cpp are not exercised here.
#include "model/cuda/cublaslt.h"

namespace bt::cuda {

struct Gemm::Plan {};

Gemm::Gemm(void* workspace, size_t ws_bytes) : ws_(workspace), ws_bytes_(ws_bytes), simple_only_(true) {}

Gemm::~Gemm() = default;

void Gemm::run(const GemmDesc& g, cudaStream_t stream) {
  if (g.m == 0 || g.n == 0) return;
  if (g.k == 0 && g.beta == 1.0f && !g.bias) return;  // D = D
  gemm_simple(g, stream);
}

}  // namespace bt::cuda

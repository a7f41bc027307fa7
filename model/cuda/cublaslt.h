// GEMMs through cuBLASLt: bf16 (or f32) A and B, fp32 compute, D in bf16 or f32, optional
// bias epilogue. Descriptors, layouts and the heuristic's algorithm are cached per shape,
// type, alignment and epilogue; one workspace serves every GEMM. When cuBLASLt offers no
// algorithm (odd shapes or alignments) or BT_CUDA_GEMM=simple is set, a plain tiled kernel
// (gemm_simple.cu) computes the same thing.
//
// Column-major convention of cuBLAS: D[m, n] = op(A)[m, k] @ op(B)[k, n] + beta * D (+ bias[m]
// broadcast over columns). The row-major Linear layer maps onto it in matmul.cu.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <map>
#include <memory>
#include <tuple>

#include "core/dtype.h"

namespace bt::cuda {

struct GemmDesc {
  bool ta = false, tb = false;  // op(A) = A^T, op(B) = B^T
  int m = 0, n = 0, k = 0;
  const void* A = nullptr;
  int lda = 0;
  const void* B = nullptr;
  int ldb = 0;
  void* D = nullptr;  // also C: D = op(A) op(B) + beta * D
  int ldd = 0;
  DType ab = DType::bf16;  // dtype of A and B
  DType d = DType::bf16;   // dtype of D and of bias
  float beta = 0;
  const void* bias = nullptr;  // [m] or null; only with beta == 0
};

// The fallback kernel and the bias broadcast (gemm_simple.cu).
void gemm_simple(const GemmDesc& g, cudaStream_t stream);
// D[i, j] = bias[i] for the m x n column-major D.
void broadcast_bias(const GemmDesc& g, cudaStream_t stream);

class Gemm {
 public:
  // workspace: device memory of ws_bytes that outlives this object.
  Gemm(void* workspace, size_t ws_bytes);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;
  void run(const GemmDesc& g, cudaStream_t stream);

 private:
  struct Plan;
  using Key = std::tuple<int, int, int, int, int, int, int, int, int, int, int, int, int, int, int, int>;
  Plan& plan(const GemmDesc& g, bool with_bias);
  void* handle_ = nullptr;  // cublasLtHandle_t
  void* ws_;
  size_t ws_bytes_;
  bool simple_only_ = false;
  std::map<Key, std::unique_ptr<Plan>> plans_;
};

}  // namespace bt::cuda

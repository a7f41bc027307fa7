// The fallback GEMM: a plain 16 x 16 shared-memory tiled kernel with fp32 accumulation, any
// strides, transposes, bf16 or f32 operands, optional bias. Used when cuBLASLt returns no
// algorithm for a configuration and when BT_CUDA_GEMM=simple asks for it (to cross-check
// cuBLASLt). Slow but exact in its summation order (l = 0 .. k-1), hence deterministic.
#include "model/cuda/common.cuh"
#include "model/cuda/cublaslt.h"

namespace bt::cuda {

namespace {

constexpr int kTile = 16;

struct GemmParams {
  bool ta, tb;
  int m, n, k;
  const void* A;
  int64_t lda;
  const void* B;
  int64_t ldb;
  void* D;
  int64_t ldd;
  float beta;
  const void* bias;
};

template <class Tab, class Td>
__global__ void gemm_simple_kernel(GemmParams p) {
  // D [m, n] column-major; blockIdx.x tiles n (can be large), blockIdx.y tiles m.
  __shared__ float As[kTile][kTile + 1];  // [l][i]
  __shared__ float Bs[kTile][kTile + 1];  // [l][j]
  const Tab* A = static_cast<const Tab*>(p.A);
  const Tab* B = static_cast<const Tab*>(p.B);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int i0 = blockIdx.y * kTile, j0 = blockIdx.x * kTile;
  const int i = i0 + tx, j = j0 + ty;
  float acc = 0.f;
  for (int l0 = 0; l0 < p.k; l0 += kTile) {
    {  // As[ty][tx] = op(A)(i0 + tx, l0 + ty)
      const int r = i0 + tx, l = l0 + ty;
      float v = 0.f;
      if (r < p.m && l < p.k) v = to_f(p.ta ? A[l + r * p.lda] : A[r + l * p.lda]);
      As[ty][tx] = v;
    }
    {  // Bs[tx][ty] = op(B)(l0 + tx, j0 + ty)
      const int l = l0 + tx, c = j0 + ty;
      float v = 0.f;
      if (l < p.k && c < p.n) v = to_f(p.tb ? B[c + l * p.ldb] : B[l + c * p.ldb]);
      Bs[tx][ty] = v;
    }
    __syncthreads();
#pragma unroll
    for (int l = 0; l < kTile; ++l) acc += As[l][tx] * Bs[l][ty];
    __syncthreads();
  }
  if (i < p.m && j < p.n) {
    Td* D = static_cast<Td*>(p.D);
    Td& d = D[i + j * p.ldd];
    float v = acc;
    if (p.beta != 0.f) v += p.beta * to_f(d);  // beta = 0 never reads D (it may hold NaN)
    if (p.bias) v += to_f(static_cast<const Td*>(p.bias)[i]);
    d = from_f<Td>(v);
  }
}

template <class Td>
__global__ void broadcast_bias_kernel(Td* D, int64_t ldd, int m, int n, const Td* bias) {
  const size_t total = size_t(m) * n;
  for (size_t e = blockIdx.x * size_t(blockDim.x) + threadIdx.x; e < total; e += size_t(gridDim.x) * blockDim.x) {
    const int i = int(e % m), j = int(e / m);
    D[i + j * ldd] = bias[i];
  }
}

GemmParams params(const GemmDesc& g) {
  return {g.ta, g.tb, g.m, g.n, g.k, g.A, g.lda, g.B, g.ldb, g.D, g.ldd, g.beta, g.bias};
}

}  // namespace

void gemm_simple(const GemmDesc& g, cudaStream_t stream) {
  if (g.m == 0 || g.n == 0) return;
  BT_CHECK(ceil_div(g.m, kTile) <= 65535, "gemm_simple: m = ", g.m, " is too large for the fallback kernel");
  const dim3 block(kTile, kTile), grid(unsigned(ceil_div(g.n, kTile)), unsigned(ceil_div(g.m, kTile)));
  const GemmParams p = params(g);
  if (g.ab == DType::bf16 && g.d == DType::bf16) BT_LAUNCH(grid, block, 0, stream, gemm_simple_kernel<bf16, bf16>)(p);
  else if (g.ab == DType::bf16 && g.d == DType::f32) BT_LAUNCH(grid, block, 0, stream, gemm_simple_kernel<bf16, float>)(p);
  else if (g.ab == DType::f32 && g.d == DType::f32) BT_LAUNCH(grid, block, 0, stream, gemm_simple_kernel<float, float>)(p);
  else BT_FAIL("gemm_simple: operands ", dtype_name(g.ab), " with output ", dtype_name(g.d), " are not supported");
  BT_KERNEL_CHECK("gemm_simple_kernel");
}

void broadcast_bias(const GemmDesc& g, cudaStream_t stream) {
  const size_t total = size_t(g.m) * g.n;
  BT_DISPATCH_ACT(g.d, T, BT_LAUNCH(elementwise_grid(total), 256, 0, stream, broadcast_bias_kernel<T>)(
                              static_cast<T*>(g.D), g.ldd, g.m, g.n, static_cast<const T*>(g.bias)));
  BT_KERNEL_CHECK("broadcast_bias_kernel");
}

}  // namespace bt::cuda

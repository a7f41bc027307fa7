// Embedding lookup and its deterministic backward.
//
// Forward: a grid-stride copy, out[i, c] = table[tokens[i], c].
// Backward: the host groups the positions by token id (a counting sort of the token ids,
// which it downloads; they are small) and uploads the groups. One thread block per (group,
// slice of 128 channels) walks its positions in increasing order, sums in fp32 and adds the
// sum to the f32 table row once: every table element has one owner, no atomics, the same bits
// on every run.
#include "model/cuda/common.cuh"
#include "model/cuda/kernels.h"

namespace bt::cuda {

namespace {

constexpr int kThreads = 128;  // channels per block of the backward

template <class T>
__global__ void embedding_forward_kernel(T* out, const int32_t* tokens, const T* table, size_t n, int C) {
  // out [n, C], tokens [n], table [V, C]
  const size_t total = n * C;
  for (size_t e = blockIdx.x * size_t(blockDim.x) + threadIdx.x; e < total; e += size_t(gridDim.x) * blockDim.x) {
    const size_t i = e / C, c = e % C;
    out[e] = table[size_t(tokens[i]) * C + c];
  }
}

template <class T>
__global__ void embedding_backward_kernel(float* dtable, const T* dout, const int32_t* order,
                                          const int32_t* group_tok, const int32_t* group_start, int C) {
  // dtable [V, C]; dout [n, C]; blockIdx.x = group, blockIdx.y = channel slice
  const int g = blockIdx.x;
  const int c = blockIdx.y * kThreads + threadIdx.x;
  if (c >= C) return;
  const int begin = group_start[g], end = group_start[g + 1];
  float acc = 0.f;
  for (int p = begin; p < end; ++p) acc += to_f(dout[size_t(order[p]) * C + c]);
  dtable[size_t(group_tok[g]) * C + c] += acc;
}

}  // namespace

void embedding_forward(void* out, const int32_t* tokens, const void* table, size_t n, int C, DType t,
                       cudaStream_t stream) {
  if (n == 0 || C == 0) return;
  BT_DISPATCH_ACT(t, T,
                  BT_LAUNCH(elementwise_grid(n * C), 256, 0, stream, embedding_forward_kernel<T>)(
                      static_cast<T*>(out), tokens, static_cast<const T*>(table), n, C));
  BT_KERNEL_CHECK("embedding_forward_kernel");
}

void embedding_backward(float* dtable, const void* dout, const int32_t* order, const int32_t* group_tok,
                        const int32_t* group_start, int groups, int C, DType t, cudaStream_t stream) {
  if (groups == 0 || C == 0) return;
  BT_CHECK(ceil_div(C, kThreads) <= 65535, "embedding_backward: width ", C, " too large");
  const dim3 grid(unsigned(groups), unsigned(ceil_div(C, kThreads)));
  BT_DISPATCH_ACT(t, T,
                  BT_LAUNCH(grid, kThreads, 0, stream, embedding_backward_kernel<T>)(
                      dtable, static_cast<const T*>(dout), order, group_tok, group_start, C));
  BT_KERNEL_CHECK("embedding_backward_kernel");
}

}  // namespace bt::cuda

// Embedding lookup and its deterministic backward, all on the device.
//
// Forward: a grid-stride copy, out[i, c] = table[tokens[i], c].
// Backward: the positions are sorted by token id with a stable LSD radix sort (8-bit digits,
// as many passes as V needs; each pass: per-chunk digit counts, one exclusive scan, a stable
// scatter that ranks each element among the equal digits before it in its chunk), so each
// token's positions end up contiguous and increasing. Then one thread block per (group start,
// slice of 128 channels) sums its group's rows of dout in position order in fp32 and adds the
// sum to the f32 table row once: every table element has one owner, no atomics, no host
// synchronization, the same bits on every run.
#include "model/cuda/arena.h"
#include "model/cuda/common.cuh"
#include "model/cuda/kernels.h"

namespace bt::cuda {

namespace {

constexpr int kThreads = 128;  // channels per block of the backward sum
constexpr int kChunk = 256;    // elements per block of a radix pass (one per thread)
constexpr int kDigits = 256;   // 8-bit digits

template <class T>
__global__ void embedding_forward_kernel(T* out, const int32_t* tokens, const T* table, size_t n, int C) {
  // out [n, C], tokens [n], table [V, C]
  const size_t total = n * C;
  for (size_t e = blockIdx.x * size_t(blockDim.x) + threadIdx.x; e < total; e += size_t(gridDim.x) * blockDim.x) {
    const size_t i = e / C, c = e % C;
    out[e] = table[size_t(tokens[i]) * C + c];
  }
}

// The sort key of a token id: ids outside [0, V) all become V (one group, skipped by the sum).
__device__ __forceinline__ int sort_key(int32_t k, int V) { return k < 0 || k > V ? V : k; }

// counts [kDigits][chunks]: how many of chunk b's keys have digit d (thread d counts).
__global__ void radix_count_kernel(int32_t* counts, const int32_t* keys, int n, int V, int shift, int chunks) {
  __shared__ int32_t digit[kChunk];
  const int b = blockIdx.x, i = b * kChunk + threadIdx.x;
  digit[threadIdx.x] = i < n ? (sort_key(keys[i], V) >> shift) & (kDigits - 1) : -1;
  __syncthreads();
  int c = 0;
  for (int j = 0; j < kChunk; ++j) c += digit[j] == int(threadIdx.x);
  counts[size_t(threadIdx.x) * chunks + b] = c;
}

// Exclusive prefix sum of counts [m] in place, one block of 1024 threads: each thread sums a
// contiguous run, the runs' totals are scanned in order by thread 0.
__global__ void exclusive_scan_kernel(int32_t* counts, int m) {
  __shared__ int32_t run_total[1024];
  const int t = threadIdx.x, per = (m + 1023) / 1024, begin = t * per, end = min(m, begin + per);
  int s = 0;
  for (int i = begin; i < end; ++i) s += counts[i];
  run_total[t] = s;
  __syncthreads();
  if (t == 0) {
    int acc = 0;
    for (int k = 0; k < 1024; ++k) {
      const int v = run_total[k];
      run_total[k] = acc;
      acc += v;
    }
  }
  __syncthreads();
  int acc = run_total[t];
  for (int i = begin; i < end; ++i) {
    const int v = counts[i];
    counts[i] = acc;
    acc += v;
  }
}

// Stable scatter: element i of chunk b goes to offsets[digit][b] + (elements of chunk b before
// it with the same digit).
__global__ void radix_scatter_kernel(int32_t* keys_out, int32_t* vals_out, const int32_t* keys, const int32_t* vals,
                                     const int32_t* offsets, int n, int V, int shift, int chunks) {
  __shared__ int32_t digit[kChunk];
  const int b = blockIdx.x, t = threadIdx.x, i = b * kChunk + t;
  const int key = i < n ? sort_key(keys[i], V) : 0;
  const int d = i < n ? (key >> shift) & (kDigits - 1) : -1;
  digit[t] = d;
  __syncthreads();
  if (i >= n) return;
  int rank = 0;
  for (int j = 0; j < t; ++j) rank += digit[j] == d;
  const int pos = offsets[size_t(d) * chunks + b] + rank;
  keys_out[pos] = key;
  vals_out[pos] = vals ? vals[i] : i;  // the first pass starts from the positions 0 .. n-1
}

template <class T>
__global__ void embedding_backward_kernel(float* dtable, const T* dout, const int32_t* sorted_tok,
                                          const int32_t* sorted_pos, int n, int V, int C) {
  // dtable [V, C]; dout [n, C]; blockIdx.x = a position in the sorted order (a group starts there
  // or the block has nothing to do), blockIdx.y = channel slice
  const int g = blockIdx.x;
  const int c = blockIdx.y * kThreads + threadIdx.x;
  const int tok = sorted_tok[g];
  // Sorted means one run per token; a broken sort would let two blocks add to one row.
  if (g > 0 && sorted_tok[g - 1] > tok) __trap();
  if (c >= C || (g > 0 && sorted_tok[g - 1] == tok) || tok < 0 || tok >= V) return;
  float acc = 0.f;
  for (int p = g; p < n && sorted_tok[p] == tok; ++p) acc += to_f(dout[size_t(sorted_pos[p]) * C + c]);
  dtable[size_t(tok) * C + c] += acc;
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

void embedding_backward(float* dtable, const void* dout, const int32_t* tokens, size_t n, int V, int C, DType t,
                        Scratch& scratch, cudaStream_t stream) {
  if (n == 0 || C == 0 || V == 0) return;
  BT_CHECK(n <= size_t(0x7fffffff) / kDigits, "embedding_backward: ", n, " positions exceed the sort's limits");
  BT_CHECK(ceil_div(C, kThreads) <= 65535, "embedding_backward: width ", C, " too large");
  const int N = int(n), chunks = int(ceil_div(N, kChunk));
  int bits = 1;  // keys are 0 .. V (V: an invalid id)
  while (bits < 31 && (int64_t(1) << bits) <= int64_t(V)) ++bits;
  const int passes = (bits + 7) / 8;
  const size_t counts_n = size_t(kDigits) * chunks;
  Carver cv(scratch.get(4 * Carver::round(n * 4) + Carver::round(counts_n * 4), stream));
  int32_t* keys[2] = {cv.take<int32_t>(n), cv.take<int32_t>(n)};  // [n] tokens, sorted by the passes so far
  int32_t* vals[2] = {cv.take<int32_t>(n), cv.take<int32_t>(n)};  // [n] their positions
  int32_t* counts = cv.take<int32_t>(counts_n);                  // [kDigits][chunks]
  const int32_t* kin = tokens;
  const int32_t* vin = nullptr;
  for (int p = 0; p < passes; ++p) {
    const int shift = 8 * p;
    BT_LAUNCH(chunks, kChunk, 0, stream, radix_count_kernel)(counts, kin, N, V, shift, chunks);
    BT_KERNEL_CHECK("radix_count_kernel");
    BT_LAUNCH(1, 1024, 0, stream, exclusive_scan_kernel)(counts, int(counts_n));
    BT_KERNEL_CHECK("exclusive_scan_kernel");
    BT_LAUNCH(chunks, kChunk, 0, stream, radix_scatter_kernel)(keys[p % 2], vals[p % 2], kin, vin, counts, N, V,
                                                                shift, chunks);
    BT_KERNEL_CHECK("radix_scatter_kernel");
    kin = keys[p % 2];
    vin = vals[p % 2];
  }
  const dim3 grid(unsigned(N), unsigned(ceil_div(C, kThreads)));
  BT_DISPATCH_ACT(t, T,
                  BT_LAUNCH(grid, kThreads, 0, stream, embedding_backward_kernel<T>)(
                      dtable, static_cast<const T*>(dout), kin, vin, N, V, C));
  BT_KERNEL_CHECK("embedding_backward_kernel");
}

}  // namespace bt::cuda

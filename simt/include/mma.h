// SIMT emulator (simt/): the nvcuda::wmma API of CUDA's mma.h for bf16 16x16x16
// tiles with fp32 accumulators. A fragment holds the whole tile in every lane (num_elements is
// the tile size, not the GPU's per-lane share), so element-wise loops over x[] stay correct;
// code that assumes the GPU's element-to-lane mapping does not compile to the same result and
// is wrong on the GPU too. Memory behaviour is made strict, so that a missing __syncwarp shows:
// load_matrix_sync reads before its warp barrier (a tile that other lanes have not finished
// writing reads as garbage), store_matrix_sync writes only this lane's 1/32 of the tile after
// its barrier (the rest appears when the other lanes store). Pointers must be 32-byte aligned
// and ldm a multiple of 16 bytes, as on the GPU.
#pragma once
#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda_bf16.h"
#include "cuda_runtime.h"

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulator has the 16x16x16 shape only");
  static constexpr int kRows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int kCols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = kRows * kCols;
  T x[num_elements];  // [kRows][kCols] row-major
};

namespace detail {
inline void check_pointer(const void* p, unsigned ldm, size_t elem, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0)
    ::bt::simt::fail(std::string(what) + " with a pointer that is not 32-byte aligned");
  if ((ldm * elem) % 16 != 0)
    ::bt::simt::fail(std::string(what) + " with ldm " + std::to_string(ldm) + " that is not a multiple of 16 bytes");
}
inline int lane() { return int(threadIdx.x % 32); }
}  // namespace detail

template <class Use, class T, class Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  static_assert(!std::is_same_v<Use, accumulator>, "accumulators load with a layout_t");
  detail::check_pointer(p, ldm, sizeof(T), "load_matrix_sync");
  using F = fragment<Use, 16, 16, 16, T, Layout>;
  for (int r = 0; r < F::kRows; ++r)
    for (int c = 0; c < F::kCols; ++c)
      f.x[r * F::kCols + c] = std::is_same_v<Layout, row_major> ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r];
  __syncwarp();
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm, layout_t l) {
  detail::check_pointer(p, ldm, sizeof(float), "load_matrix_sync");
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c)
      f.x[r * 16 + c] = l == mem_row_major ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r];
  __syncwarp();
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t l) {
  detail::check_pointer(p, ldm, sizeof(float), "store_matrix_sync");
  __syncwarp();
  for (int e = detail::lane(); e < 256; e += 32) {
    const int r = e / 16, c = e % 16;
    (l == mem_row_major ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r]) = f.x[e];
  }
}

template <class Use, class T, class Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, const T& v) {
  for (auto& e : f.x) e = v;
}

// d = a b + c, products and sums in fp32 (sum order: c, then k = 0 .. 15).
template <class LA, class LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  __syncwarp();
  float out[256];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float s = c.x[i * 16 + j];
      for (int k = 0; k < 16; ++k) s += __bfloat162float(a.x[i * 16 + k]) * __bfloat162float(b.x[k * 16 + j]);
      out[i * 16 + j] = s;
    }
  for (int e = 0; e < 256; ++e) d.x[e] = out[e];
}

}  // namespace nvcuda::wmma

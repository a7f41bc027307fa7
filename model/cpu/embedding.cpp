// Embedding lookup (out[i] = table[tokens[i]]) and its deterministic backward.
//
// The backward groups the n positions by token id (a sort of (token, position) pairs), so every
// table row is owned by exactly one OpenMP iteration and sums its positions in position order:
// no atomics, no races, the same bits for any thread count, and one `+=` per element of dtable
// (so two calls give exactly twice one call).
#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "model/cpu/ops.h"

namespace bt::cpu {

template <class T>
void embedding_forward(T* out, const int32_t* tokens, const T* table, size_t n, int C) {
  // out [n, C], tokens [n], table [V, C]
#pragma omp parallel for schedule(static) if (n * static_cast<size_t>(C) >= (1u << 15))
  for (size_t i = 0; i < n; ++i) {
    std::memcpy(out + i * C, table + static_cast<size_t>(tokens[i]) * C, sizeof(T) * C);
  }
}

template <class T>
void embedding_backward(T* dtable, const T* dout, const int32_t* tokens, size_t n, int C) {
  // dtable [V, C], dout [n, C], tokens [n]
  if (dtable == nullptr || n == 0) return;
  std::vector<std::pair<int32_t, size_t>> order(n);  // (token, position), sorted: groups by token
  for (size_t i = 0; i < n; ++i) order[i] = {tokens[i], i};
  std::sort(order.begin(), order.end());
  std::vector<size_t> group_start;  // index into order where each distinct token begins
  group_start.reserve(n + 1);
  for (size_t i = 0; i < n; ++i) {
    if (i == 0 || order[i].first != order[i - 1].first) group_start.push_back(i);
  }
  group_start.push_back(n);
  const long groups = static_cast<long>(group_start.size()) - 1;

#pragma omp parallel if (n * static_cast<size_t>(C) >= (1u << 15))
  {
    std::vector<T> acc(C);  // [C] the sum over one token's positions
#pragma omp for schedule(dynamic, 16)
    for (long g = 0; g < groups; ++g) {
      const size_t begin = group_start[g], end = group_start[g + 1];
      const T* first = dout + order[begin].second * C;
      for (int c = 0; c < C; ++c) acc[c] = first[c];
      for (size_t p = begin + 1; p < end; ++p) {
        const T* row = dout + order[p].second * C;
        for (int c = 0; c < C; ++c) acc[c] += row[c];
      }
      T* dst = dtable + static_cast<size_t>(order[begin].first) * C;
      for (int c = 0; c < C; ++c) dst[c] += acc[c];
    }
  }
}

template void embedding_forward<float>(float*, const int32_t*, const float*, size_t, int);
template void embedding_forward<double>(double*, const int32_t*, const double*, size_t, int);
template void embedding_backward<float>(float*, const float*, const int32_t*, size_t, int);
template void embedding_backward<double>(double*, const double*, const int32_t*, size_t, int);

}  // namespace bt::cpu

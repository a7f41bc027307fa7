// Block Transformer glue (docs/design.md §2.2): assembling the token-decoder input rows from the prefix
// vectors and the token embeddings, selecting the positions whose outputs predict tokens, and the
// transpose of the projection_layer embedder.
//
// Row (b, i), i = 0..N-2, conditions on block i and predicts block i+1:
//   [P_(b,i,0) .. P_(b,i,R-1), e(t_(i+1),0) .. e(t_(i+1),LB-2)],  length S = R + LB - 1.
// Each prefix vector and each token embedding lands in at most one row, so the backward is a
// plain scatter with one `+=` per element (the embeddings of block 0 and of the last token of
// every block get no gradient from here).
#include <cstring>

#include "model/cpu/ops.h"

namespace bt::cpu {

template <class T>
void td_assemble_forward(T* out, const T* prefix, const T* tok, size_t B, int N, int R, int LB, int D) {
  // out [B, N-1, S, D]; prefix [B, N, R, D]; tok [B, N*LB, D]
  if (N < 2) return;
  const int S = R + LB - 1;
  const size_t rows = B * (N - 1);
#pragma omp parallel for schedule(static) if (rows * S * D >= (1u << 15))
  for (size_t r = 0; r < rows; ++r) {
    const size_t b = r / (N - 1), i = r % (N - 1);
    T* o = out + r * S * D;
    std::memcpy(o, prefix + (b * N + i) * R * D, sizeof(T) * R * D);
    std::memcpy(o + static_cast<size_t>(R) * D, tok + (b * N * LB + (i + 1) * LB) * D, sizeof(T) * (LB - 1) * D);
  }
}

template <class T>
void td_assemble_backward(T* dprefix, T* dtok, const T* dout, size_t B, int N, int R, int LB, int D) {
  // dprefix [B, N, R, D]; dtok [B, N*LB, D]; dout [B, N-1, S, D]
  if (N < 2) return;
  const int S = R + LB - 1;
  const size_t rows = B * (N - 1);
  const size_t nP = static_cast<size_t>(R) * D, nT = static_cast<size_t>(LB - 1) * D;
#pragma omp parallel for schedule(static) if (rows * S * D >= (1u << 15))
  for (size_t r = 0; r < rows; ++r) {
    const size_t b = r / (N - 1), i = r % (N - 1);
    const T* g = dout + r * S * D;
    if (dprefix) {
      T* o = dprefix + (b * N + i) * nP;
      for (size_t e = 0; e < nP; ++e) o[e] += g[e];
    }
    if (dtok) {
      T* o = dtok + (b * N * LB + (i + 1) * LB) * D;
      for (size_t e = 0; e < nT; ++e) o[e] += g[nP + e];
    }
  }
}

template <class T>
void td_select_forward(T* out, const T* h, size_t rows, int R, int LB, int D) {
  // out [rows, LB, D]; h [rows, S, D], positions R-1 .. S-1
  const int S = R + LB - 1;
  const size_t n = static_cast<size_t>(LB) * D;
#pragma omp parallel for schedule(static) if (rows * n >= (1u << 15))
  for (size_t r = 0; r < rows; ++r) {
    std::memcpy(out + r * n, h + (r * S + (R - 1)) * D, sizeof(T) * n);
  }
}

template <class T>
void td_select_backward(T* dh, const T* dout, size_t rows, int R, int LB, int D) {
  // dh [rows, S, D]; dout [rows, LB, D]
  if (dh == nullptr) return;
  const int S = R + LB - 1;
  const size_t n = static_cast<size_t>(LB) * D;
#pragma omp parallel for schedule(static) if (rows * n >= (1u << 15))
  for (size_t r = 0; r < rows; ++r) {
    T* o = dh + (r * S + (R - 1)) * D;
    const T* g = dout + r * n;
    for (size_t e = 0; e < n; ++e) o[e] += g[e];
  }
}

template <class T>
void transpose_forward(T* out, const T* in, size_t n, int A, int C) {
  // out [n, C, A]; in [n, A, C]
#pragma omp parallel for schedule(static) if (n * A * C >= (1u << 15))
  for (size_t i = 0; i < n; ++i) {
    const T* src = in + i * A * C;
    T* dst = out + i * A * C;
    for (int a = 0; a < A; ++a)
      for (int c = 0; c < C; ++c) dst[static_cast<size_t>(c) * A + a] = src[static_cast<size_t>(a) * C + c];
  }
}

template <class T>
void transpose_backward(T* din, const T* dout, size_t n, int A, int C) {
  // din [n, A, C] += dout [n, C, A] transposed
#pragma omp parallel for schedule(static) if (n * A * C >= (1u << 15))
  for (size_t i = 0; i < n; ++i) {
    const T* src = dout + i * A * C;
    T* dst = din + i * A * C;
    for (int a = 0; a < A; ++a)
      for (int c = 0; c < C; ++c) dst[static_cast<size_t>(a) * C + c] += src[static_cast<size_t>(c) * A + a];
  }
}

template void td_assemble_forward<float>(float*, const float*, const float*, size_t, int, int, int, int);
template void td_assemble_forward<double>(double*, const double*, const double*, size_t, int, int, int, int);
template void td_assemble_backward<float>(float*, float*, const float*, size_t, int, int, int, int);
template void td_assemble_backward<double>(double*, double*, const double*, size_t, int, int, int, int);
template void td_select_forward<float>(float*, const float*, size_t, int, int, int);
template void td_select_forward<double>(double*, const double*, size_t, int, int, int);
template void td_select_backward<float>(float*, const float*, size_t, int, int, int);
template void td_select_backward<double>(double*, const double*, size_t, int, int, int);

template void transpose_forward<float>(float*, const float*, size_t, int, int);
template void transpose_forward<double>(double*, const double*, size_t, int, int);
template void transpose_backward<float>(float*, const float*, size_t, int, int);
template void transpose_backward<double>(double*, const double*, size_t, int, int);

}  // namespace bt::cpu

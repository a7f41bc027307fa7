// The CPU reference ops: plain loops (OpenMP over rows / batch x heads) and OpenBLAS GEMMs,
// templated on float and double (double is for finite-difference gradient checks). Each op
// is defined in its own .cpp (embedding, layernorm, matmul, attention, pointwise, glue,
// classifier) and instantiated there for float and double.
//
// Backward ops ACCUMULATE (+=) into every gradient they write; a null gradient pointer is
// skipped. Shapes are in the comments; names follow docs/design.md (B batch, T sequence, H heads,
// hd head dim, C channels, V vocab, R prefix length, LB block length).
#pragma once
#include <cstddef>
#include <cstdint>

namespace bt::cpu {

// out[n, C] = table[tokens[n], :]; tokens [n], table [V, C]. Token ids are checked by callers.
template <class T> void embedding_forward(T* out, const int32_t* tokens, const T* table, size_t n, int C);
// dtable[tokens[i], :] += dout[i, :]; deterministic (fixed summation order for any thread count).
template <class T> void embedding_backward(T* dtable, const T* dout, const int32_t* tokens, size_t n, int C);

// y = (x - mean) * rstd * w + b over the last dim; mean [n], rstd [n] saved for backward.
template <class T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* x, const T* w, const T* b, size_t n, int C, double eps);
template <class T>
void layernorm_backward(T* dx, T* dw, T* db, const T* dout, const T* x, const T* w, const T* mean, const T* rstd,
                        size_t n, int C);

// out[n, OC] = inp[n, IC] @ W[OC, IC]^T + bias[OC]; bias may be null. GEMM through cblas.
template <class T> void matmul_forward(T* out, const T* inp, const T* W, const T* bias, size_t n, int IC, int OC);
// dinp [n, IC] += dout @ W; dW [OC, IC] += dout^T @ inp; dbias [OC] += sum_rows(dout).
template <class T>
void matmul_backward(T* dinp, T* dW, T* dbias, const T* dout, const T* inp, const T* W, size_t n, int IC, int OC);

// qkv [B, T, H, 3, hd] -> q, k, v [B, H, T, hd]; rotary (rotate-half, first rd dims, position t,
// inv_freq[i] = base^(-2i/rd), angles computed in double then rounded to T) on q and k.
template <class T>
void qkv_rotary_forward(T* q, T* k, T* v, const T* qkv, size_t B, int Tn, int H, int hd, int rd, double base);
template <class T>
void qkv_rotary_backward(T* dqkv, const T* dq, const T* dk, const T* dv, size_t B, int Tn, int H, int hd, int rd,
                         double base);

// Causal attention. q, k, v [B, H, T, hd]; att [B, H, T, T] softmax probabilities (upper
// triangle written as 0); out [B, T, H * hd] (heads merged); scale 1/sqrt(hd). keys [B, T]
// (1 = visible) and first [B] (first visible key): pads hidden as model/backend.h AttnMask
// says; null: every key visible.
template <class T>
void attention_forward(T* out, T* att, const T* q, const T* k, const T* v, size_t B, int Tn, int H, int hd,
                       const int32_t* keys = nullptr, const int32_t* first = nullptr);
template <class T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* att, const T* q, const T* k, const T* v,
                        size_t B, int Tn, int H, int hd, const int32_t* keys = nullptr);

// Exact GELU (erf).
template <class T> void gelu_forward(T* out, const T* x, size_t n);
template <class T> void gelu_backward(T* dx, const T* dout, const T* x, size_t n);
// out = a + b (+ c when c is not null)
template <class T> void add_forward(T* out, const T* a, const T* b, const T* c, size_t n);
// dst += src
template <class T> void accumulate(T* dst, const T* src, size_t n);

// Token-decoder rows (docs/design.md §2.2). prefix [B, N, R, D], tok [B, N*LB, D] -> out [B, N-1, S, D],
// S = R + LB - 1, row (b, i) = [prefix[b, i, :, :], tok[b, (i+1)*LB .. (i+1)*LB + LB - 2, :]].
template <class T> void td_assemble_forward(T* out, const T* prefix, const T* tok, size_t B, int N, int R, int LB, int D);
template <class T>
void td_assemble_backward(T* dprefix, T* dtok, const T* dout, size_t B, int N, int R, int LB, int D);
// h [rows, S, D] -> out [rows, LB, D], positions R-1 .. S-1.
template <class T> void td_select_forward(T* out, const T* h, size_t rows, int R, int LB, int D);
template <class T> void td_select_backward(T* dh, const T* dout, size_t rows, int R, int LB, int D);
// out [n, C, A] = in [n, A, C] with the last two dims swapped; the backward din [n, A, C] += dout^T.
template <class T> void transpose_forward(T* out, const T* in, size_t n, int A, int C);
template <class T> void transpose_backward(T* din, const T* dout, size_t n, int A, int C);

// Softmax cross-entropy. logits [n, V], targets [n] (-1 = ignore) -> losses [n] (0 when
// ignored); when dlogits is not null: dlogits = dscale * (softmax - onehot), 0 for ignored rows
// (overwritten, not accumulated). Computed in double inside each row.
template <class T>
void cross_entropy(T* losses, T* dlogits, const T* logits, const int32_t* targets, size_t n, int V, double dscale);

// ---- inference with KV caches (model/cpu/attention_cached.cpp) --------------------------------
// qkv [B, T, H, 3, hd] for absolute positions pos0 .. pos0+T-1 -> q [B, H, T, hd] with rotary at
// those positions (the same cos/sin as qkv_rotary_forward at that position), and k (rotary), v
// written into kc, vc [B, H, Tmax, hd] at positions pos0 .. pos0+T-1.
// row_pos [B] (may be null): row b's positions start at row_pos[b] instead of pos0; a position
// outside the cache writes nothing (as the CUDA kernel does with device positions).
template <class T>
void qkv_rotary_cache(T* q, T* kc, T* vc, const T* qkv, size_t B, int Tn, int H, int hd, int Tmax, int64_t pos0,
                      int rd, double base, const int32_t* row_pos = nullptr);
// out [B, T, H * hd]: query t (position pos0 + t) attends to cache positions start[b] .. pos0 + t;
// start [B] may be null (0). A query with no visible key gets zeros. row_pos [B] (may be null):
// row b's query t is at row_pos[b] + t instead, clamped to the cache.
template <class T>
void attention_cached(T* out, const T* q, const T* kc, const T* vc, const int32_t* start, size_t B, int Tn, int H,
                      int hd, int Tmax, int64_t pos0, const int32_t* row_pos = nullptr);

}  // namespace bt::cpu

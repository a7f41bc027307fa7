// Host launchers of the CUDA kernels, one group per .cu file. Each takes raw device pointers,
// sizes, the activation dtype (f32 or bf16; parameter gradients, master weights and moments are
// always f32) and the stream last. Shapes are in the comments, names as in docs/design.md. Every
// launcher is deterministic: no float atomics, fixed reduction orders.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
#include "model/sampling.h"

namespace bt::cuda {

class Scratch;
class Gemm;

// ---- embedding.cu ------------------------------------------------------------------------------
// out [n, C] = table [V, C] rows tokens [n]
void embedding_forward(void* out, const int32_t* tokens, const void* table, size_t n, int C, DType t,
                       cudaStream_t stream);
// dtable [V, C] f32 += dout [n, C] rows summed per token id tokens [n] (i32 on the device), each
// token's rows in increasing position order (a stable device sort groups them; ids outside
// [0, V) are skipped: the model checks ids before upload). No atomics, no host synchronization.
void embedding_backward(float* dtable, const void* dout, const int32_t* tokens, size_t n, int V, int C, DType t,
                        Scratch& scratch, cudaStream_t stream);

// ---- layernorm.cu ------------------------------------------------------------------------------
// out [n, C], mean [n], rstd [n] (dtype stats_t: f32 or t), x [n, C], w [C], b [C]
void layernorm_forward(void* out, void* mean, void* rstd, const void* x, const void* w, const void* b, size_t n,
                       int C, float eps, DType t, DType stats_t, cudaStream_t stream);
// out [n, C] = a + b (+ c when not null), rounded to the storage type as add_forward does;
// then ln1 [n, C] = LayerNorm(out; w1, b1) with mean1, rstd1 [n], and the same with w2, b2 into
// ln2, mean2, rstd2 when ln2 is not null. Bit-identical to add_forward + layernorm_forward.
void residual_layernorm_forward(void* out, const void* a, const void* b, const void* c, void* ln1, void* mean1,
                                void* rstd1, const void* w1, const void* b1, void* ln2, void* mean2, void* rstd2,
                                const void* w2, const void* b2, size_t n, int C, float eps, DType t, DType stats_t,
                                cudaStream_t stream);
// dx [n, C] += ...; dw, db [C] f32 += ... (each may be null). With bf16 stats the row mean is
// recomputed from x in fp32 (exact) and rstd is taken as stored.
void layernorm_backward(void* dx, float* dw, float* db, const void* dout, const void* x, const void* w,
                        const void* mean, const void* rstd, size_t n, int C, DType t, DType stats_t, Scratch& scratch,
                        cudaStream_t stream);

// ---- matmul.cu (GEMMs through cublaslt.h) ------------------------------------------------------
// out [n, OC] = inp [n, IC] @ W [OC, IC]^T + bias [OC] (bias may be null)
void matmul_forward(Gemm& gemm, void* out, const void* inp, const void* W, const void* bias, size_t n, int IC, int OC,
                    DType t, cudaStream_t stream);
// dinp [n, IC] += dout @ W (= with overwrite_dinp); dW [OC, IC] f32 += dout^T @ inp; dbias [OC]
// f32 += column sums of dout
void matmul_backward(Gemm& gemm, void* dinp, float* dW, float* dbias, const void* dout, const void* inp,
                     const void* W, size_t n, int IC, int OC, DType t, bool overwrite_dinp, Scratch& scratch,
                     cudaStream_t stream);

// ---- rotary.cu ---------------------------------------------------------------------------------
// cos_t, sin_t [P, rd/2] f32 tables for positions 0..P-1 (computed on the host in double, as the
// CPU reference does).
// qkv [B, T, H, 3, hd] -> q, k, v [B, H, T, hd], rotary at positions 0..T-1 on q and k.
void qkv_rotary_forward(void* q, void* k, void* v, const void* qkv, int B, int T, int H, int hd, int rd,
                        const float* cos_t, const float* sin_t, DType t, cudaStream_t stream);
// dqkv [B, T, H, 3, hd] += (or =, overwrite) the transpose of the above applied to dq, dk, dv
// (any may be null: no contribution; overwritten parts of a null one become 0).
void qkv_rotary_backward(void* dqkv, const void* dq, const void* dk, const void* dv, int B, int T, int H, int hd,
                         int rd, const float* cos_t, const float* sin_t, DType t, bool overwrite,
                         cudaStream_t stream);
// qkv [B, T, H, 3, hd] at positions pos0.. -> q [B, H, T, hd] (rotary), kc, vc [B, H, Tmax, hd]
// written at pos0 .. pos0 + T - 1 (rotary on k).
// dpos (device, may be null): row b's positions start at pos0 + dpos[b * dpos_stride] instead
// (stride 0: one position for all rows; cache writes past Tmax are skipped; the cos/sin tables
// must cover Tmax positions).
void qkv_rotary_cache(void* q, void* kc, void* vc, const void* qkv, int B, int T, int H, int hd, int rd,
                      int64_t pos0, int64_t Tmax, const float* cos_t, const float* sin_t, DType t,
                      cudaStream_t stream, const int32_t* dpos = nullptr, int dpos_stride = 0);

// ---- attention.cu (+ attention_small.cu, attention_flash_hd*.cu) -------------------------------
// q, k, v [B, H, T, hd] -> out [B, T, H * hd], lse [B, H, T] f32 (log-sum-exp of the scaled
// scores per query). T <= 32: one warp per (b, h) holds the whole T x T; longer: tiled
// online softmax (flash), hd <= 128. keys [B, T] i32 and first [B] i32 (model/backend.h
// AttnMask) hide pads; both null: every key visible.
void attention_forward(void* out, float* lse, const void* q, const void* k, const void* v, int B, int H, int T,
                       int hd, DType t, const int32_t* keys, const int32_t* first, cudaStream_t stream);
// dq, dk, dv [B, H, T, hd] += (or =, overwrite) ...; recomputes the probabilities from q, k and lse
// (with the forward's key mask).
void attention_backward(void* dq, void* dk, void* dv, const void* dout, const void* out, const float* lse,
                        const void* q, const void* k, const void* v, int B, int H, int T, int hd, DType t,
                        const int32_t* keys, const int32_t* first, bool overwrite, Scratch& scratch,
                        cudaStream_t stream);
// out [B, T, H * hd]: query t (position pos0 + t) over cache positions start[b] .. pos0 + t.
// start [B] i32 or null (0). kc, vc [B, H, Tmax, hd].
// dpos (device, may be null): row b's query t is at pos0 + dpos[b * dpos_stride] + t (clamped to
// the cache; stride 0: one position for all rows).
void attention_cached(void* out, const void* q, const void* kc, const void* vc, const int32_t* start, int B, int H,
                      int T, int hd, int64_t pos0, int64_t Tmax, DType t, cudaStream_t stream,
                      const int32_t* dpos = nullptr, int dpos_stride = 0);
// Raises the dynamic shared-memory limits of the attention kernels (once per device).
void attention_setup(int device);

// ---- pointwise.cu ------------------------------------------------------------------------------
void gelu_forward(void* out, const void* x, size_t n, DType t, cudaStream_t stream);               // out [n]
// dx += (or =, overwrite) dout * gelu'(x)
void gelu_backward(void* dx, const void* dout, const void* x, size_t n, DType t, bool overwrite, cudaStream_t stream);
// out = a + b (+ c when not null), all [n]
void add_forward(void* out, const void* a, const void* b, const void* c, size_t n, DType t, cudaStream_t stream);
// dst [n] += src [n]; each f32 or bf16
void accumulate(void* dst, DType dst_t, const void* src, DType src_t, size_t n, cudaStream_t stream);

// ---- glue.cu -----------------------------------------------------------------------------------
// out [B, N-1, S, D] from prefix [B, N, R, D] and tok [B, N*LB, D]; S = R + LB - 1
void td_assemble_forward(void* out, const void* prefix, const void* tok, int B, int N, int R, int LB, int D, DType t,
                         cudaStream_t stream);
// dprefix, dtok += (either may be null)
void td_assemble_backward(void* dprefix, void* dtok, const void* dout, int B, int N, int R, int LB, int D, DType t,
                          cudaStream_t stream);
// out [rows, LB, D] = h [rows, S, D] positions R-1 .. S-1
void td_select_forward(void* out, const void* h, size_t rows, int R, int LB, int D, DType t, cudaStream_t stream);
void td_select_backward(void* dh, const void* dout, size_t rows, int R, int LB, int D, DType t, cudaStream_t stream);
// out [n, C, A] = in [n, A, C] transposed; the backward din [n, A, C] += dout [n, C, A]^T
void transpose_forward(void* out, const void* in, size_t n, int A, int C, DType t, cudaStream_t stream);
void transpose_backward(void* din, const void* dout, size_t n, int A, int C, DType t, cudaStream_t stream);

// ---- classifier.cu -----------------------------------------------------------------------------
// logits [n, V], targets [n] -> losses [n] f32; dlogits [n, V] (may be null, may alias logits)
// = dscale * (softmax - onehot), zero rows where target = -1.
void cross_entropy(float* losses, void* dlogits, const void* logits, const int32_t* targets, size_t n, int V,
                   float dscale, DType t, cudaStream_t stream);

// ---- optimizer.cu ------------------------------------------------------------------------------
// sum of g [n]^2 in double, two deterministic passes; waits for the stream.
double sum_squares(const void* g, size_t n, DType t, Scratch& scratch, cudaStream_t stream);
void scale(void* x, size_t n, float s, DType t, cudaStream_t stream);  // x [n] *= s
struct AdamWArgs {
  float lr, beta1, beta2, eps, weight_decay, inv_c1, inv_c2;
};
// master, m, v, grad [n] f32; param [n] (param_t) written from master. master null: param is
// f32 and is the master.
void adamw_update(void* param, DType param_t, float* master, const float* grad, float* m, float* v, size_t n,
                  const AdamWArgs& a, cudaStream_t stream);

// ---- sample.cu (decoding; model/sampling.h) ----------------------------------------------------
// logits [B, V] -> ids [B] i32, hist [B, W] i32 column s % W (may be null), done [B] i32 (may
// be null; rows already done output eos_id) by the rule of model/sampling.h, row b's draw keyed by
// (seed, seq[b], s) with s = step[b * step_stride] (stride 0: one index for all rows). params
// [B, kSampleParamWords] (may be null): row b's own parameters instead of p. One block per row.
void sample_tokens(const void* logits, int B, int V, DType t, int32_t* ids, int32_t* hist, int W, int32_t* done,
                   const int32_t* seq, const int32_t* step, int step_stride, const int32_t* params,
                   const SampleParams& p, cudaStream_t stream);
// c [K, n] i32 (device): c[k, i] += add[k] (K host values, K <= 8).
void add_i32(int32_t* c, const int32_t* add, int K, int64_t n, cudaStream_t stream);

// ---- device.cu ---------------------------------------------------------------------------------
// Launches a one-thread kernel and reads its result back: true when kernels run on this device.
bool probe_kernel(int device);

}  // namespace bt::cuda

// The rule that turns a row of logits into the next token (docs/inference.md, "Sampling"),
// defined once so that every backend draws the same token from the same logits: the CPU
// reference (sample_row below, model/sampling.cpp) and the CUDA kernel (model/cuda/sample.cu)
// compute the same integers from the same definitions. The pieces marked BT_HD are shared
// with device code.
//
// For a row x[0..V) of logits (converted to float first):
// - key(x) maps floats to uint32 in the same order (larger logit, larger key); -0 is taken as +0.
// - Greedy (greedy, temperature <= 0): the largest key, the lowest index among equal ones.
// - Otherwise every token gets an integer weight q_i = floor(exp((x_i - m) / T) * 2^s), m the
//   largest logit, s = 62 - ceil(log2 V) (so that sums of V weights fit in 63 bits; the most
//   likely token weighs exactly 2^s). Integer sums are exact in any order, so how a backend
//   reduces them cannot change a choice.
// - Order tokens by (key descending, index ascending). top-k keeps the first k of that order;
//   top-p keeps the shortest prefix of what top-k kept whose weight reaches
//   M = min(S, ceil(top_p * S)) (S the weight top-k kept; top_p computed in double). Both cuts
//   are one threshold key tau and a tie count n: kept = key > tau, or key == tau and among the
//   first n such tokens by index.
// - The draw: r = the Philox4x32-10 draw (seed, sequence, step) (core/philox.h), t =
//   floor(r * S_kept / 2^64); the token is the first kept index (ascending) whose running weight
//   exceeds t. So token i is chosen with probability q_i / S_kept: the temperature softmax
//   renormalised over the kept set, to within the 2^-s quantisation of the weights.
#pragma once
#include <math.h>

#include <cstdint>
#include <cstring>

#include "core/philox.h"

namespace bt {

// How decoding picks tokens (one set for the whole batch).
struct SampleParams {
  bool greedy = false;
  double temperature = 1.0;  // <= 0: greedy
  int top_k = 0;             // 0 (or >= V): no limit
  double top_p = 1.0;        // >= 1: no limit
  uint64_t seed = 0;
  int eos_id = -1;           // a row that draws it is finished (DecodeState::done); -1: never
  bool is_greedy() const { return greedy || temperature <= 0; }
};

// Order-preserving float -> uint32 (sign-magnitude to offset binary); -0 maps like +0.
BT_HD uint32_t sample_key(float x) {
  if (x == 0.f) x = 0.f;
  uint32_t b;
  memcpy(&b, &x, 4);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
BT_HD float sample_key_value(uint32_t k) {
  const uint32_t b = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float x;
  memcpy(&x, &b, 4);
  return x;
}

// s = 62 - ceil(log2 V): V weights of at most 2^s sum below 2^62.
BT_HD int sample_mass_shift(int V) {
  int c = 0;
  while ((int64_t(1) << c) < int64_t(V)) ++c;
  return 62 - c;
}

// q = floor(exp((x - m) / T) * 2^s) for a logit x <= m.
BT_HD uint64_t sample_weight(float x, float m, double T, int shift) {
  const double e = exp((double(x) - double(m)) / T);
  return uint64_t(floor(e * double(uint64_t(1) << shift)));
}

// M = min(S, ceil(top_p * S)): the weight top-p must reach.
BT_HD uint64_t sample_top_p_mass(double top_p, uint64_t S) {
  const double m = ceil(top_p * double(S));
  if (!(m < double(S))) return S;
  return m < 1.0 ? uint64_t(1) : uint64_t(m);
}

// A row's own SampleParams in device memory (DecodeState::params [B, kSampleParamWords] i32):
// the greedy flag, top_k, eos_id, then the 64-bit seed and the bits of the doubles temperature
// and top_p, low word first. A server batches requests with different parameters this way.
enum SampleParamWord : int {
  kSpGreedy = 0,
  kSpTopK = 1,
  kSpEos = 2,
  kSpSeed = 3,         // and 4
  kSpTemperature = 5,  // and 6
  kSpTopP = 7,         // and 8
  kSampleParamWords = 10,
};
BT_HD uint64_t sample_param_u64(const int32_t* w, int at) {
  return uint64_t(uint32_t(w[at])) | (uint64_t(uint32_t(w[at + 1])) << 32);
}
BT_HD double sample_param_f64(const int32_t* w, int at) {
  const uint64_t u = sample_param_u64(w, at);
  double d;
  memcpy(&d, &u, 8);
  return d;
}
inline void pack_sample_params(const SampleParams& p, int32_t* w) {
  auto put = [&](int at, uint64_t u) {
    w[at] = int32_t(uint32_t(u));
    w[at + 1] = int32_t(uint32_t(u >> 32));
  };
  uint64_t t, q;
  memcpy(&t, &p.temperature, 8);
  memcpy(&q, &p.top_p, 8);
  w[kSpGreedy] = p.greedy ? 1 : 0;
  w[kSpTopK] = p.top_k;
  w[kSpEos] = p.eos_id;
  put(kSpSeed, p.seed);
  put(kSpTemperature, t);
  put(kSpTopP, q);
  w[kSampleParamWords - 1] = 0;
}
inline SampleParams unpack_sample_params(const int32_t* w) {
  SampleParams p;
  p.greedy = w[kSpGreedy] != 0;
  p.top_k = w[kSpTopK];
  p.eos_id = w[kSpEos];
  p.seed = sample_param_u64(w, kSpSeed);
  p.temperature = sample_param_f64(w, kSpTemperature);
  p.top_p = sample_param_f64(w, kSpTopP);
  return p;
}

// The reference implementation of the rule above (host code): the chosen token of one row.
int32_t sample_row(const float* logits, int V, const SampleParams& p, uint32_t seq, uint32_t step);

}  // namespace bt

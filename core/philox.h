// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a
// counter-based random number generator. A draw is a pure function of a 128-bit counter and a
// 64-bit key, so any thread on any device computes the same value for the same (key, counter)
// without shared state; decoding keys it by (seed) and counts by (step, sequence), so that a
// sequence's draws depend neither on the backend nor on which other sequences share its batch.
// Header-only and usable from host code and from CUDA device code (model/cuda/sample.cu).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define BT_HD __host__ __device__ __forceinline__
#else
#define BT_HD inline
#endif

namespace bt {

struct Philox4x32 {
  uint32_t v[4];
};

// High and low 32 bits of a 32 x 32 -> 64-bit product.
BT_HD uint32_t philox_mulhi(uint32_t a, uint32_t b) { return uint32_t((uint64_t(a) * b) >> 32); }

// Ten rounds with the key bumped between rounds (Random123's philox4x32_R with R = 10).
BT_HD Philox4x32 philox4x32_10(Philox4x32 c, uint32_t k0, uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      k0 += W0;
      k1 += W1;
    }
    const uint32_t hi0 = philox_mulhi(M0, c.v[0]), lo0 = M0 * c.v[0];
    const uint32_t hi1 = philox_mulhi(M1, c.v[2]), lo1 = M1 * c.v[2];
    c = Philox4x32{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
  }
  return c;
}

// The 64 random bits of draw `step` of sequence `seq` under `seed`: counter (step, seq, 0, 0),
// key (seed low, seed high); the first two output words, low word first.
BT_HD uint64_t philox_draw(uint64_t seed, uint32_t seq, uint32_t step) {
  const Philox4x32 r = philox4x32_10(Philox4x32{{step, seq, 0u, 0u}}, uint32_t(seed), uint32_t(seed >> 32));
  return (uint64_t(r.v[1]) << 32) | r.v[0];
}

// floor(a * b / 2^64) with 32-bit limbs (no 128-bit type needed in device code).
BT_HD uint64_t mulhi64(uint64_t a, uint64_t b) {
  const uint64_t a0 = uint32_t(a), a1 = a >> 32, b0 = uint32_t(b), b1 = b >> 32;
  const uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
  const uint64_t mid = (p00 >> 32) + uint32_t(p01) + uint32_t(p10);
  return p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
}

}  // namespace bt

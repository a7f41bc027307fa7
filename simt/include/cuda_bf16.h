// SIMT emulator (simt/): the bf16 type and conversions of CUDA's cuda_bf16.h, for the
// kernels compiled as C++ on the host. Same bits as the GPU: round to nearest even, NaN kept.
#pragma once
#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
  uint16_t __x;
  __nv_bfloat16() = default;
};

inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t u = uint32_t(h.__x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  __nv_bfloat16 h;
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it quiet
    h.__x = uint16_t((u >> 16) | 0x40u);
    return h;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  h.__x = uint16_t(u >> 16);
  return h;
}

// Host-side element conversion between dtypes (used by every backend's upload/download).
#include "core/dtype.h"

namespace bt {

void convert_dtype(void* dst, DType dt, const void* src, DType st, size_t n) {
  if (dt == st) {
    std::memcpy(dst, src, n * dtype_size(dt));
    return;
  }
  auto rd = [&](size_t i) -> double {
    switch (st) {
      case DType::f32: return static_cast<const float*>(src)[i];
      case DType::f64: return static_cast<const double*>(src)[i];
      case DType::bf16: return bf16_to_float(static_cast<const uint16_t*>(src)[i]);
      case DType::i32: return static_cast<const int32_t*>(src)[i];
      case DType::u16: return static_cast<const uint16_t*>(src)[i];
      case DType::u8: return static_cast<const uint8_t*>(src)[i];
    }
    return 0;
  };
  for (size_t i = 0; i < n; ++i) {
    const double x = rd(i);
    switch (dt) {
      case DType::f32: static_cast<float*>(dst)[i] = static_cast<float>(x); break;
      case DType::f64: static_cast<double*>(dst)[i] = x; break;
      case DType::bf16: static_cast<uint16_t*>(dst)[i] = float_to_bf16(static_cast<float>(x)); break;
      case DType::i32: static_cast<int32_t*>(dst)[i] = static_cast<int32_t>(x); break;
      case DType::u16: static_cast<uint16_t*>(dst)[i] = static_cast<uint16_t>(x); break;
      case DType::u8: static_cast<uint8_t*>(dst)[i] = static_cast<uint8_t>(x); break;
    }
  }
}

}  // namespace bt

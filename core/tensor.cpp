// Tensor helpers that need no backend.
#include "core/tensor.h"

#include <sstream>

namespace bt {

std::string Shape::str() const {
  std::ostringstream os;
  os << "[";
  for (int i = 0; i < ndim; ++i) os << (i ? ", " : "") << d[i];
  os << "]";
  return os.str();
}

Tensor Tensor::slice0(int64_t begin, int64_t end) const {
  BT_CHECK(shape.ndim >= 1 && begin >= 0 && begin <= end && end <= shape[0], "slice0 [", begin, ", ", end,
           ") of tensor ", shape.str());
  Shape s = shape;
  s.d[0] = end - begin;
  size_t row = numel() / static_cast<size_t>(shape[0]) * dtype_size(dtype);
  return Tensor(static_cast<char*>(data) + row * static_cast<size_t>(begin), s, dtype, device);
}

}  // namespace bt

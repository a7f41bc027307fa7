// Tensor: a non-owning view (pointer, dtype, device, shape) over memory that someone else owns:
// an arena of a backend, a parameter buffer, or a host vector. Row-major, contiguous.
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/dtype.h"
#include "core/error.h"

namespace bt {

constexpr int kMaxDims = 4;

struct Shape {
  std::array<int64_t, kMaxDims> d{};
  int ndim = 0;
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) {
    BT_CHECK(dims.size() <= kMaxDims, "Shape: at most ", kMaxDims, " dims");
    for (int64_t x : dims) d[ndim++] = x;
  }
  int64_t operator[](int i) const { return d[i < 0 ? ndim + i : i]; }
  size_t numel() const {
    size_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= static_cast<size_t>(d[i]);
    return ndim == 0 ? 0 : n;
  }
  bool operator==(const Shape& o) const {
    if (ndim != o.ndim) return false;
    for (int i = 0; i < ndim; ++i)
      if (d[i] != o.d[i]) return false;
    return true;
  }
  std::string str() const;
};

struct Tensor {
  void* data = nullptr;
  Shape shape;
  DType dtype = DType::f32;
  Device device = Device::cpu;

  Tensor() = default;
  Tensor(void* p, Shape s, DType t, Device dev = Device::cpu) : data(p), shape(s), dtype(t), device(dev) {}

  bool empty() const { return data == nullptr; }
  size_t numel() const { return shape.numel(); }
  size_t bytes() const { return numel() * dtype_size(dtype); }
  int64_t dim(int i) const { return shape[i]; }
  // Rows = product of all dims but the last.
  size_t rows() const { return shape.ndim == 0 ? 0 : numel() / static_cast<size_t>(shape[-1]); }

  template <class T> T* ptr() const {
    BT_CHECK(dtype_of<T>() == dtype, "tensor of dtype ", dtype_name(dtype), " read as ",
             dtype_name(dtype_of<T>()));
    return static_cast<T*>(data);
  }
  // Same memory, another shape with the same element count.
  Tensor view(Shape s) const {
    BT_CHECK(s.numel() == numel(), "view ", s.str(), " of tensor ", shape.str(), ": element counts differ");
    return Tensor(data, s, dtype, device);
  }
  // Rows [begin, end) along dim 0.
  Tensor slice0(int64_t begin, int64_t end) const;
};

}  // namespace bt

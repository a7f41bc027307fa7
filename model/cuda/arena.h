// GPU memory of the backend: an arena of a few big cudaMalloc blocks with bump allocation
// (256-byte aligned) for everything that lives as long as the backend (parameters, gradients,
// activations, optimizer state, cuBLASLt workspace), and one growable scratch buffer for
// the short-lived temporaries of single ops (reduction partials, index lists). No managed
// memory, no cudaMalloc per tensor, nothing freed before the backend goes.
#pragma once
#include <cstddef>
#include <vector>

namespace bt::cuda {

class Arena {
 public:
  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena();
  // bytes rounded up to 256; never returns null (a 0-byte request gets a valid address).
  void* alloc(size_t bytes, const char* what);
  size_t used() const { return used_; }          // bytes handed out
  size_t reserved() const { return reserved_; }  // bytes held from cudaMalloc
  size_t blocks() const { return blocks_.size(); }

 private:
  struct Block {
    char* base;
    size_t size, top;
  };
  std::vector<Block> blocks_;
#ifdef BT_SIMT
  size_t next_block_ = size_t(4) << 20;  // the emulator protects device memory per launch: keep it small
#else
  size_t next_block_ = size_t(256) << 20;  // the first block; later blocks double, up to kMaxBlock
#endif
  size_t used_ = 0, reserved_ = 0;
};

// One device buffer reused by every op for its temporaries. Ops run in order on one stream, so
// an op may take it whole; growing it waits for the stream (rare: sizes settle after a step).
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch();
  void* get(size_t bytes, void* stream);
  size_t capacity() const { return cap_; }

 private:
  void* p_ = nullptr;
  size_t cap_ = 0;
};

// Carves aligned pieces out of one scratch allocation: Carver c(base); float* a = c.take<float>(n);
class Carver {
 public:
  explicit Carver(void* base = nullptr) : p_(static_cast<char*>(base)) {}
  template <class T> T* take(size_t n) {
    char* r = p_;
    p_ += round(n * sizeof(T));
    return reinterpret_cast<T*>(r);
  }
  static size_t round(size_t b) { return (b + 255) / 256 * 256; }

 private:
  char* p_;
};

}  // namespace bt::cuda

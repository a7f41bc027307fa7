// Thin checked wrappers over the HDF5 C API for the shard reader and writer: RAII handles,
// the innermost message of HDF5's error stack (so our one-line errors can quote it), and
// scalar string / integer attributes. HDF5's own stack printing is turned off by h5::init().
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <utility>

namespace bt::h5 {

// Silences HDF5's default error printer (once per process). Every entry point calls it.
void init();

// Debian's HDF5 is the serial build, not thread-safe: every shard read or write takes this lock
// for the whole span in which it holds HDF5 handles (the loader's prefetch thread reads shards
// while the main thread may open others).
std::mutex& mutex();

// The innermost description on HDF5's error stack ("truncated file: eof = ..."), one line;
// clears the stack. Empty when HDF5 recorded nothing.
std::string last_error();

// Owns an hid_t and closes it with the matching H5*close.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer close) : id_(id), close_(close) {}
  Handle(Handle&& o) noexcept : id_(std::exchange(o.id_, -1)), close_(o.close_) {}
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, -1);
      close_ = o.close_;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }
  // Closes now; returns the close status (negative on failure, e.g. a failed flush).
  herr_t reset() {
    herr_t rc = 0;
    if (id_ >= 0 && close_) rc = close_(id_);
    id_ = -1;
    return rc;
  }
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }

 private:
  hid_t id_ = -1;
  Closer close_ = nullptr;
};

// Scalar attributes on an object (file root or dataset). Writers throw bt::Error with `what`
// (e.g. "shard 'x.h5'") as the message prefix; readers return false when the attribute is absent
// and throw when it exists with an unusable type.
void write_string_attr(hid_t obj, const char* name, const std::string& value, const std::string& what);
void write_int_attr(hid_t obj, const char* name, int64_t value, const std::string& what);
bool read_string_attr(hid_t obj, const char* name, std::string& value, const std::string& what);
bool read_int_attr(hid_t obj, const char* name, int64_t& value, const std::string& what);

}  // namespace bt::h5

// Fast checksums for integrity checks (checkpoint files, shards listed in manifest.json): XXH3-64
// from Debian's libxxhash, written as 16 lowercase hex digits. Not cryptographic: it detects
// corruption (flipped bits, truncation, a file replaced by another), not tampering. Measured
// speed: docs/checkpoints.md ("Integrity").
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace bt {

inline constexpr const char* kChecksumAlgorithm = "xxh3-64";

// Streaming XXH3-64 (seed 0).
class Xxh3 {
 public:
  Xxh3();
  ~Xxh3();
  Xxh3(const Xxh3&) = delete;
  Xxh3& operator=(const Xxh3&) = delete;
  void update(const void* data, size_t n);
  uint64_t digest() const;
  std::string hex() const { return checksum_hex(digest()); }
  static std::string checksum_hex(uint64_t h);

 private:
  void* state_;  // XXH3_state_t
};

// XXH3-64 of a buffer, as hex.
std::string xxh3_hex(std::string_view data);

// XXH3-64 of a whole file, as hex, read sequentially in large chunks; `bytes` receives the number
// of bytes read. A read error (EIO, ...) is a bt::Error naming the file.
std::string xxh3_file(const std::string& path, uint64_t* bytes = nullptr);

}  // namespace bt

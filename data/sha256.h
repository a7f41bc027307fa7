// SHA-256, for shard checksums in manifest.json and for naming SentencePiece models
// ("spm:<sha256 of the model file>"). Plain C++, no dependency; ~300 MB/s, enough for shards.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace bt {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  std::string hex_digest();  // finishes; the object must not be updated afterwards

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

std::string sha256_hex(std::string_view data);
// Hash of a whole file; throws bt::Error naming the file when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace bt

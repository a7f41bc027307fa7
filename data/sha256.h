// SHA-256, for shard checksums in manifest.json and for naming tokenizer files
// ("spm:<sha256 of the model file>", "hf:<sha256 of tokenizer.json>"). Backed by OpenSSL's
// libcrypto, which uses the CPU's SHA extensions where present (~1.5-2 GB/s per core here).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace bt {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, size_t n);
  std::string hex_digest();  // finishes; the object must not be updated afterwards

 private:
  void* ctx_ = nullptr;  // EVP_MD_CTX
};

std::string sha256_hex(std::string_view data);
// Hash of a whole file; throws bt::Error naming the file when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace bt

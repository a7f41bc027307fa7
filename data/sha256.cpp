// SHA-256 through OpenSSL's EVP interface.
#include "data/sha256.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "core/error.h"

namespace bt {

Sha256::Sha256() {
  EVP_MD_CTX* c = EVP_MD_CTX_new();
  BT_CHECK(c && EVP_DigestInit_ex(c, EVP_sha256(), nullptr) == 1, "SHA-256: OpenSSL initialization failed");
  ctx_ = c;
}

Sha256::~Sha256() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }

void Sha256::update(const void* data, size_t n) {
  BT_CHECK(EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data, n) == 1, "SHA-256: update failed");
}

std::string Sha256::hex_digest() {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  BT_CHECK(EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), md, &len) == 1 && len == 32,
           "SHA-256: final failed");
  static const char* hexd = "0123456789abcdef";
  std::string out;
  out.reserve(64);
  for (unsigned i = 0; i < len; ++i) {
    out.push_back(hexd[md[i] >> 4]);
    out.push_back(hexd[md[i] & 15]);
  }
  return out;
}

std::string sha256_hex(std::string_view data) {
  Sha256 h;
  h.update(data.data(), data.size());
  return h.hex_digest();
}

std::string sha256_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  BT_CHECK(fd >= 0, "cannot read '", path, "' to checksum it: ", std::strerror(errno));
  Sha256 h;
  struct stat st;
  // Memory-mapped (no copy out of the page cache); read() for what cannot be mapped.
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
    void* p = ::mmap(nullptr, size_t(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) {
      ::madvise(p, size_t(st.st_size), MADV_SEQUENTIAL);
      h.update(p, size_t(st.st_size));
      ::munmap(p, size_t(st.st_size));
      ::close(fd);
      return h.hex_digest();
    }
  }
  std::vector<char> buf(1 << 20);
  ssize_t got;
  while ((got = ::read(fd, buf.data(), buf.size())) != 0) {
    if (got < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      BT_FAIL("read error while checksumming '", path, "': ", std::strerror(err));
    }
    h.update(buf.data(), size_t(got));
  }
  ::close(fd);
  return h.hex_digest();
}

}  // namespace bt

// XXH3-64 checksums: see checksum.h.
#include "core/checksum.h"

#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "core/error.h"

namespace bt {

Xxh3::Xxh3() : state_(XXH3_createState()) {
  BT_CHECK(state_ && XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_)) == XXH_OK, "XXH3: cannot initialize");
}

Xxh3::~Xxh3() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }

void Xxh3::update(const void* data, size_t n) {
  if (n > 0) XXH3_64bits_update(static_cast<XXH3_state_t*>(state_), data, n);
}

uint64_t Xxh3::digest() const { return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state_)); }

std::string Xxh3::checksum_hex(uint64_t h) {
  static const char* hexd = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, h >>= 4) s[size_t(i)] = hexd[h & 15];
  return s;
}

std::string xxh3_hex(std::string_view data) { return Xxh3::checksum_hex(XXH3_64bits(data.data(), data.size())); }

std::string xxh3_file(const std::string& path, uint64_t* bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  BT_CHECK(fd >= 0, path, ": cannot open to verify its checksum (", std::strerror(errno), ")");
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  Xxh3 h;
  std::vector<char> buf(size_t(8) << 20);
  uint64_t total = 0;
  while (true) {
    const ssize_t got = ::read(fd, buf.data(), buf.size());
    if (got == 0) break;
    if (got < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      BT_FAIL(path, ": read error at byte ", total, " while verifying its checksum (", std::strerror(err),
              "): the storage is failing or the file is damaged");
    }
    h.update(buf.data(), size_t(got));
    total += uint64_t(got);
  }
  ::close(fd);
  if (bytes) *bytes = total;
  return h.hex();
}

}  // namespace bt

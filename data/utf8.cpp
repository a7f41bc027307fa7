// UTF-8 validation and maximal-subpart repair (utf8.h); the ranges are Unicode's Table 3-7.
#include "data/utf8.h"

#include <cstdint>

namespace bt {

namespace {
// Returns the number of bytes of the longest prefix at s[i] that a well-formed sequence could
// start with (>= 1), and sets `full` when it is a complete sequence.
int scan(std::string_view s, size_t i, bool& full) {
  const auto at = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t b = at(i);
  full = false;
  if (b < 0x80) {
    full = true;
    return 1;
  }
  int len;
  uint8_t lo = 0x80, hi = 0xBF;  // range of the second byte
  if (b >= 0xC2 && b <= 0xDF) len = 2;
  else if (b == 0xE0) len = 3, lo = 0xA0;
  else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) len = 3;
  else if (b == 0xED) len = 3, hi = 0x9F;
  else if (b == 0xF0) len = 4, lo = 0x90;
  else if (b >= 0xF1 && b <= 0xF3) len = 4;
  else if (b == 0xF4) len = 4, hi = 0x8F;
  else return 1;  // 80..C1, F5..FF start nothing
  if (i + 1 >= s.size() || at(i + 1) < lo || at(i + 1) > hi) return 1;
  for (int k = 2; k < len; ++k)
    if (i + size_t(k) >= s.size() || at(i + size_t(k)) < 0x80 || at(i + size_t(k)) > 0xBF) return k;
  full = true;
  return len;
}
}  // namespace

int utf8_seq_len(std::string_view s, size_t i) {
  bool full;
  const int n = scan(s, i, full);
  return full ? n : 0;
}

bool utf8_valid(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    // ASCII runs, 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      __builtin_memcpy(&w, s.data() + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    bool full;
    const int k = scan(s, i, full);
    if (!full) return false;
    i += size_t(k);
  }
  return true;
}

std::string utf8_repair(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 8);
  size_t i = 0;
  while (i < s.size()) {
    bool full;
    const int k = scan(s, i, full);
    if (full)
      out.append(s.data() + i, size_t(k));
    else
      out.append("\xEF\xBF\xBD");
    i += size_t(k);
  }
  return out;
}

size_t utf8_first_invalid(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    bool full;
    const int k = scan(s, i, full);
    if (!full) return i;
    i += size_t(k);
  }
  return std::string_view::npos;
}

uint64_t utf8_invalid_bytes(std::string_view s) {
  uint64_t bad = 0;
  for (size_t i = 0; i < s.size();) {
    bool full;
    const int k = scan(s, i, full);
    if (!full) bad += uint64_t(k);
    i += size_t(k);
  }
  return bad;
}

}  // namespace bt

// Checked errors: every failure becomes a bt::Error carrying a one-line message that names
// the thing that failed and, where possible, what the user should do. File and line are kept
// for developers but printed after the message.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace bt {

class Error : public std::runtime_error {
 public:
  Error(const std::string& msg, const char* file, int line)
      : std::runtime_error(msg), file_(file), line_(line) {}
  const char* file() const { return file_; }
  int line() const { return line_; }

 private:
  const char* file_;
  int line_;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <class A, class... R>
void append(std::ostringstream& os, const A& a, const R&... r) {
  os << a;
  append(os, r...);
}
}  // namespace detail

// s with line breaks and other control characters shown escaped (\n, \r, \x01; tabs stay), for
// quoting input or a library's message inside a one-line error.
inline std::string one_line(const std::string& s) {
  static const char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    const unsigned char ch = static_cast<unsigned char>(c);
    if (ch == '\n') {
      out += "\\n";
    } else if (ch == '\r') {
      out += "\\r";
    } else if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
      out += "\\x";
      out += hex[ch >> 4];
      out += hex[ch & 15];
    } else {
      out += c;
    }
  }
  return out;
}

template <class... A>
[[noreturn]] void fail_at(const char* file, int line, const A&... parts) {
  std::ostringstream os;
  detail::append(os, parts...);
  throw Error(os.str(), file, line);
}

}  // namespace bt

// BT_FAIL("shard ", path, ": not an HDF5 file") throws bt::Error.
#define BT_FAIL(...) ::bt::fail_at(__FILE__, __LINE__, __VA_ARGS__)
// BT_CHECK(cond, "message parts"...) throws when cond is false.
#define BT_CHECK(cond, ...)                                                    \
  do {                                                                         \
    if (!(cond)) ::bt::fail_at(__FILE__, __LINE__, __VA_ARGS__);               \
  } while (0)

// Shared by the libFuzzer targets (docs/testing.md): the oracle every target applies and the
// scratch files the readers under test open.
//
// The oracle: bad input may only be rejected with a bt::Error whose message is one non-empty
// line. Any other exception escaping (std::out_of_range, YAML::Exception, std::bad_alloc, ...)
// is a finding and aborts, as do the sanitizers (ASan, UBSan), libFuzzer's timeout (a hang)
// and its malloc/RSS limits (unbounded memory on a small input). Targets add checks of their
// own with fail().
#pragma once
#include <cxxabi.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <string>
#include <string_view>
#include <typeinfo>

#include "core/error.h"

namespace bt::fuzz {

// A finding: prints it and aborts, so libFuzzer saves the input as a crash.
[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "\n==FUZZ FINDING== %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

inline std::string demangled(const std::type_info& t) {
  int status = 0;
  char* s = abi::__cxa_demangle(t.name(), nullptr, nullptr, &status);
  std::string out = status == 0 && s ? s : t.name();
  std::free(s);
  return out;
}

// Runs f(). A bt::Error is the expected rejection (checked to be one non-empty line); returns
// whether f completed without one. Any other exception is a finding.
template <class F>
bool accepts(F&& f) {
  try {
    f();
    return true;
  } catch (const bt::Error& e) {
    const std::string_view m = e.what();
    if (m.empty()) fail("bt::Error with an empty message");
    if (m.find('\n') != std::string_view::npos) fail("bt::Error message of several lines: " + std::string(m));
    return false;
  } catch (const std::exception& e) {
    fail("escaped " + demangled(typeid(e)) + " (not a bt::Error): " + e.what());
  } catch (...) {
    fail("escaped an exception that is not a std::exception");
  }
}

// A scratch directory of this process ($TMPDIR or /tmp, bt-fuzz-XXXXXX), removed at a normal
// exit; launch/fuzz.sh points TMPDIR at a folder it cleans, for the runs that stop at a finding.
// (Files, not memfds: HDF5 cannot open /proc/self/fd/N, it fails to resolve its real path.)
inline char g_scratch[4096];  // a plain array: still valid in the atexit handler
inline const char* scratch_dir() {
  static const bool made = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::snprintf(g_scratch, sizeof g_scratch, "%s/bt-fuzz-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!::mkdtemp(g_scratch)) fail(std::string("mkdtemp failed in ") + g_scratch);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(g_scratch, ec);
    });
    return true;
  }();
  (void)made;
  return g_scratch;
}

// Writes data to `name` in the scratch directory (replacing it); returns its path.
inline std::string scratch_file(const char* name, const uint8_t* data, size_t size) {
  const std::string path = std::string(scratch_dir()) + "/" + name;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) fail("cannot create " + path);
  for (size_t at = 0; at < size;) {
    const ssize_t w = ::write(fd, data + at, size - at);
    if (w <= 0) fail("cannot write " + path);
    at += static_cast<size_t>(w);
  }
  ::close(fd);
  return path;
}

}  // namespace bt::fuzz

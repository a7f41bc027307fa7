// Helpers shared by the C++ tests: a scratch directory removed with its owner, the check that an
// expected bt::Error is one line (the project's rule for user-facing errors), the bt binary under
// test, and random flat parameters.
#pragma once
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "model/params.h"

namespace bt::test {

// A fresh directory under $TMPDIR (bt_<tag>_XXXXXX), removed with everything in it.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "test") {
    std::string tmpl = (std::filesystem::temp_directory_path() / ("bt_" + tag + "_XXXXXX")).string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("cannot create a temporary directory " + tmpl);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return (std::filesystem::path(path_) / name).string(); }
  const std::string& str() const { return path_; }

 private:
  std::string path_;
};

// The message of the bt::Error that f throws, checked to be one line; a test failure when it
// throws none.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << "not one line: " << m;
    return m;
  }
  ADD_FAILURE() << "expected an error";
  return "";
}

// The environment variable k, or d when it is not set.
inline std::string env_or(const char* k, const std::string& d) {
  const char* s = std::getenv(k);
  return s ? s : d;
}

// BT_BINARY (set by ctest), else the `bt` next to the tests folder of this build; "" when neither.
inline std::string bt_binary() {
  if (const char* b = std::getenv("BT_BINARY")) return b;
  std::error_code ec;
  const std::filesystem::path p =
      std::filesystem::canonical("/proc/self/exe", ec).parent_path().parent_path() / "bt";
  return std::filesystem::exists(p, ec) ? p.string() : "";
}

// Flat parameters [t.total()] drawn from N(0, 1), tensor by tensor in table order.
inline std::vector<float> random_flat(const ParamTable& t, uint64_t seed) {
  std::vector<float> w(t.total(), 0.f);
  Rng r(seed);
  for (const auto& p : t.entries())
    for (size_t i = 0; i < p.numel; ++i) w[p.offset + i] = static_cast<float>(r.normal());
  return w;
}

}  // namespace bt::test

#define EXPECT_HAS(msg, needle) EXPECT_NE(std::string(msg).find(needle), std::string::npos) << (msg)

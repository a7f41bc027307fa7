// TensorBoard event files: CRC-32C check values, and files re-read by a small TFRecord /
// protobuf parser written here (framing CRCs verified, Events decoded field by field).
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "train/tensorboard.h"

namespace fs = std::filesystem;

namespace {

struct TmpDir {
  fs::path p;
  explicit TmpDir(const std::string& tag) {
    p = fs::temp_directory_path() / ("bt_tb_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(p);
  }
  ~TmpDir() {
    std::error_code ec;
    fs::remove_all(p, ec);
  }
};

struct Event {
  std::optional<double> wall_time;
  std::optional<int64_t> step;
  std::optional<std::string> file_version;
  std::vector<std::pair<std::string, float>> values;  // (tag, simple_value)
};

uint64_t le(const std::string& s, size_t off, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t(static_cast<unsigned char>(s[off + i])) << (8 * i);
  return v;
}

// Protobuf reader: calls f(field, wire_type, varint_or_fixed, bytes) for each field of msg.
struct Reader {
  const std::string& s;
  size_t pos = 0;
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
      if (pos >= s.size() || shift > 63) throw std::runtime_error("bad varint");
      const auto b = static_cast<unsigned char>(s[pos++]);
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
  }
  template <class F>
  void each(F&& f) {
    while (pos < s.size()) {
      const uint64_t key = varint();
      const int field = int(key >> 3), wt = int(key & 7);
      if (wt == 0) {
        f(field, wt, varint(), std::string());
      } else if (wt == 1 || wt == 5) {
        const int n = wt == 1 ? 8 : 4;
        if (pos + n > s.size()) throw std::runtime_error("truncated fixed field");
        f(field, wt, le(s, pos, n), std::string());
        pos += n;
      } else if (wt == 2) {
        const uint64_t n = varint();
        if (pos + n > s.size()) throw std::runtime_error("truncated bytes field");
        f(field, wt, 0, s.substr(pos, n));
        pos += n;
      } else {
        throw std::runtime_error("unexpected wire type " + std::to_string(wt));
      }
    }
  }
};

Event decode_event(const std::string& data) {
  Event ev;
  Reader{data}.each([&](int field, int wt, uint64_t v, const std::string& b) {
    if (field == 1) {
      EXPECT_EQ(wt, 1);
      double d;
      std::memcpy(&d, &v, 8);
      ev.wall_time = d;
    } else if (field == 2) {
      EXPECT_EQ(wt, 0);
      ev.step = static_cast<int64_t>(v);
    } else if (field == 3) {
      EXPECT_EQ(wt, 2);
      ev.file_version = b;
    } else if (field == 5) {
      EXPECT_EQ(wt, 2);
      Reader{b}.each([&](int sf, int swt, uint64_t, const std::string& vb) {
        EXPECT_EQ(sf, 1);
        EXPECT_EQ(swt, 2);
        std::string tag;
        std::optional<float> val;
        Reader{vb}.each([&](int vf, int vwt, uint64_t vv, const std::string& vbytes) {
          if (vf == 1 && vwt == 2) {
            tag = vbytes;
          } else if (vf == 2 && vwt == 5) {
            const auto u = static_cast<uint32_t>(vv);
            float f;
            std::memcpy(&f, &u, 4);
            val = f;
          } else {
            ADD_FAILURE() << "unexpected Summary.Value field " << vf;
          }
        });
        EXPECT_TRUE(val.has_value()) << "no simple_value for tag " << tag;
        ev.values.emplace_back(tag, val.value_or(NAN));
      });
    } else {
      ADD_FAILURE() << "unexpected Event field " << field;
    }
  });
  return ev;
}

// Reads every TFRecord of path, checking both masked CRCs and that nothing trails the last one.
std::vector<Event> read_events(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  const std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<Event> out;
  size_t pos = 0;
  while (pos < s.size()) {
    if (pos + 12 > s.size()) {
      ADD_FAILURE() << "truncated record header at " << pos;
      break;
    }
    const uint64_t n = le(s, pos, 8);
    EXPECT_EQ(le(s, pos + 8, 4), bt::masked_crc32c(s.data() + pos, 8)) << "length CRC at " << pos;
    if (pos + 12 + n + 4 > s.size()) {
      ADD_FAILURE() << "truncated record at " << pos;
      break;
    }
    const std::string data = s.substr(pos + 12, n);
    EXPECT_EQ(le(s, pos + 12 + n, 4), bt::masked_crc32c(data.data(), data.size())) << "data CRC at " << pos;
    out.push_back(decode_event(data));
    pos += 12 + n + 4;
  }
  return out;
}

std::vector<fs::path> event_files(const fs::path& dir) {
  std::vector<fs::path> v;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0) v.push_back(e.path());
  return v;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

TEST(TensorBoard, Crc32cCheckValues) {
  EXPECT_EQ(bt::crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(bt::crc32c("", 0), 0u);
  const std::string zeros(32, '\0'), ones(32, '\xFF');  // RFC 3720 B.4
  EXPECT_EQ(bt::crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(bt::crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  const uint32_t c = 0xE3069283u;
  EXPECT_EQ(bt::masked_crc32c("123456789", 9), ((c >> 15) | (c << 17)) + 0xa282ead8u);
}

TEST(TensorBoard, WritesScalarsThatReadBack) {
  TmpDir tmp("scalars");
  const fs::path dir = tmp.p / "run" / "tensorboard";  // parents are created
  const double t0 = now_s();
  bt::TensorBoardWriter w(dir.string());
  ASSERT_EQ(w.path().rfind(dir.string(), 0), 0u);
  const std::string name = fs::path(w.path()).filename().string();
  EXPECT_EQ(name.rfind("events.out.tfevents.", 0), 0u) << name;
  std::string pid_suffix = ".";
  pid_suffix += std::to_string(::getpid());
  pid_suffix += ".0";
  EXPECT_EQ(name.substr(name.size() - pid_suffix.size()), pid_suffix) << name;

  const std::string long_tag = "train/" + std::string(200, 'x');  // length needs a 2-byte varint
  w.add_scalar("train/loss", 5.5, 1, 1700000000.25);
  w.add_scalar("train/lr", 1.0e-3, 2, 1700000001.5);
  w.add_scalar(long_tag, -0.125, int64_t(1) << 40, 1700000002.0);
  w.add_scalar("val/loss", 3.0, -7);  // wall_time: now
  w.add_scalar("nan", std::nan(""), 0, 1.0);

  // Read while the writer is alive: every add_scalar is flushed.
  const auto evs = read_events(w.path());
  ASSERT_EQ(evs.size(), 6u);
  EXPECT_EQ(evs[0].file_version.value_or(""), "brain.Event:2");
  EXPECT_TRUE(evs[0].values.empty());
  EXPECT_GE(evs[0].wall_time.value_or(0), t0 - 1);

  struct Want {
    std::string tag;
    float value;
    int64_t step;
    double wall;
  };
  const std::vector<Want> want = {{"train/loss", 5.5f, 1, 1700000000.25},
                                  {"train/lr", 1.0e-3f, 2, 1700000001.5},
                                  {long_tag, -0.125f, int64_t(1) << 40, 1700000002.0},
                                  {"val/loss", 3.0f, -7, -1}};
  for (size_t i = 0; i < want.size(); ++i) {
    const Event& e = evs[i + 1];
    ASSERT_EQ(e.values.size(), 1u) << i;
    EXPECT_EQ(e.values[0].first, want[i].tag);
    EXPECT_EQ(e.values[0].second, want[i].value);
    EXPECT_EQ(e.step.value_or(-999), want[i].step);
    EXPECT_FALSE(e.file_version.has_value());
    if (want[i].wall >= 0) {
      EXPECT_EQ(e.wall_time.value_or(0), want[i].wall);
    } else {
      EXPECT_NEAR(e.wall_time.value_or(0), now_s(), 60.0);
    }
  }
  ASSERT_EQ(evs[5].values.size(), 1u);
  EXPECT_TRUE(std::isnan(evs[5].values[0].second));
  EXPECT_EQ(evs[5].step.value_or(-1), 0);
}

TEST(TensorBoard, TwoWritersGetTwoFiles) {
  TmpDir tmp("two");
  {
    bt::TensorBoardWriter a(tmp.p.string()), b(tmp.p.string());
    EXPECT_NE(a.path(), b.path());
    a.add_scalar("a", 1, 1);
    b.add_scalar("b", 2, 1);
  }
  const auto files = event_files(tmp.p);
  ASSERT_EQ(files.size(), 2u);
  for (const auto& f : files) {
    const auto evs = read_events(f.string());
    ASSERT_EQ(evs.size(), 2u);
    EXPECT_EQ(evs[0].file_version.value_or(""), "brain.Event:2");
  }
}

TEST(TensorBoard, UnwritableDirectoryNamesThePath) {
  TmpDir tmp("bad");
  fs::create_directories(tmp.p);
  const fs::path file = tmp.p / "plain_file";
  std::ofstream(file) << "x";
  const std::string dir = (file / "tensorboard").string();  // a directory under a regular file
  try {
    bt::TensorBoardWriter w(dir);
    FAIL() << "expected bt::Error";
  } catch (const bt::Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir), std::string::npos) << e.what();
  }
}

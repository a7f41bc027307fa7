// TensorBoard event-file writer: TFRecord framing around hand-encoded tensorflow.Event protobufs.
#include "train/tensorboard.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "core/error.h"

namespace bt {
namespace {

constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

// Protobuf wire format: varints, little-endian fixed32 / fixed64, keys (field << 3 | wire type).
void put_varint(std::string& s, uint64_t v) {
  while (v >= 0x80) {
    s.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  s.push_back(static_cast<char>(v));
}
void put_fixed32(std::string& s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void put_fixed64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void put_key(std::string& s, int field, int wire_type) { put_varint(s, uint64_t(field) << 3 | uint64_t(wire_type)); }
void put_bytes(std::string& s, int field, const std::string& b) {
  put_key(s, field, 2);
  put_varint(s, b.size());
  s += b;
}
void put_double(std::string& s, int field, double d) {
  uint64_t u;
  std::memcpy(&u, &d, 8);
  put_key(s, field, 1);
  put_fixed64(s, u);
}
void put_float(std::string& s, int field, float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  put_key(s, field, 5);
  put_fixed32(s, u);
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0 || buf[0] == '\0') return "localhost";
  return buf;
}

}  // namespace

uint32_t crc32c(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = kCrc32cTable[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, size_t n) {
  const uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

TensorBoardWriter::TensorBoardWriter(const std::string& log_dir) {
  std::error_code ec;
  std::filesystem::create_directories(log_dir, ec);
  BT_CHECK(!ec, "cannot create TensorBoard log directory '", log_dir, "': ", ec.message());
  const std::string base = (std::filesystem::path(log_dir) /
                            ("events.out.tfevents." + std::to_string(static_cast<long long>(now_seconds())) + "." +
                             hostname() + "." + std::to_string(static_cast<long long>(getpid())) + "."))
                               .string();
  // Exclusive create: two writers started in the same second by one process get two files.
  for (int n = 0; !f_; ++n) {
    path_ = base + std::to_string(n);
    const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 && errno == EEXIST && n < 1000) continue;
    if (fd < 0) BT_FAIL("cannot create TensorBoard event file '", path_, "': ", std::strerror(errno));
    f_ = ::fdopen(fd, "wb");
    if (!f_) {
      const int e = errno;
      ::close(fd);
      BT_FAIL("cannot open TensorBoard event file '", path_, "': ", std::strerror(e));
    }
  }
  std::string ev;
  put_double(ev, 1, now_seconds());
  put_bytes(ev, 3, "brain.Event:2");
  write_record(ev);
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  if (f_) std::fclose(f_);
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, int64_t step, double wall_time) {
  std::string val;
  put_bytes(val, 1, tag);
  put_float(val, 2, static_cast<float>(value));
  std::string summary;
  put_bytes(summary, 1, val);
  std::string ev;
  put_double(ev, 1, wall_time < 0 ? now_seconds() : wall_time);
  put_key(ev, 2, 0);
  put_varint(ev, static_cast<uint64_t>(step));  // int64: negative steps take 10 bytes, as in protobuf
  put_bytes(ev, 5, summary);
  write_record(ev);
  flush();
}

void TensorBoardWriter::flush() {
  if (std::fflush(f_) != 0) BT_FAIL("cannot write TensorBoard event file '", path_, "': ", std::strerror(errno));
}

void TensorBoardWriter::write_record(const std::string& data) {
  std::string rec;
  rec.reserve(data.size() + 16);
  put_fixed64(rec, data.size());
  put_fixed32(rec, masked_crc32c(rec.data(), 8));
  rec += data;
  put_fixed32(rec, masked_crc32c(data.data(), data.size()));
  if (std::fwrite(rec.data(), 1, rec.size(), f_) != rec.size())
    BT_FAIL("cannot write TensorBoard event file '", path_, "': ", std::strerror(errno));
}

}  // namespace bt

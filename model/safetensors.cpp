// safetensors reader and fp32 writer: see safetensors.h.
#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/checksum.h"
#include "core/dtype.h"
#include "core/error.h"

namespace bt {

namespace {

size_t st_dtype_size(const std::string& t) {
  if (t == "F32" || t == "I32" || t == "U32") return 4;
  if (t == "F64" || t == "I64" || t == "U64") return 8;
  if (t == "F16" || t == "BF16" || t == "I16" || t == "U16") return 2;
  if (t == "I8" || t == "U8" || t == "BOOL" || t == "F8_E4M3" || t == "F8_E5M2") return 1;
  return 0;
}

float half_to_float(uint16_t h) {
  const uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  float f;
  if (exp == 0) {
    f = std::ldexp(static_cast<float>(mant), -24);  // subnormal (or zero)
  } else if (exp == 31) {
    f = mant ? NAN : INFINITY;
  } else {
    f = std::ldexp(static_cast<float>(mant | 0x400), static_cast<int>(exp) - 25);
  }
  return sign ? -f : f;
}

// Reads exactly n bytes at offset, or fails naming what was being read.
void pread_all(int fd, void* dst, size_t n, uint64_t offset, const std::string& path, const std::string& what) {
  char* p = static_cast<char*>(dst);
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, n, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    BT_CHECK(r > 0, path, ": cannot read ", what, " (", r < 0 ? std::strerror(errno) : "unexpected end of file",
             "): the file is truncated or unreadable");
    p += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
}

void write_all(int fd, const void* src, size_t n, const std::string& path, Xxh3* sum) {
  if (sum) sum->update(src, n);
  const char* p = static_cast<const char*>(src);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    BT_CHECK(w > 0, path, ": write failed (", std::strerror(errno), "); is the disk full?");
    p += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

size_t SafetensorInfo::numel() const {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  BT_CHECK(fd_ >= 0, path, ": cannot open (", std::strerror(errno), ")");
  try {
    struct stat st {};
    BT_CHECK(::fstat(fd_, &st) == 0, path, ": cannot stat (", std::strerror(errno), ")");
    BT_CHECK(!S_ISDIR(st.st_mode), path, " is a directory, not a safetensors file (for a checkpoint directory give "
             "its model.safetensors, or use the option that takes a checkpoint)");
    BT_CHECK(S_ISREG(st.st_mode), path, ": not a regular file");
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    BT_CHECK(size >= 8, path, ": not a safetensors file (", size, " bytes, shorter than the 8-byte header length)");
    unsigned char len_bytes[8];
    pread_all(fd_, len_bytes, 8, 0, path, "the header length");
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | len_bytes[i];
    BT_CHECK(hlen >= 2 && hlen <= (uint64_t(100) << 20) && hlen <= size - 8, path,
             ": not a safetensors file or truncated (header length ", hlen, " but the file has ", size, " bytes)");
    std::string header(hlen, '\0');
    pread_all(fd_, header.data(), hlen, 8, path, "the JSON header");
    data_start_ = 8 + hlen;
    const uint64_t data_size = size - data_start_;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(header);
    } catch (const std::exception& e) {
      BT_FAIL(path, ": the safetensors header is not valid JSON (", e.what(), ")");
    }
    BT_CHECK(j.is_object(), path, ": the safetensors header is not a JSON object");
    // File order: sort by begin offset so that tensors() lists them as laid out.
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& name = it.key();
      const nlohmann::json& v = it.value();
      if (name == "__metadata__") {
        BT_CHECK(v.is_object(), path, ": __metadata__ is not an object");
        for (auto m = v.begin(); m != v.end(); ++m)
          if (m.value().is_string()) metadata_[m.key()] = m.value().get<std::string>();
        continue;
      }
      BT_CHECK(v.is_object() && v.contains("dtype") && v["dtype"].is_string() && v.contains("shape") &&
                   v["shape"].is_array() && v.contains("data_offsets") && v["data_offsets"].is_array() &&
                   v["data_offsets"].size() == 2,
               path, ": tensor '", name, "' has a malformed header entry (needs dtype, shape, data_offsets)");
      SafetensorInfo t;
      t.name = name;
      t.dtype = v["dtype"].get<std::string>();
      const size_t esize = st_dtype_size(t.dtype);
      BT_CHECK(esize > 0, path, ": tensor '", name, "' has unknown dtype ", t.dtype);
      for (const auto& d : v["shape"]) {
        BT_CHECK(d.is_number_integer() && d.get<int64_t>() >= 0, path, ": tensor '", name, "' has a bad shape ",
                 v["shape"].dump());
        t.shape.push_back(d.get<int64_t>());
      }
      BT_CHECK(v["data_offsets"][0].is_number_unsigned() && v["data_offsets"][1].is_number_unsigned(), path,
               ": tensor '", name, "' has bad data_offsets ", v["data_offsets"].dump());
      t.begin = v["data_offsets"][0].get<uint64_t>();
      t.end = v["data_offsets"][1].get<uint64_t>();
      BT_CHECK(t.begin <= t.end && t.end <= data_size, path, ": tensor '", name, "' lies at bytes [", t.begin, ", ",
               t.end, ") but the data section has only ", data_size, " bytes: the file is truncated");
      // The byte count of the shape, without wrapping around: [2^32, 2^32] must not pass as 0 bytes.
      uint64_t bytes = esize;
      bool too_big = false;
      for (int64_t d : t.shape) too_big |= __builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes);
      if (std::count(t.shape.begin(), t.shape.end(), 0) > 0) bytes = 0, too_big = false;  // no data at all
      BT_CHECK(!too_big, path, ": tensor '", name, "' of shape ", shape_str(t.shape), " and dtype ", t.dtype,
               " would need more than 2^64 bytes");
      BT_CHECK(t.end - t.begin == bytes, path, ": tensor '", name, "' of shape ", shape_str(t.shape), " and dtype ",
               t.dtype, " needs ", bytes, " bytes but its data_offsets span ", t.end - t.begin);
      tensors_.push_back(std::move(t));
    }
    std::sort(tensors_.begin(), tensors_.end(),
              [](const SafetensorInfo& a, const SafetensorInfo& b) {
                return a.begin < b.begin || (a.begin == b.begin && a.end < b.end);
              });
    // The data section must be tiled exactly, as the safetensors format requires (and its Python
    // and Rust readers check): no overlapping tensors (two names reading the same bytes), no
    // holes, nothing after the last tensor.
    uint64_t at = 0;
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const SafetensorInfo& t = tensors_[i];
      BT_CHECK(t.begin >= at, path, ": tensor '", t.name, "' at bytes [", t.begin, ", ", t.end,
               ") overlaps tensor '", tensors_[i - 1].name, "' at [", tensors_[i - 1].begin, ", ",
               tensors_[i - 1].end, "): invalid data_offsets (a corrupt or hand-made file)");
      BT_CHECK(t.begin == at, path, ": ", t.begin - at, " bytes before tensor '", t.name,
               "' belong to no tensor: invalid data_offsets (a corrupt or hand-made file)");
      at = t.end;
    }
    BT_CHECK(at == data_size, path, ": the data section has ", data_size, " bytes but the tensors cover ", at,
             ": invalid data_offsets or trailing garbage (a corrupt file)");
    for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
  } catch (...) {
    ::close(fd_);
    fd_ = -1;
    throw;
  }
}

SafetensorsReader::~SafetensorsReader() {
  if (fd_ >= 0) ::close(fd_);
}

bool SafetensorsReader::contains(const std::string& name) const { return index_.count(name) != 0; }

const SafetensorInfo& SafetensorsReader::info(const std::string& name) const {
  auto it = index_.find(name);
  BT_CHECK(it != index_.end(), path_, ": no tensor named '", name, "'");
  return tensors_[it->second];
}

void SafetensorsReader::read_f32(const std::string& name, float* dst) const {
  const SafetensorInfo& t = info(name);
  const size_t n = t.numel();
  const uint64_t off = data_start_ + t.begin;
  const std::string what = "tensor '" + name + "'";
  if (t.dtype == "F32") {
    pread_all(fd_, dst, n * 4, off, path_, what);
    return;
  }
  std::vector<char> buf(t.end - t.begin);
  pread_all(fd_, buf.data(), buf.size(), off, path_, what);
  if (t.dtype == "BF16") {
    for (size_t i = 0; i < n; ++i) {
      uint16_t b;
      std::memcpy(&b, buf.data() + 2 * i, 2);
      dst[i] = bf16_to_float(b);
    }
  } else if (t.dtype == "F16") {
    for (size_t i = 0; i < n; ++i) {
      uint16_t b;
      std::memcpy(&b, buf.data() + 2 * i, 2);
      dst[i] = half_to_float(b);
    }
  } else if (t.dtype == "F64") {
    for (size_t i = 0; i < n; ++i) {
      double d;
      std::memcpy(&d, buf.data() + 8 * i, 8);
      dst[i] = static_cast<float>(d);
    }
  } else {
    BT_FAIL(path_, ": tensor '", name, "' has dtype ", t.dtype, "; only F32, F64, F16 and BF16 weights can be loaded");
  }
}

std::vector<float> SafetensorsReader::read_f32(const std::string& name) const {
  std::vector<float> v(info(name).numel());
  read_f32(name, v.data());
  return v;
}

void write_safetensors(const std::string& path, const std::vector<SafetensorOut>& tensors,
                       const std::map<std::string, std::string>& metadata, std::string* checksum) {
  nlohmann::json h = nlohmann::json::object();
  if (!metadata.empty()) {
    nlohmann::json m = nlohmann::json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    h["__metadata__"] = m;
  }
  uint64_t off = 0;
  for (const auto& t : tensors) {
    BT_CHECK(!h.contains(t.name), path, ": tensor '", t.name, "' given twice");
    size_t n = 1;
    for (int64_t d : t.shape) n *= static_cast<size_t>(d);
    const size_t es = t.data_f64 ? 8 : 4;
    h[t.name] = {{"dtype", t.data_f64 ? "F64" : "F32"}, {"shape", t.shape}, {"data_offsets", {off, off + n * es}}};
    off += n * es;
  }
  std::string header = h.dump();
  while ((8 + header.size()) % 8 != 0) header.push_back(' ');
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  BT_CHECK(fd >= 0, path, ": cannot create (", std::strerror(errno), ")");
  Xxh3 sum;
  try {
    unsigned char len_bytes[8];
    uint64_t hl = header.size();
    for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>((hl >> (8 * i)) & 0xff);
    write_all(fd, len_bytes, 8, path, &sum);
    write_all(fd, header.data(), header.size(), path, &sum);
    for (const auto& t : tensors) {
      size_t n = 1;
      for (int64_t d : t.shape) n *= static_cast<size_t>(d);
      // little-endian hosts only (x86-64, aarch64)
      if (t.data_f64)
        write_all(fd, t.data_f64, n * 8, path, &sum);
      else
        write_all(fd, t.data, n * 4, path, &sum);
    }
    BT_CHECK(::fsync(fd) == 0, path, ": fsync failed (", std::strerror(errno), ")");
  } catch (...) {
    ::close(fd);
    throw;
  }
  BT_CHECK(::close(fd) == 0, path, ": close failed (", std::strerror(errno), ")");
  if (checksum) *checksum = sum.hex();
}

}  // namespace bt

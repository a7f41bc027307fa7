// Opening and validating Megatron, nanoGPT, numpy and llm.c token files (layouts in token_files.h).
#include "data/token_files.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <filesystem>

#include "core/error.h"

namespace bt {
namespace fs = std::filesystem;

namespace {
constexpr char kMegatronMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr uint64_t kMegatronHeader = 9 + 8 + 1 + 8 + 8;  // magic, version, dtype, S, D
constexpr int32_t kLlmcMagicGpt2 = 20240520, kLlmcMagicLlama3 = 20240801;
constexpr uint64_t kLlmcHeader = 256 * 4;

bool ends_with(const std::string& s, const std::string& t) {
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}
bool is_file(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
std::string megatron_prefix(const std::string& path) {
  if (ends_with(path, ".idx") || ends_with(path, ".bin")) return path.substr(0, path.size() - 4);
  return path;
}
}  // namespace

const char* token_format_name(TokenFileFormat f) {
  switch (f) {
    case TokenFileFormat::Megatron: return "megatron";
    case TokenFileFormat::NanoGpt: return "nanogpt";
    case TokenFileFormat::Npy: return "npy";
    case TokenFileFormat::Llmc: return "llmc";
  }
  return "?";
}

std::optional<TokenFileFormat> parse_token_format(const std::string& s) {
  if (s == "megatron") return TokenFileFormat::Megatron;
  if (s == "nanogpt") return TokenFileFormat::NanoGpt;
  if (s == "npy") return TokenFileFormat::Npy;
  if (s == "llmc") return TokenFileFormat::Llmc;
  return std::nullopt;
}

std::optional<TokenFileFormat> detect_token_format(const std::string& path) {
  if (ends_with(path, ".npy")) return TokenFileFormat::Npy;
  if (ends_with(path, ".idx")) return TokenFileFormat::Megatron;
  const std::string prefix = megatron_prefix(path);
  if (ends_with(path, ".bin")) {
    if (is_file(prefix + ".idx")) return TokenFileFormat::Megatron;
    int32_t magic = 0;
    if (FILE* f = std::fopen(path.c_str(), "rb")) {
      if (std::fread(&magic, 4, 1, f) != 1) magic = 0;
      std::fclose(f);
    }
    return magic == kLlmcMagicGpt2 || magic == kLlmcMagicLlama3 ? TokenFileFormat::Llmc : TokenFileFormat::NanoGpt;
  }
  if (!is_file(path) && is_file(path + ".idx") && is_file(path + ".bin")) return TokenFileFormat::Megatron;
  return std::nullopt;
}

int dtype_bytes(TokenDType t) {
  switch (t) {
    case TokenDType::U8: case TokenDType::I8: return 1;
    case TokenDType::U16: case TokenDType::I16: return 2;
    case TokenDType::I32: case TokenDType::U32: return 4;
    case TokenDType::I64: case TokenDType::U64: return 8;
  }
  return 0;
}

const char* dtype_name(TokenDType t) {
  switch (t) {
    case TokenDType::U8: return "uint8";
    case TokenDType::I8: return "int8";
    case TokenDType::U16: return "uint16";
    case TokenDType::I16: return "int16";
    case TokenDType::I32: return "int32";
    case TokenDType::U32: return "uint32";
    case TokenDType::I64: return "int64";
    case TokenDType::U64: return "uint64";
  }
  return "?";
}

// ---- MappedFile --------------------------------------------------------------------------------

MappedFile::MappedFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  BT_CHECK(fd >= 0, "'", path, "': cannot open (", std::strerror(errno), ")");
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    BT_FAIL("'", path, "': not a regular file");
  }
  size_ = uint64_t(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    const int err = errno;
    if (p == MAP_FAILED) {
      ::close(fd);
      BT_FAIL("'", path, "': cannot memory-map ", size_, " bytes (", std::strerror(err), ")");
    }
    ::madvise(p, size_, MADV_SEQUENTIAL);
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

std::string TokenFile::what() const {
  switch (format) {
    case TokenFileFormat::Megatron: return "megatron index '" + idx_path + "'";
    case TokenFileFormat::NanoGpt: return "nanogpt file '" + path + "'";
    case TokenFileFormat::Npy: return "npy file '" + path + "'";
    case TokenFileFormat::Llmc: return "llm.c shard '" + path + "'";
  }
  return path;
}

// ---- the formats -------------------------------------------------------------------------------

namespace {

void open_megatron(TokenFile& t, const std::string& given) {
  const std::string prefix = megatron_prefix(given);
  t.idx_path = prefix + ".idx";
  t.path = prefix + ".bin";
  BT_CHECK(is_file(t.idx_path), "megatron dataset '", prefix, "': no index '", t.idx_path,
           "' (give the path prefix of a .idx/.bin pair, e.g. data/pile_0.87_deduped_text_document)");
  BT_CHECK(is_file(t.path), "megatron dataset '", prefix, "': no token file '", t.path, "' next to its index");
  t.idx = std::make_shared<MappedFile>(t.idx_path);
  t.bin = std::make_shared<MappedFile>(t.path);
  const std::string what = "megatron index '" + t.idx_path + "'";
  const uint8_t* p = t.idx->data();
  const uint64_t n = t.idx->size();
  BT_CHECK(n > 0, what, ": empty file (an incomplete download or copy?)");
  BT_CHECK(std::memcmp(p, kMegatronMagic, std::min<uint64_t>(n, 9)) == 0, what,
           ": wrong magic (expected \"MMIDIDX\\0\\0\"; not a Megatron/GPT-NeoX index, or the old "
           "non-mmap 'TNTIDX' format)");
  BT_CHECK(n >= kMegatronHeader, what, ": truncated: ", n, " bytes, the header alone needs ", kMegatronHeader);
  const uint64_t version = load_le<uint64_t>(p + 9);
  BT_CHECK(version == 1, what, ": index version ", version, " is not supported (expected 1)");
  const uint8_t code = p[17];
  switch (code) {
    case 1: t.dtype = TokenDType::U8; break;
    case 2: t.dtype = TokenDType::I8; break;
    case 3: t.dtype = TokenDType::I16; break;
    case 4: t.dtype = TokenDType::I32; break;
    case 5: t.dtype = TokenDType::I64; break;
    case 8: t.dtype = TokenDType::U16; break;
    case 6: case 7:
      BT_FAIL(what, ": dtype code ", int(code), " is a floating-point type, not token ids");
    default:
      BT_FAIL(what, ": unknown dtype code ", int(code), " (expected 1-5 or 8)");
  }
  t.sequences = load_le<uint64_t>(p + 18);
  t.doc_index_len = load_le<uint64_t>(p + 26);
  const uint64_t S = t.sequences, D = t.doc_index_len;
  BT_CHECK(S < (uint64_t(1) << 40) && D < (uint64_t(1) << 40), what, ": implausible counts (", S,
           " sequences, ", D, " document-index entries); damaged header");
  const uint64_t need = kMegatronHeader + 4 * S + 8 * S + 8 * D;
  BT_CHECK(n >= need, what, ": truncated: ", n, " bytes, but ", S, " sequences and ", D,
           " document-index entries need ", need, " (an incomplete download or copy?)");
  BT_CHECK(n == need || n == need + S, what, ": ", n - need, " unexpected bytes after the index of ", S,
           " sequences (expected none, or ", S, " sequence modes)");
  t.sizes = p + kMegatronHeader;
  t.pointers = t.sizes + 4 * S;
  t.doc_index = t.pointers + 8 * S;
  t.data = t.bin->data();

  // Every sequence inside the .bin, aligned; the document index from 0 to S, non-decreasing.
  const uint64_t item = uint64_t(dtype_bytes(t.dtype)), bin_bytes = t.bin->size();
  uint64_t total = 0, max_end = 0, max_seq = 0;
  for (uint64_t i = 0; i < S; ++i) {
    const int32_t len = load_le<int32_t>(t.sizes + 4 * i);
    const int64_t ptr = load_le<int64_t>(t.pointers + 8 * i);
    BT_CHECK(len >= 0 && ptr >= 0 && uint64_t(ptr) % item == 0, what, ": sequence ", i,
             " has size ", len, " and byte pointer ", ptr, " (negative or not a multiple of ", item,
             "); damaged index");
    const uint64_t end = uint64_t(ptr) + uint64_t(len) * item;
    if (end > max_end) {
      max_end = end;
      max_seq = i;
    }
    total += uint64_t(len);
  }
  BT_CHECK(max_end <= bin_bytes, "megatron token file '", t.path, "' is shorter than its index says: ",
           bin_bytes, " bytes, but sequence ", max_seq, " ends at byte ", max_end,
           " (truncated download or copy, or the .idx belongs to another .bin)");
  t.tokens = total;
  if (D > 0) {
    BT_CHECK(load_le<int64_t>(t.doc_index) == 0, what, ": the document index does not start at 0");
    int64_t prev = 0;
    for (uint64_t i = 1; i < D; ++i) {
      const int64_t v = load_le<int64_t>(t.doc_index + 8 * i);
      BT_CHECK(v >= prev && uint64_t(v) <= S, what, ": document index entry ", i, " = ", v,
               " is decreasing or past the ", S, " sequences; damaged index");
      prev = v;
    }
    BT_CHECK(uint64_t(prev) == S, what, ": the document index ends at sequence ", prev, ", not at ", S);
  }
}

void open_nanogpt(TokenFile& t) {
  t.bin = std::make_shared<MappedFile>(t.path);
  BT_CHECK(t.bin->size() % 2 == 0, "nanogpt file '", t.path, "': ", t.bin->size(),
           " bytes is not a whole number of uint16 tokens (truncated, or not a nanoGPT .bin)");
  t.dtype = TokenDType::U16;
  t.data = t.bin->data();
  t.tokens = t.bin->size() / 2;
}

void open_llmc(TokenFile& t) {
  t.bin = std::make_shared<MappedFile>(t.path);
  const std::string what = "llm.c shard '" + t.path + "'";
  const uint64_t n = t.bin->size();
  const uint8_t* p = t.bin->data();
  const int32_t magic = n >= 4 ? load_le<int32_t>(p) : 0;
  BT_CHECK(magic == kLlmcMagicGpt2 || magic == kLlmcMagicLlama3, what, ": wrong magic ", magic,
           " (expected ", kLlmcMagicGpt2, " for GPT-2 or ", kLlmcMagicLlama3, " for Llama 3 tokens)");
  BT_CHECK(n >= kLlmcHeader, what, ": truncated: ", n, " bytes, the header alone needs ", kLlmcHeader);
  const int32_t version = load_le<int32_t>(p + 4);
  if (magic == kLlmcMagicGpt2) {
    BT_CHECK(version == 1, what, ": version ", version, " is not supported (magic ", magic, " has version 1)");
    t.dtype = TokenDType::U16;
  } else {
    BT_CHECK(version == 7, what, ": version ", version, " is not supported (magic ", magic, " has version 7)");
    t.dtype = TokenDType::U32;
  }
  const int32_t ntok = load_le<int32_t>(p + 8);
  BT_CHECK(ntok >= 0, what, ": negative token count ", ntok, " in the header");
  const uint64_t need = kLlmcHeader + uint64_t(ntok) * uint64_t(dtype_bytes(t.dtype));
  BT_CHECK(n >= need, what, ": truncated: ", n, " bytes, but the header says ", ntok, " tokens (", need,
           " bytes)");
  BT_CHECK(n == need, what, ": ", n - need, " bytes after the ", ntok, " tokens its header announces");
  t.data = p + kLlmcHeader;
  t.tokens = uint64_t(ntok);
}

// The value of `key` in a .npy header dict ("{'descr': '<u2', 'fortran_order': False, 'shape': (5,), }").
std::string npy_field(const std::string& h, const std::string& key, const std::string& what) {
  size_t at = h.find("'" + key + "'");
  BT_CHECK(at != std::string::npos, what, ": the header has no '", key, "' field");
  at = h.find(':', at);
  BT_CHECK(at != std::string::npos, what, ": malformed header");
  ++at;
  while (at < h.size() && h[at] == ' ') ++at;
  BT_CHECK(at < h.size(), what, ": malformed header");
  size_t end;
  if (h[at] == '\'') {
    end = h.find('\'', at + 1);
    BT_CHECK(end != std::string::npos, what, ": malformed header");
    return h.substr(at + 1, end - at - 1);
  }
  if (h[at] == '(') {
    end = h.find(')', at);
    BT_CHECK(end != std::string::npos, what, ": malformed header");
    return h.substr(at, end - at + 1);
  }
  end = h.find_first_of(",}", at);
  BT_CHECK(end != std::string::npos, what, ": malformed header");
  return h.substr(at, end - at);
}

void open_npy(TokenFile& t) {
  t.bin = std::make_shared<MappedFile>(t.path);
  const std::string what = "npy file '" + t.path + "'";
  const uint64_t n = t.bin->size();
  const uint8_t* p = t.bin->data();
  BT_CHECK(n >= 6 && std::memcmp(p, "\x93NUMPY", 6) == 0, what, ": wrong magic (not a .npy file written by numpy.save)");
  BT_CHECK(n >= 10, what, ": truncated header");
  const int major = p[6];
  BT_CHECK(major >= 1 && major <= 3, what, ": .npy format version ", major, " is not supported");
  uint64_t hlen, hstart;
  if (major == 1) {
    hlen = load_le<uint16_t>(p + 8);
    hstart = 10;
  } else {
    BT_CHECK(n >= 12, what, ": truncated header");
    hlen = load_le<uint32_t>(p + 8);
    hstart = 12;
  }
  BT_CHECK(n >= hstart + hlen, what, ": truncated: ", n, " bytes, the header alone needs ", hstart + hlen);
  const std::string h(reinterpret_cast<const char*>(p + hstart), hlen);
  const std::string descr = npy_field(h, "descr", what);
  const std::string fortran = npy_field(h, "fortran_order", what);
  const std::string shape = npy_field(h, "shape", what);
  BT_CHECK(descr.size() >= 3, what, ": unsupported dtype '", descr, "'");
  const char order = descr[0], kind = descr[1];
  const std::string bytes = descr.substr(2);
  BT_CHECK(order != '>', what, ": big-endian dtype '", descr, "' is not supported (save with '<' byte order)");
  BT_CHECK(order == '<' || order == '|' || order == '=', what, ": unsupported dtype '", descr, "'");
  if (kind == 'u' && bytes == "1") t.dtype = TokenDType::U8;
  else if (kind == 'i' && bytes == "1") t.dtype = TokenDType::I8;
  else if (kind == 'u' && bytes == "2") t.dtype = TokenDType::U16;
  else if (kind == 'i' && bytes == "2") t.dtype = TokenDType::I16;
  else if (kind == 'u' && bytes == "4") t.dtype = TokenDType::U32;
  else if (kind == 'i' && bytes == "4") t.dtype = TokenDType::I32;
  else if (kind == 'u' && bytes == "8") t.dtype = TokenDType::U64;
  else if (kind == 'i' && bytes == "8") t.dtype = TokenDType::I64;
  else BT_FAIL(what, ": dtype '", descr, "' is not an integer type (token ids must be integers)");
  BT_CHECK(fortran.find("False") != std::string::npos || shape.find(',') == std::string::npos ||
               shape == "(,)",
           what, ": Fortran-order arrays are not supported");
  // shape: "(N,)" for 1-D.
  BT_CHECK(shape.size() >= 2 && shape.front() == '(' && shape.back() == ')', what, ": malformed shape '", shape,
           "' (expected a tuple such as (N,))");
  std::string inner = shape.substr(1, shape.size() - 2);
  while (!inner.empty() && (inner.back() == ' ' || inner.back() == ',')) inner.pop_back();
  BT_CHECK(!inner.empty() && inner.find(',') == std::string::npos, what, ": shape ", shape,
           " is not 1-D (save tokens.reshape(-1))");
  // Digits only: stoull would take "-1" as 2^64 - 1.
  uint64_t count = 0;
  const auto [end, ec] = std::from_chars(inner.data(), inner.data() + inner.size(), count);
  BT_CHECK(ec == std::errc() && end == inner.data() + inner.size(), what, ": malformed shape ", shape);
  // Without wrapping around: a shape of 2^61 uint64 tokens is not 0 bytes.
  const uint64_t start = hstart + hlen, item = uint64_t(dtype_bytes(t.dtype));
  BT_CHECK(count <= (n - start) / item, what, ": truncated: ", n, " bytes, but its shape ", shape, " needs ",
           count > (UINT64_MAX - start) / item ? std::string("more than 2^64") : std::to_string(start + count * item));
  BT_CHECK(start % uint64_t(dtype_bytes(t.dtype)) == 0, what, ": the data is not aligned to its dtype");
  t.data = p + start;
  t.tokens = count;
}

}  // namespace

TokenFile open_token_file(const std::string& path, TokenFileFormat format) {
  TokenFile t;
  t.format = format;
  t.path = path;
  if (format != TokenFileFormat::Megatron) {
    BT_CHECK(fs::exists(path), "input '", path, "': no such file");
    BT_CHECK(!fs::is_directory(path), "input '", path, "' is a directory; list its files instead");
  }
  // Errors stay one line: a header's dtype or shape quoted in a message may hold line breaks
  // (found by fuzzing); they are shown escaped.
  try {
    switch (format) {
      case TokenFileFormat::Megatron: open_megatron(t, path); break;
      case TokenFileFormat::NanoGpt: open_nanogpt(t); break;
      case TokenFileFormat::Npy: open_npy(t); break;
      case TokenFileFormat::Llmc: open_llmc(t); break;
    }
  } catch (const Error& e) {
    const std::string m = e.what(), escaped = one_line(m);
    if (escaped == m) throw;
    throw Error(escaped, e.file(), e.line());
  }
  return t;
}

}  // namespace bt

// libFuzzer target: the token files of other frameworks that `bt prepare --format
// megatron|nanogpt|npy|llmc` imports (data/token_files.cpp, open_token_file). Input: a format
// byte (0 megatron, 1 nanogpt, 2 npy, 3 llmc), then the file; for megatron a 4-byte
// little-endian length of the .idx, the .idx, and the .bin. Beyond the common oracle
// (fuzz_common.h): what open_token_file accepts lies inside the files (computed here without
// overflow), and every token of it is read.
#include <string>

#include "data/token_files.h"
#include "fuzz_common.h"

namespace {
using bt::fuzz::fail;

// [p, p + bytes) inside the mapping of f.
void check_inside(const bt::MappedFile& f, const uint8_t* p, unsigned __int128 bytes, const std::string& what) {
  if (bytes == 0) return;
  if (!f.data() || p < f.data() || p > f.data() + f.size() ||
      bytes > static_cast<unsigned __int128>(f.data() + f.size() - p))
    fail(what + " lies outside its file");
}

// Reads n elements at p (the import reads them all the same way).
uint64_t touch(const uint8_t* p, uint64_t n, int bytes) {
  uint64_t sum = 0;
  for (uint64_t i = 0; i < n * uint64_t(bytes); ++i) sum += p[i];
  return sum;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const int format = data[0] % 4;
  ++data, --size;
  std::string path;
  bt::TokenFileFormat fmt;
  if (format == 0) {
    if (size < 4) return 0;
    const uint64_t idx_len = std::min<uint64_t>(data[0] | data[1] << 8 | data[2] << 16 | uint64_t(data[3]) << 24, size - 4);
    bt::fuzz::scratch_file("d.idx", data + 4, idx_len);
    path = bt::fuzz::scratch_file("d.bin", data + 4 + idx_len, size - 4 - idx_len);
    fmt = bt::TokenFileFormat::Megatron;
  } else {
    static const char* const names[] = {"", "train.bin", "tokens.npy", "shard.bin"};
    path = bt::fuzz::scratch_file(names[format], data, size);
    fmt = format == 1 ? bt::TokenFileFormat::NanoGpt : format == 2 ? bt::TokenFileFormat::Npy : bt::TokenFileFormat::Llmc;
  }
  bt::fuzz::accepts([&] {
    const bt::TokenFile t = bt::open_token_file(path, fmt);
    const int item = bt::dtype_bytes(t.dtype);
    if (item <= 0) fail("a bad dtype");
    uint64_t sum = 0;
    if (fmt != bt::TokenFileFormat::Megatron) {
      check_inside(*t.bin, t.data, static_cast<unsigned __int128>(t.tokens) * item, "the token array");
      sum += touch(t.data, t.tokens, item);
    } else {
      check_inside(*t.idx, t.sizes, static_cast<unsigned __int128>(t.sequences) * 4, "the sizes");
      check_inside(*t.idx, t.pointers, static_cast<unsigned __int128>(t.sequences) * 8, "the pointers");
      check_inside(*t.idx, t.doc_index, static_cast<unsigned __int128>(t.doc_index_len) * 8, "the document index");
      uint64_t total = 0;
      for (uint64_t i = 0; i < t.sequences; ++i) {
        const int32_t len = bt::load_le<int32_t>(t.sizes + 4 * i);
        const int64_t ptr = bt::load_le<int64_t>(t.pointers + 8 * i);
        if (len < 0 || ptr < 0) fail("a negative sequence size or pointer was accepted");
        check_inside(*t.bin, t.data + ptr, static_cast<unsigned __int128>(len) * item,
                     "sequence " + std::to_string(i));
        sum += touch(t.data + ptr, uint64_t(len), item);
        total += uint64_t(len);
      }
      if (total != t.tokens) fail("the token count is not the sum of the sequence sizes");
    }
    (void)sum;
  });
  return 0;
}

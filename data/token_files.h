// Token files written by other training frameworks, memory-mapped read-only for
// `bt prepare --format megatron|nanogpt|npy|llmc` (data/import.h):
//   megatron  Megatron-LM / GPT-NeoX indexed dataset, given by its path prefix P: P.idx holds
//             "MMIDIDX\0\0", version (uint64 = 1), dtype code (uint8), sequence count S and
//             document-index count D (uint64 each), then sizes int32[S], byte pointers into
//             P.bin int64[S], document index int64[D] (D = documents + 1, from 0 to S), and
//             optionally int8[S] sequence modes (multimodal data; ignored). P.bin holds the
//             tokens. The Pythia idxmaps are of this kind (uint16, one sequence per document).
//   nanogpt   a flat array of uint16 tokens without a header (nanoGPT's train.bin / val.bin)
//   npy       a 1-D numpy array of integer tokens (.npy format version 1, 2 or 3, C order)
//   llmc      llm.c's token shards: a header of 256 int32 (magic 20240520, version 1, token
//             count) then uint16 tokens; or magic 20240801, version 7, uint32 tokens (Llama 3)
// Every problem (wrong magic, truncated header or index, a .bin shorter than the index says, an
// unsupported dtype) fails with one line naming the file.
#pragma once
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>

namespace bt {

enum class TokenFileFormat { Megatron, NanoGpt, Npy, Llmc };
const char* token_format_name(TokenFileFormat f);
// "megatron" | "nanogpt" | "npy" | "llmc"; nullopt for other names (text, jsonl, auto).
std::optional<TokenFileFormat> parse_token_format(const std::string& s);
// For --format auto: the token format a path looks like (by extension, a sibling .idx, or an
// llm.c magic number), or nullopt for text / JSONL inputs.
std::optional<TokenFileFormat> detect_token_format(const std::string& path);

// Integer element types of token files.
enum class TokenDType { U8, I8, U16, I16, I32, U32, I64, U64 };
int dtype_bytes(TokenDType t);
const char* dtype_name(TokenDType t);

// A read-only memory map of a whole file (nothing mapped for an empty file).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// One opened input. `tokens` elements of `dtype` start at `data` (flat formats: the token array;
// megatron: the whole .bin, addressed through the index).
struct TokenFile {
  TokenFileFormat format = TokenFileFormat::NanoGpt;
  std::string path;      // the file holding the tokens (.bin / .npy)
  std::string idx_path;  // megatron: the index
  TokenDType dtype = TokenDType::U16;
  const uint8_t* data = nullptr;
  uint64_t tokens = 0;
  // megatron: the index, read in place (the arrays are not aligned; use load_le).
  uint64_t sequences = 0;
  uint64_t doc_index_len = 0;           // D (documents + 1)
  const uint8_t* sizes = nullptr;       // int32[sequences]
  const uint8_t* pointers = nullptr;    // int64[sequences], bytes into .bin
  const uint8_t* doc_index = nullptr;   // int64[D]
  std::shared_ptr<MappedFile> bin, idx;
  std::string what() const;  // "megatron dataset 'P' (P.idx, P.bin)", "npy file 'x.npy'", ...
};

// Opens and validates one input: headers, the index against the file sizes. `path`: megatron
// accepts the prefix P, P.idx or P.bin.
TokenFile open_token_file(const std::string& path, TokenFileFormat format);

template <class T>
inline T load_le(const uint8_t* p) {  // little-endian host (x86-64, aarch64)
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace bt

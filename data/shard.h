// Tokenized HDF5 shards (docs/design.md §4), one file each:
//   /tokens       1-D uint16 (vocab_size <= 65536) or uint32, chunked; documents concatenated,
//                 each followed by EOS
//   /doc_offsets  1-D uint64, start of each document in /tokens
//   attributes on the root group: format = "bt-tokens", version = 1, vocab_size, eos_id,
//                 tokenizer ("byte" or "spm:<sha256 of the model file>")
// Writers write <path>.tmp, fsync, rename, so a shard that exists under its name is complete.
// Readers check every HDF5 call and fail with one line naming the file and the problem.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace bt {

inline constexpr const char* kShardFormat = "bt-tokens";
inline constexpr int kShardVersion = 1;
inline constexpr uint64_t kShardChunkElems = 1u << 20;  // HDF5 chunk: 1M tokens

struct ShardMeta {
  int64_t vocab_size = 0;
  int64_t eos_id = -1;
  std::string tokenizer;  // "byte", "spm:<sha256>"
};

struct ShardInfo : ShardMeta {
  std::string path;
  uint64_t tokens = 0;     // length of /tokens
  uint64_t documents = 0;  // length of /doc_offsets
  int token_bytes = 0;     // 2 (uint16) or 4 (uint32)
};

// Checks that shard `in` can be read together with `first` (the first shard of the same set)
// by a model of model_vocab_size tokens (<= 0: no model limit): one tokenizer, one vocabulary,
// a vocabulary that fits. `first` may be `in` itself.
void check_shard_fits(const ShardInfo& first, const ShardInfo& in, int model_vocab_size);

// Accumulates documents in memory (in the on-disk width) and writes the shard on finish().
// Nothing appears under `path` before finish() returns; a writer destroyed without finish()
// leaves nothing behind.
class ShardWriter {
 public:
  ShardWriter(std::string path, ShardMeta meta);
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // Appends ids[0..n) followed by EOS as one document. Ids must lie in [0, vocab_size).
  void add_document(const int32_t* ids, size_t n);
  uint64_t tokens() const { return finished_ ? final_tokens_ : (wide_ ? tok32_.size() : tok16_.size()); }
  uint64_t documents() const { return doc_offsets_.size(); }
  const std::string& path() const { return path_; }
  // Writes <path>.tmp, fsyncs it, renames it to <path> and fsyncs the directory.
  void finish();

 private:
  std::string path_;
  ShardMeta meta_;
  bool wide_;                       // uint32 on disk
  std::vector<uint16_t> tok16_;     // [tokens] when !wide_
  std::vector<uint32_t> tok32_;     // [tokens] when wide_
  std::vector<uint64_t> doc_offsets_;  // [documents]
  bool finished_ = false;
  uint64_t final_tokens_ = 0;  // tokens() after finish() released the buffer
};

// Writes a whole shard at once. `tokens` are complete documents, each ending with meta.eos_id;
// `doc_offsets` their starts. Used by tests and benchmarks.
void write_shard(const std::string& path, const ShardMeta& meta, const std::vector<int32_t>& tokens,
                 const std::vector<uint64_t>& doc_offsets);

// Opens the shard and validates its attributes and dataset shapes, without reading tokens.
ShardInfo read_shard_info(const std::string& path);

// Reads a whole shard, appending its tokens to `tokens` and its document starts, shifted by the
// previous tokens.size(), to `doc_offsets`. Validates every id < vocab_size, the offsets, and
// that every document ends with EOS.
ShardInfo read_shard(const std::string& path, std::vector<int32_t>& tokens,
                     std::vector<uint64_t>& doc_offsets);

// One shard kept open for random-access reads of token ranges (the lazy loader's reader). The
// constructor validates like read_shard_info; nothing is read up front. Every method takes
// h5::mutex(), so ShardFiles may be used from several threads (the calls are serialized).
class ShardFile {
 public:
  explicit ShardFile(const std::string& path);
  ~ShardFile();
  ShardFile(const ShardFile&) = delete;
  ShardFile& operator=(const ShardFile&) = delete;

  const ShardInfo& info() const;
  // Tokens [start, start + n) of /tokens as int32 (one hyperslab read). Fails with one line
  // naming the shard when the range cannot be read or holds an id >= vocab_size.
  void read_tokens(uint64_t start, uint64_t n, int32_t* out);
  // The whole /doc_offsets, checked: [0] == 0, strictly increasing, below the token count.
  std::vector<uint64_t> read_doc_offsets();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// fsync a file or directory by path; throws bt::Error naming it on failure.
void fsync_path(const std::string& path);
// Writes `contents` to <path>.tmp, fsyncs, renames to <path>, fsyncs the directory.
void write_file_atomic(const std::string& path, const std::string& contents);

}  // namespace bt

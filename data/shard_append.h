// A shard (docs/design.md §4) written while it is produced, in constant memory (data/import.h):
// the same HDF5 layout as ShardWriter (shard.h: /tokens uint16 or uint32 and /doc_offsets
// uint64, chunked (1M tokens, 64k offsets), unlimited max dims, the same attributes, no timestamps),
// but the datasets grow one full chunk at a time, so a shard of any size needs about one chunk
// of memory plus the largest document being added.
//
//   ShardAppender w(path, meta);
//   T* p = w.reserve<T>(n);   // room for n tokens at the end (T = uint16_t or uint32_t, by vocab)
//   ... fill p[0..n) ...
//   w.commit_doc(n);          // they are one document (or: w.cancel() forgets them)
//   w.finish();               // <path>.tmp is fsynced and renamed to <path>
// Documents must end with meta.eos_id; ids are not checked here (the importer checks them).
// Every HDF5 call holds h5::mutex(). A writer destroyed before finish() removes <path>.tmp.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/shard.h"

namespace bt {

class ShardAppender {
 public:
  ShardAppender(std::string path, ShardMeta meta);
  ~ShardAppender();
  ShardAppender(const ShardAppender&) = delete;
  ShardAppender& operator=(const ShardAppender&) = delete;

  bool wide() const { return wide_; }  // uint32 tokens (vocab_size > 65536)
  // Room for n more tokens; valid until the next call. T must match wide().
  template <class T>
  T* reserve(uint64_t n);
  // The n tokens reserved last become the next document / are dropped.
  void commit_doc(uint64_t n);
  void cancel();
  // Long documents in pieces: start_doc(), then reserve + commit_tokens as often as needed.
  void start_doc();
  void commit_tokens(uint64_t n);

  uint64_t tokens() const { return tokens_; }
  uint64_t documents() const { return docs_; }
  const std::string& path() const { return path_; }
  // Writes the rest, closes, fsyncs <path>.tmp and renames it to <path>. Returns the file size.
  uint64_t finish();

 private:
  void flush(bool all);
  void flush_offsets(bool all);
  struct H5;
  std::string path_, tmp_, what_;
  ShardMeta meta_;
  bool wide_;
  std::unique_ptr<uint8_t[]> buf_;    // tokens not yet written (uninitialized storage)
  uint64_t cap_ = 0;                  // buf_ capacity in bytes
  uint64_t buf_tokens_ = 0;           // committed tokens in buf_
  uint64_t reserved_ = 0;             // reserved, not committed
  std::vector<uint64_t> offsets_;     // document starts not yet written
  uint64_t tokens_ = 0, docs_ = 0;    // committed totals
  uint64_t written_tokens_ = 0, written_offsets_ = 0;
  std::unique_ptr<H5> h5_;
  bool finished_ = false;
};

}  // namespace bt

// Where the loader's windows come from: a TokenSource is the (optionally padded) token stream
// with random access to any range of it. Two implementations:
//   MemorySource  a TokenStream in memory (synthetic data, tests, `bt eval`), padded once into a
//                 copy when a padding option is on (as the loader always did);
//   ShardSource   HDF5 shards read lazily: the files stay open, each read is a hyperslab of
//                 /tokens, ids are checked against the vocabulary as they are read. Memory: a few
//                 numbers per shard, plus 8 bytes per document when a padding option is on.
// Both produce exactly the same stream for the same corpus and padding options.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "data/manifest.h"
#include "data/token_stream.h"

namespace bt {

class ShardFile;

// The padding options (docs/design.md §2.3; loader.h documents them). Normalized: when no option is
// active (block_length 1 or both flags off) all fields hold their defaults, so specs compare equal.
struct PadSpec {
  int block_length = 1;
  bool random_pad_first_block = false;
  bool pad_to_block_boundary = false;
  int pad_id = -1;  // -1: the stream's EOS id
  uint64_t seed = 0;
  bool active() const { return block_length > 1 && (random_pad_first_block || pad_to_block_boundary); }
  static PadSpec make(int block_length, bool random_first, bool boundary, int pad_id, uint64_t seed);
  bool operator==(const PadSpec&) const = default;
};

// Number of pads placed before document d by random_pad_first_block.
int first_block_pads(uint64_t seed, uint64_t doc, int block_length);

class TokenSource {
 public:
  virtual ~TokenSource() = default;
  // Tokens in the padded stream (= raw_tokens() without padding).
  virtual uint64_t size() const = 0;
  // Tokens before padding.
  virtual uint64_t raw_tokens() const = 0;
  // Fills tokens[0..n) and mask[0..n) (1 = real token, 0 = pad) with the padded stream's
  // positions [begin, begin + n); requires begin + n <= size(). Thread-safe. A shard that cannot
  // be read or holds an id >= its vocab_size fails here with one line naming the shard.
  virtual void read(uint64_t begin, uint64_t n, int32_t* tokens, uint8_t* mask) const = 0;
  const PadSpec& padding() const { return pad_; }
  int vocab_size() const { return vocab_size_; }
  int eos_id() const { return eos_id_; }
  int pad_id() const { return pad_.pad_id >= 0 ? pad_.pad_id : eos_id_; }  // the effective pad id
  const std::string& tokenizer() const { return tokenizer_; }

 protected:
  PadSpec pad_;
  int vocab_size_ = 0;
  int eos_id_ = -1;
  std::string tokenizer_;
};

// The in-memory stream. Validates it (non-empty, an EOS id, vocab_size <= model_vocab_size when
// that is > 0, every id in range, document offsets increasing) with the loader's one-line errors.
class MemorySource final : public TokenSource {
 public:
  MemorySource(std::shared_ptr<const TokenStream> stream, const PadSpec& pad, int model_vocab_size);
  uint64_t size() const override { return n_; }
  uint64_t raw_tokens() const override { return stream_->tokens.size(); }
  void read(uint64_t begin, uint64_t n, int32_t* tokens, uint8_t* mask) const override;

 private:
  std::shared_ptr<const TokenStream> stream_;
  std::vector<int32_t> padded_tok_;  // [n_] when padding
  std::vector<uint8_t> padded_mask_;
  const int32_t* tok_ = nullptr;
  const uint8_t* mask_ = nullptr;  // nullptr: all real
  uint64_t n_ = 0;
};

// Shards read on demand. Opening checks every shard's attributes and shapes (the one-line errors
// of read_shards: format, version, vocab fit, mixed tokenizers, truncated files) and its identity
// against manifest.json (size, counts, checksum: data/manifest.h) but reads no tokens otherwise; with a padding option it also reads /doc_offsets (checked) to index the documents.
// Token ids are checked per read. Up to max_open_files() shards stay open (least recently used
// ones are closed beyond that). Needs shards below 2^32 tokens (padded) with a padding option.
class ShardSource final : public TokenSource {
 public:
  // max_open_files 0: half the process's descriptor limit (raised to its hard limit), >= 16.
  // `check`: the shards are checked against their directories' manifest.json (data/manifest.h).
  ShardSource(const std::string& glob_or_list, int model_vocab_size, const PadSpec& pad,
              size_t max_open_files = 0, const ShardCheckOptions& check = {});
  ~ShardSource() override;
  uint64_t size() const override { return padded_total_; }
  uint64_t raw_tokens() const override { return raw_total_; }
  uint64_t documents() const { return docs_total_; }
  size_t shards() const { return shards_.size(); }
  void read(uint64_t begin, uint64_t n, int32_t* tokens, uint8_t* mask) const override;
  size_t max_open_files() const { return max_open_; }

 private:
  struct Shard {
    std::string path;
    uint64_t tokens = 0, documents = 0;
    uint64_t raw_begin = 0, padded_begin = 0, padded_len = 0, doc_begin = 0;
    mutable std::unique_ptr<ShardFile> file;  // open or null
    mutable uint64_t last_use = 0;
  };
  ShardFile& file(const Shard& s) const;  // caller holds mu_
  void read_padded(const Shard& s, uint64_t a, uint64_t b, int32_t* tok, uint8_t* mask) const;

  std::vector<Shard> shards_;
  std::vector<uint64_t> padded_begins_;  // [shards] for the binary search
  // With a padding option, per document (all shards, in order): (padded start within its
  // shard << 32) | raw start within its shard. Increasing within each shard.
  std::vector<uint64_t> docs_;
  uint64_t raw_total_ = 0, padded_total_ = 0, docs_total_ = 0;
  size_t max_open_ = 0;
  mutable std::mutex mu_;
  mutable size_t open_ = 0;
  mutable uint64_t clock_ = 0;
  mutable std::vector<int32_t> scratch_;
  mutable std::vector<uint64_t> segs_;
};

}  // namespace bt

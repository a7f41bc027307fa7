// The training / validation data loader (docs/design.md §4).
//
// The (optionally padded) token stream is cut into fixed windows of L tokens; documents are
// packed across windows and the tail shorter than L is unused. Epoch e visits the windows in a
// pseudo-random permutation seeded by (seed, e) only, never by rank or world size. Global step
// takes the next global_batch windows of that permutation; rank r takes windows
// [r * G / world, (r + 1) * G / world) of it, split into micro-batches. The concatenation of all
// ranks' slices is therefore the same for any world size, and the position (LoaderState: epoch,
// next window of the permutation) is world-size independent: a run can resume on a different
// number of ranks and continue with the next unseen window. A partial global batch at the end
// of an epoch is dropped; the next epoch starts with a new permutation. A background thread
// prepares the next step's batch; the batches are identical with prefetch on or off.
// The windows come from a TokenSource (token_source.h): an in-memory TokenStream, or HDF5 shards
// read lazily (open_shard_source); both give identical batches.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/token_source.h"  // TokenSource, MemorySource, ShardSource
#include "data/token_stream.h"   // TokenStream, read_shards, synthetic_stream

namespace bt {

struct LoaderOptions {
  int context_length = 0;  // L (tokens per window)
  int block_length = 1;    // L_B (for the padding options)
  int global_batch = 0;    // sequences per optimizer step, all ranks
  int micro_batch = 0;     // sequences per rank per forward
  int rank = 0, world = 1;
  uint64_t seed = 1234;
  bool random_pad_first_block = false;  // 0..L_B-1 pads before each document
  bool pad_to_block_boundary = false;   // pads after each document's EOS up to a multiple of L_B
  int pad_id = -1;         // token id placed at pad positions (default: eos)
  bool shuffle = true;     // validation uses false: windows in stream order
  bool prefetch = true;
  int vocab_size = 0;      // the model's vocabulary; > 0: every id (and pad_id) must be below it
  bool verify_checksums = true;  // open_shard_source: XXH3 of the shards against manifest.json (data/manifest.h)
};

struct MicroBatch {
  std::vector<int32_t> tokens;  // [micro_batch, L] row-major
  std::vector<uint8_t> mask;    // [micro_batch, L]: 1 = real token (may be a target), 0 = pad
  int rows = 0;                 // micro_batch
};

struct StepBatch {                // what one rank needs for one optimizer step
  std::vector<MicroBatch> micro;  // accum = global_batch / (micro_batch * world) entries
  int64_t global_targets = -1;    // optional: filled by the trainer
};

struct LoaderState {
  uint64_t epoch = 0;
  uint64_t next_window = 0;  // index into this epoch's permutation, counted in global windows
  uint64_t windows_per_epoch = 0;  // informational: set by Loader::state(), checked on resume
  nlohmann::json to_json() const;
  static LoaderState from_json(const nlohmann::json& j);
  bool operator==(const LoaderState& o) const {
    return epoch == o.epoch && next_window == o.next_window;
  }
};

// The stream with the padding options applied (built once per loader).
struct PaddedStream {
  std::vector<int32_t> tokens;  // [n_padded]
  std::vector<uint8_t> mask;    // [n_padded] 1 = real token, 0 = pad
};
// Pads before document d: a hash of (seed, d) mod L_B; after each EOS (pad_to_block_boundary):
// up to the next multiple of L_B. Without either option, a plain copy with an all-ones mask.
PaddedStream pad_stream(const TokenStream& s, const LoaderOptions& opt);
// The padding options of `opt` as a PadSpec (normalized: empty when none is active).
PadSpec pad_spec(const LoaderOptions& opt);
// The training data read lazily from HDF5 shards (a path, glob or comma-separated list), with
// opt's padding options and opt.vocab_size as the model vocabulary (see ShardSource).
std::shared_ptr<TokenSource> open_shard_source(const std::string& glob_or_list, const LoaderOptions& opt);

// A pseudo-random permutation of [0, n) with O(1) memory and random access (a keyed Feistel
// network with cycle walking); the identity when shuffle is false.
class WindowPermutation {
 public:
  WindowPermutation(uint64_t n, uint64_t seed, uint64_t epoch, bool shuffle = true);
  uint64_t operator()(uint64_t i) const;
  uint64_t size() const { return n_; }

 private:
  uint64_t encrypt(uint64_t x) const;
  uint64_t n_;
  bool identity_;
  int half_bits_ = 1;
  uint64_t half_mask_ = 1;
  uint64_t keys_[6] = {};
};

class Loader {
 public:
  // An in-memory stream (padded into a copy when a padding option is on).
  Loader(std::shared_ptr<const TokenStream> stream, LoaderOptions opt);
  // Any source, e.g. open_shard_source(...); its padding must match opt's (pad_spec(opt)).
  Loader(std::shared_ptr<const TokenSource> source, LoaderOptions opt);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  StepBatch next();                    // the next global step's slice for this rank
  LoaderState state() const;           // position after the last batch returned by next()
  void set_state(const LoaderState&);  // resume: the next call to next() continues exactly there
  uint64_t windows_per_epoch() const;
  uint64_t steps_per_epoch() const;    // windows_per_epoch / global_batch (tail dropped)
  int accum() const;                   // micro-batches per step on this rank
  uint64_t padded_tokens() const;      // length of the stream after padding
  uint64_t stream_tokens() const;      // length of the stream before padding
  const TokenSource& source() const;
  const LoaderOptions& options() const;

 private:
  void init(std::shared_ptr<const TokenSource> source, const LoaderOptions& opt);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace bt

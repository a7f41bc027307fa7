// The corpus as the loader sees it: all documents concatenated in memory, each ending with EOS.
// Made from HDF5 shards (read_shards) or synthetically (synthetic_stream, for tests, the
// foundation trainer and benchmarks). loader.h includes this header.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace bt {

struct TokenStream {
  std::vector<int32_t> tokens;       // [n_tokens] all documents, each ending with EOS
  std::vector<uint64_t> doc_offsets;  // [n_docs] start of each document in tokens
  int vocab_size = 0;
  int eos_id = -1;
  std::string tokenizer;  // "byte", "spm:<sha256>", "synthetic:..."
};

// The items of a comma-separated list of paths and glob patterns, trimmed, empty ones dropped.
std::vector<std::string> split_shard_list(const std::string& glob_or_list);

// Expands a comma-separated list of paths and glob patterns ("data/c/train-*.h5") into shard
// paths, in order (each pattern's matches sorted). Fails when a path is missing or a pattern
// matches nothing.
std::vector<std::string> expand_shard_list(const std::string& glob_or_list);

// Reads every shard of the list into one stream. Fails with one line when shards disagree on
// tokenizer, vocab_size or eos_id, when the tokenizer's vocab_size exceeds model_vocab_size
// (<= 0: no model limit), or when any shard is unreadable or holds an id >= its vocab_size.
TokenStream read_shards(const std::string& glob_or_list, int model_vocab_size);

// Synthetic streams; eos_id = vocab_size - 1, other tokens drawn from [0, vocab_size - 1):
//   "repeat:<period>[:<tokens>]"  one random sequence of period - 1 tokens + EOS, repeated as
//                                 identical documents until <tokens> (default 2^20) tokens
//   "random[:<tokens>]"           i.i.d. tokens in documents of random length 1..2048
TokenStream synthetic_stream(const std::string& spec, int vocab_size, uint64_t seed);

}  // namespace bt

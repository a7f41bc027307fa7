// `bt prepare`: text / JSONL / stdin -> tokenized HDF5 shards + tokenizer files + manifest.json.
//
// Output directory:
//   train-00000.h5 ...   training shards (about shard_tokens tokens each; documents never split)
//   val-00000.h5 ...     held-out shards: each document goes to val when a hash of (seed, its
//                        text) falls below val_fraction, so duplicates land in the same split
//   tokenizer.json       {"kind", "name", ...}; plus tokenizer.model for SentencePiece
//   manifest.json        written last, atomically: tokenizer, vocab_size, eos_id, and per shard
//                        its file, split, tokens, documents, bytes, sha256 and xxh3
// Every file is written as <name>.tmp and renamed, so an interrupted run leaves no file that
// looks complete; a directory without manifest.json is not a finished corpus. While the run
// works, the directory holds .bt-prepare-incomplete (removed after the manifest is written), so
// the shard readers refuse the shards of an unfinished run (data/manifest.h).
// Input that is not valid UTF-8: with --on-invalid-utf8 replace (default) each ill-formed
// sequence becomes U+FFFD for text tokenizers (the byte tokenizer keeps the bytes) and the
// summary counts them; with error the first one stops the run, naming file:line.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace bt {

struct PrepareOptions {
  std::vector<std::string> inputs;  // paths, "-" = stdin
  std::string format = "auto";      // text | jsonl | auto
  std::string tokenizer = "byte";   // byte | spm:PATH | train-spm:N
  std::string out;                  // output directory
  double val_fraction = 0.01;
  uint64_t shard_tokens = 50000000;
  uint64_t seed = 1;
  std::string doc_split = "blank";  // blank | line (text inputs)
  bool force = false;               // replace a previously prepared corpus in `out`
  int threads = 0;                  // tokenizer threads; 0 = hardware threads (max 8)
  uint64_t spm_max_sentences = 1000000;  // train-spm: lines sampled for training
  bool progress = true;             // progress line on stderr
  std::string on_invalid_utf8 = "replace";  // error | replace (by U+FFFD; the byte tokenizer keeps bytes)
};

struct PrepareSummary {
  std::string tokenizer;
  int vocab_size = 0;
  uint64_t train_tokens = 0, val_tokens = 0;
  uint64_t train_documents = 0, val_documents = 0;
  int train_shards = 0, val_shards = 0;
  uint64_t input_bytes = 0;
  double tokenizer_train_seconds = 0;  // train-spm only
  double seconds = 0;                  // the tokenize + write pass
  double tokens_per_second = 0;        // of that pass
  uint64_t invalid_utf8_bytes = 0;     // bytes of ill-formed UTF-8 in the input (replaced, or kept by `byte`)
  uint64_t invalid_utf8_lines = 0;     // input lines that held any
  bool invalid_utf8_replaced = false;  // replaced by U+FFFD (false: kept as bytes)
  std::string invalid_utf8_first;      // "file:line" of the first
};

PrepareSummary run_prepare(const PrepareOptions& opt);

}  // namespace bt

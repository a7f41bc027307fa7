// Importing token files made by other frameworks (data/token_files.h: Megatron / GPT-NeoX /
// Pythia indexed datasets, nanoGPT .bin, numpy .npy, llm.c shards) into our HDF5 shards
// (docs/design.md §4), with the manifest, checksums and document-based val split of `bt prepare`
// (prepare.h). Run by `bt prepare --format megatron|nanogpt|npy|llmc` (docs/data.md "Importing
// token files").
//
// Documents and the EOS convention: every document of our shards ends with the EOS id.
//   megatron  each sequence of the index is a document (as Megatron's and GPT-NeoX's GPT
//             datasets and the official Block Transformer loader treat them; the document index
//             is validated, not used). --doc-eos append (default): the EOS is appended to every
//             sequence, because Megatron files made without --append-eod hold none (the Pythia
//             idxmaps don't) and the official pipeline appends it on the fly; --doc-eos present:
//             the sequences already end with EOS (made with --append-eod), which is checked.
//   nanogpt / npy / llmc
//             the inputs are one token stream, in order. With split_on_eos a document ends at
//             each EOS (nanoGPT: "doc EOS doc EOS"); a lone EOS (an empty document, e.g. llm.c's
//             leading EOT: "EOS doc EOS doc") is dropped and a last document without EOS gets
//             one. Without it each input file is one document, followed by EOS.
// The val split: a document goes to val when XXH3-64 of its tokens as stored (uint16 or
// uint32 by vocabulary, EOS included), seeded by --seed, falls below val_fraction.
//
// Work is cut into units of about shard_tokens tokens (whole documents) processed in parallel,
// each by one thread in constant memory. A unit writes its train shard and its val documents
// under OUT/.import/ and then a small state file; a run that is killed resumes with the units
// that have no state file (same inputs and options; other leftovers are removed). At the end
// the train shards are renamed to train-00000.h5 ..., the val documents are gathered into
// val-*.h5, and tokenizer.json and manifest.json are written last.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/prepare.h"
#include "data/token_files.h"

namespace bt {

struct ImportOptions {
  std::vector<std::string> inputs;  // megatron: path prefixes (or their .idx/.bin); others: files
  TokenFileFormat format = TokenFileFormat::Megatron;
  std::string out;
  std::string tokenizer;  // byte | spm:PATH | hf:PATH | ids:VOCAB (ids only: no text tokenizer)
  int64_t eos_id = -1;    // -1: the tokenizer's EOS (ids:VOCAB needs it)
  bool split_on_eos = false;       // nanogpt / npy / llmc
  std::string doc_eos = "append";  // megatron: append | present
  double val_fraction = 0.01;
  uint64_t shard_tokens = 50000000;
  uint64_t seed = 1;
  uint64_t max_tokens = 0;  // > 0: only the first max_tokens source tokens (the document they cut ends there)
  int threads = 0;          // 0: hardware threads, at most 8
  bool force = false;
  bool progress = true;
};

struct ImportSummary : PrepareSummary {
  uint64_t source_tokens = 0;   // tokens read from the inputs
  uint64_t units = 0, units_resumed = 0;
  uint64_t dropped_empty = 0;   // split_on_eos: lone EOS tokens dropped
};

ImportSummary run_import(const ImportOptions& opt);

}  // namespace bt

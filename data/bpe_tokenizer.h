// The byte-level BPE tokenizers of the GPT-2 / GPT-NeoX / Pythia family, read from a Hugging Face
// tokenizer.json (`--tokenizer hf:PATH`), giving the ids of the Python `tokenizers` package:
//   1. invalid UTF-8 is repaired (utf8.h), as Python's decode("utf-8", "replace") would;
//   2. added tokens are split off: first those with normalized = false on the raw text, then,
//      after normalization, those with normalized = true (leftmost-longest matches; lstrip,
//      rstrip and single_word honoured);
//   3. normalizer: null, NFC, NFD, NFKC, NFKD (ICU), Lowercase, or a Sequence of them;
//   4. pre-tokenizer: ByteLevel (its GPT-2 regex through PCRE2 with Unicode properties; the
//      add_prefix_space and use_regex options), Split (a regex or string pattern, behaviour
//      Isolated or Removed), or a Sequence of them;
//   5. the BPE model: each piece's bytes mapped to the byte-to-unicode alphabet, merges applied in
//      rank order (lowest first, leftmost first), ignore_merges, byte_fallback (<0xXX> pieces)
//      and unk_token as the model says; a per-thread cache of recent words.
// The post-processor is not applied: encode() never adds BOS/EOS (bt prepare appends EOS).
// decode() maps the pieces back to bytes (byte-level alphabet, <0xXX> byte fallback, added
// tokens verbatim) and skips special added tokens (EOS among them), like the Python package's
// decode(skip_special_tokens=True), but returns the raw bytes: no U+FFFD substitution.
// Refused with a one-line error naming the file: other model types (WordPiece, Unigram), BPE
// dropout, continuing_subword_prefix / end_of_word_suffix, unknown normalizers and
// pre-tokenizers. The name recorded in shards and checkpoints is "hf:<sha256 of the file>"; the
// EOS is the first of <|endoftext|>, </s>, <eos>, <|end_of_text|> that the vocabulary has.
#pragma once
#include <memory>
#include <string>

#include "data/tokenizer.h"

namespace bt {

// `path`: a tokenizer.json, or a directory holding one.
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path);

}  // namespace bt

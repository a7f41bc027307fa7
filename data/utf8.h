// UTF-8 checking and repair for the byte-level BPE tokenizer (bpe_tokenizer.h). Invalid input is
// repaired the way Python's bytes.decode("utf-8", "replace") and Rust's String::from_utf8_lossy
// do it (the Unicode "maximal subpart" practice): each maximal prefix of a valid sequence that
// breaks off, and each byte that starts none, becomes U+FFFD. So text with invalid bytes is
// tokenized exactly as the Hugging Face tokenizers package tokenizes the decoded Python string.
// `bt prepare --on-invalid-utf8` (documents.h) uses the same functions to check, count and
// repair its input lines.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace bt {

// True when `s` is well-formed UTF-8 (no surrogates, no overlongs, nothing above U+10FFFF).
bool utf8_valid(std::string_view s);
// `s` with every ill-formed subsequence replaced by U+FFFD (EF BF BD).
std::string utf8_repair(std::string_view s);
// Length of the well-formed UTF-8 sequence at s[i] (1-4), or 0 when it is ill-formed there.
int utf8_seq_len(std::string_view s, size_t i);
// Offset of the first ill-formed byte of `s`, or std::string_view::npos.
size_t utf8_first_invalid(std::string_view s);
// The number of bytes utf8_repair replaces (those of the ill-formed subsequences).
uint64_t utf8_invalid_bytes(std::string_view s);

}  // namespace bt

// Python-compatible text operations that the lm-evaluation-harness task definitions apply to
// documents (str.strip, str.capitalize, re.split(r"\s+"), str.replace, the HellaSwag and
// WikiText preprocessing), on UTF-8 std::strings. "Whitespace" is Python's: the code points for
// which str.isspace() is true (ASCII \t\n\v\f\r, space, \x1c-\x1f, U+0085, U+00A0, U+1680,
// U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000), which is also what `\s` matches in a
// str pattern. Lengths are counted in code points, as Python's len() counts them.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace bt::text {

bool is_space(char32_t c);
// Code points of a UTF-8 string (invalid bytes count as one each).
size_t length(std::string_view s);
// Bytes of the trailing / leading whitespace (Python whitespace, whole code points).
size_t trailing_space_bytes(std::string_view s);
size_t leading_space_bytes(std::string_view s);
std::string strip(std::string_view s);
std::string lstrip(std::string_view s);
std::string rstrip(std::string_view s);
// s.replace(from, to): every non-overlapping occurrence, left to right.
std::string replace_all(std::string_view s, std::string_view from, std::string_view to);
// len(re.split(r"\s+", s)): the number of maximal whitespace runs + 1.
size_t count_words(std::string_view s);
// str.capitalize(): the first character upper-cased, the rest lower-cased. Case mapping covers
// ASCII, Latin-1 and Latin Extended-A; other characters are left as they are.
std::string capitalize(std::string_view s);
// Joins with sep / splits on a literal separator, as Python's str.join / str.split(sep).
std::string join(const std::vector<std::string>& parts, std::string_view sep);
std::vector<std::string> split(std::string_view s, std::string_view sep);

// HellaSwag (tasks/hellaswag/utils.py preprocess): strip; " [title]" -> ". "; remove every
// "[...]" (shortest, within a line); "  " -> " ".
std::string hellaswag_preprocess(std::string_view s);
// WikiText (tasks/wikitext/preprocess_wikitext.py wikitext_detokenizer): undoes the dataset's
// tokenization (" @-@ " -> "-", " , " -> ", ", spaces inside brackets and quotes, ...).
std::string wikitext_detokenize(std::string_view s);

}  // namespace bt::text

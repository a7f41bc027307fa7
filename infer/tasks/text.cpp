// Python-compatible text operations for the task definitions: see text.h.
#include "infer/tasks/text.h"

#include <cstdint>

namespace bt::text {

namespace {

// One UTF-8 code point at s[i]: {code point, bytes}. An invalid or truncated sequence is one
// byte (code point 0xFFFD), as a lenient decoder would read it.
std::pair<char32_t, size_t> decode(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) return {c, 1};
  size_t n = c >= 0xF0 && c < 0xF8 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
  if (n == 0 || i + n > s.size()) return {0xFFFD, 1};
  char32_t cp = c & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) return {0xFFFD, 1};
    cp = (cp << 6) | (b(i + k) & 0x3F);
  }
  return {cp, n};
}

void encode(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Simple case mappings of ASCII, Latin-1 Supplement and Latin Extended-A (U+0100..U+017F).
char32_t to_upper(char32_t c) {
  if (c >= 'a' && c <= 'z') return c - 32;
  if (c >= 0xE0 && c <= 0xFE && c != 0xF7) return c - 32;
  if (c == 0xFF) return 0x178;
  if (c >= 0x100 && c <= 0x17F) {
    if (c == 0x131) return 'I';
    if (c == 0x17F) return 'S';
    if ((c >= 0x100 && c <= 0x137) || (c >= 0x14A && c <= 0x177)) return (c & 1) ? c - 1 : c;
    if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return (c & 1) ? c : c - 1;
  }
  return c;
}

char32_t to_lower(char32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 32;
  if (c == 0x178) return 0xFF;
  if (c >= 0x100 && c <= 0x17F) {
    if (c == 0x130) return c;  // lower-cases to two code points in Python: left as is
    if ((c >= 0x100 && c <= 0x137) || (c >= 0x14A && c <= 0x177)) return (c & 1) ? c : c + 1;
    if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return (c & 1) ? c + 1 : c;
  }
  return c;
}

// re.sub(OPEN \s* ([^CLOSE]*?) \s* CLOSE, OPEN \1 CLOSE, s): every OPEN that has a CLOSE after
// it, up to the first such CLOSE, loses the whitespace just inside both delimiters; the scan
// continues after the CLOSE.
std::string strip_inside(std::string_view s, char open, char close) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] == open) {
      const size_t q = s.find(close, i + 1);
      if (q != std::string_view::npos) {
        out += open;
        out += strip(s.substr(i + 1, q - i - 1));
        out += close;
        i = q + 1;
        continue;
      }
    }
    out += s[i++];
  }
  return out;
}

}  // namespace

bool is_space(char32_t c) {
  return (c >= 0x9 && c <= 0xD) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

size_t length(std::string_view s) {
  size_t n = 0;
  for (size_t i = 0; i < s.size(); i += decode(s, i).second) ++n;
  return n;
}

size_t leading_space_bytes(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto [cp, n] = decode(s, i);
    if (!is_space(cp)) break;
    i += n;
  }
  return i;
}

size_t trailing_space_bytes(std::string_view s) {
  // Walk forward (UTF-8 is only decodable that way), remembering where the last non-space ends.
  size_t end = 0;
  for (size_t i = 0; i < s.size();) {
    auto [cp, n] = decode(s, i);
    i += n;
    if (!is_space(cp)) end = i;
  }
  return s.size() - end;
}

std::string lstrip(std::string_view s) { return std::string(s.substr(leading_space_bytes(s))); }
std::string rstrip(std::string_view s) { return std::string(s.substr(0, s.size() - trailing_space_bytes(s))); }
std::string strip(std::string_view s) { return lstrip(rstrip(s)); }

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  if (from.empty()) return std::string(s);
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  for (size_t j; (j = s.find(from, i)) != std::string_view::npos; i = j + from.size()) {
    out.append(s.substr(i, j - i));
    out.append(to);
  }
  out.append(s.substr(i));
  return out;
}

size_t count_words(std::string_view s) {
  size_t runs = 0;
  bool in_space = false;
  for (size_t i = 0; i < s.size();) {
    auto [cp, n] = decode(s, i);
    i += n;
    const bool sp = is_space(cp);
    if (sp && !in_space) ++runs;
    in_space = sp;
  }
  return runs + 1;
}

std::string capitalize(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  bool first = true;
  for (size_t i = 0; i < s.size();) {
    auto [cp, n] = decode(s, i);
    if (cp == 0xFFFD && n == 1 && static_cast<unsigned char>(s[i]) >= 0x80) {
      out += s[i];  // an invalid byte passes through unchanged
    } else {
      encode(out, first ? to_upper(cp) : to_lower(cp));
    }
    first = false;
    i += n;
  }
  return out;
}

std::string join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i) out.append(sep);
    out.append(parts[i]);
  }
  return out;
}

std::vector<std::string> split(std::string_view s, std::string_view sep) {
  std::vector<std::string> out;
  size_t i = 0;
  for (size_t j; (j = s.find(sep, i)) != std::string_view::npos; i = j + sep.size())
    out.emplace_back(s.substr(i, j - i));
  out.emplace_back(s.substr(i));
  return out;
}

std::string hellaswag_preprocess(std::string_view in) {
  std::string s = replace_all(strip(in), " [title]", ". ");
  // re.sub("\\[.*?\\]", "", s): '.' does not match a newline.
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] == '[') {
      const size_t q = s.find_first_of("]\n", i + 1);
      if (q != std::string::npos && s[q] == ']') {
        i = q + 1;
        continue;
      }
    }
    out += s[i++];
  }
  return replace_all(out, "  ", " ");
}

std::string wikitext_detokenize(std::string_view in) {
  std::string s = replace_all(in, "s '", "s'");
  // re.sub(r"/' [0-9]/", r"/'[0-9]/", s): a literal replacement (the pattern's quirk, kept).
  {
    std::string out;
    size_t i = 0;
    for (size_t j; (j = s.find("/' ", i)) != std::string::npos;) {
      if (j + 4 < s.size() && s[j + 3] >= '0' && s[j + 3] <= '9' && s[j + 4] == '/') {
        out.append(s, i, j - i);
        out += "/'[0-9]/";
        i = j + 5;
      } else {
        out.append(s, i, j + 1 - i);
        i = j + 1;
      }
    }
    out.append(s, i, std::string::npos);
    s = std::move(out);
  }
  s = replace_all(s, " @-@ ", "-");
  s = replace_all(s, " @,@ ", ",");
  s = replace_all(s, " @.@ ", ".");
  s = replace_all(s, " : ", ": ");
  s = replace_all(s, " ; ", "; ");
  s = replace_all(s, " . ", ". ");
  s = replace_all(s, " ! ", "! ");
  s = replace_all(s, " ? ", "? ");
  s = replace_all(s, " , ", ", ");
  s = strip_inside(s, '(', ')');
  s = strip_inside(s, '[', ']');
  s = strip_inside(s, '{', '}');
  s = strip_inside(s, '"', '"');
  s = strip_inside(s, '\'', '\'');
  s = replace_all(s, "= = = =", "====");
  s = replace_all(s, "= = =", "===");
  s = replace_all(s, "= =", "==");
  s = replace_all(s, " \xC2\xB0 ", "\xC2\xB0");  // " ° " -> "°"
  s = replace_all(s, " \n", "\n");
  s = replace_all(s, "\n ", "\n");
  s = replace_all(s, " N ", " 1 ");
  s = replace_all(s, " 's", "'s");
  return s;
}

}  // namespace bt::text

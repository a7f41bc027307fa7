// Hugging Face byte-level BPE (bpe_tokenizer.h): tokenizer.json parsing, added-token splitting,
// ICU normalization, PCRE2 pre-tokenization, rank-ordered merges, decoding.
#include "data/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/utf8.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <deque>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "data/sha256.h"
#include "data/shard.h"
#include "data/utf8.h"

namespace bt {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// GPT-2's reversible byte -> character table: printable Latin-1 bytes map to themselves, the other
// 68 bytes to U+0100.. in byte order. Returns the UTF-8 of each byte's character.
std::array<std::string, 256> byte_level_alphabet() {
  std::array<std::string, 256> out;
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const int cp = printable ? b : 256 + n++;
    char buf[4];
    int len = 0;
    U8_APPEND_UNSAFE(buf, len, cp);
    out[size_t(b)] = std::string(buf, size_t(len));
  }
  return out;
}

// The GPT-2 pre-tokenizer pattern that HF's ByteLevel pre-tokenizer applies when use_regex is on.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ---- PCRE2 -------------------------------------------------------------------------------------

// HF runs its regexes with Oniguruma, whose \s is Unicode's White_Space property; PCRE2's \s (with
// UCP) also matches U+180E MONGOLIAN VOWEL SEPARATOR, which stopped being a space in Unicode 6.3.
// So \s and \S become the explicit property (found by comparing every code point with the Python
// package; tests/data/test_bpe_tokenizer.py keeps U+180E in its samples).
std::string onig_compatible(const std::string& p) {
  std::string out;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == '\\' && i + 1 < p.size()) {
      const char c = p[i + 1];
      if (c == 's') out += "\\p{White_Space}";
      else if (c == 'S') out += "\\P{White_Space}";
      else out += p.substr(i, 2);
      ++i;
      continue;
    }
    out.push_back(p[i]);
  }
  return out;
}

class Regex {
 public:
  Regex(const std::string& given, const std::string& what) {
    const std::string pattern = onig_compatible(given);
    int err = 0;
    PCRE2_SIZE off = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &off, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      BT_FAIL(what, ": cannot compile the pre-tokenizer regex at offset ", off, " (", reinterpret_cast<char*>(msg),
              ")");
    }
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // f(begin, end) for every match, left to right (empty matches skip one character).
  template <class F>
  void for_each_match(std::string_view s, const std::string& what, F&& f) const {
    struct Tls {
      pcre2_match_data* md = nullptr;
      pcre2_match_context* mc = nullptr;
      pcre2_jit_stack* js = nullptr;
      ~Tls() {
        pcre2_match_data_free(md);
        pcre2_match_context_free(mc);
        pcre2_jit_stack_free(js);
      }
    };
    thread_local Tls tls;
    if (!tls.md) {
      tls.md = pcre2_match_data_create(16, nullptr);
      tls.mc = pcre2_match_context_create(nullptr);
      tls.js = pcre2_jit_stack_create(64 << 10, 64 << 20, nullptr);
      pcre2_jit_stack_assign(tls.mc, nullptr, tls.js);
    }
    const auto* subj = reinterpret_cast<PCRE2_SPTR>(s.data());
    PCRE2_SIZE at = 0;
    while (at < s.size()) {
      int rc = jit_ ? pcre2_jit_match(code_, subj, s.size(), at, PCRE2_NO_UTF_CHECK, tls.md, tls.mc) : -1;
      if (!jit_ || rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(code_, subj, s.size(), at, PCRE2_NO_UTF_CHECK, tls.md, tls.mc);
      if (rc == PCRE2_ERROR_NOMATCH) return;
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        BT_FAIL(what, ": pre-tokenizer regex failed (", reinterpret_cast<char*>(msg), ")");
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(tls.md);
      const size_t b = ov[0], e = ov[1];
      if (e > b) {
        f(b, e);
        at = e;
      } else {
        at = b + std::max(1, utf8_seq_len(s, b));
      }
    }
  }

 private:
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

// ---- tokenizer.json pieces ---------------------------------------------------------------------

struct AddedToken {
  int32_t id;
  std::string content;
  bool special, single_word, lstrip, rstrip, normalized;
};

// Leftmost-longest matching of a set of added tokens, through a byte trie.
class AddedMatcher {
 public:
  void add(const AddedToken* t) {
    if (t->content.empty()) return;
    if (nodes_.empty()) nodes_.emplace_back();
    int n = 0;
    for (char c : t->content) {
      int next = -1;
      for (const auto& [b, k] : nodes_[size_t(n)].children)
        if (b == static_cast<uint8_t>(c)) next = k;
      if (next < 0) {
        next = int(nodes_.size());
        nodes_[size_t(n)].children.push_back({static_cast<uint8_t>(c), next});
        nodes_.emplace_back();
      }
      n = next;
    }
    if (!nodes_[size_t(n)].token) nodes_[size_t(n)].token = t;  // the first of equal contents wins
    first_[static_cast<uint8_t>(t->content[0])] = 1;
  }
  bool empty() const { return nodes_.empty(); }
  // Calls text(begin, end) for the gaps and token(t, begin, end) for the matches, in order.
  template <class FT, class FA>
  void split(std::string_view s, FT&& text, FA&& token) const {
    size_t start = 0;  // end of the last match
    for (size_t i = 0; i < s.size(); ++i) {
      if (!first_[static_cast<uint8_t>(s[i])]) continue;
      const AddedToken* hit = nullptr;
      for (size_t j = i, n = 0; j < s.size(); ++j) {  // the longest token starting at i
        int next = -1;
        for (const auto& [b, k] : nodes_[n].children)
          if (b == static_cast<uint8_t>(s[j])) next = k;
        if (next < 0) break;
        n = size_t(next);
        if (nodes_[n].token) hit = nodes_[n].token;
      }
      if (!hit) continue;
      size_t b = i, e = i + hit->content.size();
      if (hit->single_word && ((b > 0 && word_char_before(s, b)) || (e < s.size() && word_char_at(s, e)))) continue;
      if (hit->lstrip)
        while (b > start && is_space_before(s, b)) b -= prev_len(s, b);
      if (hit->rstrip)
        while (e < s.size() && is_space_at(s, e)) e += size_t(std::max(1, utf8_seq_len(s, e)));
      if (b > start) text(start, b);
      token(hit, b, e);
      start = e;
      i = e - 1;
    }
    if (start < s.size()) text(start, s.size());
  }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int>> children;
    const AddedToken* token = nullptr;
  };
  static UChar32 cp_at(std::string_view s, size_t i) {
    UChar32 c;
    int32_t k = int32_t(i);
    U8_NEXT(reinterpret_cast<const uint8_t*>(s.data()), k, int32_t(s.size()), c);
    return c;
  }
  static size_t prev_len(std::string_view s, size_t i) {
    size_t k = i - 1;
    while (k > 0 && (static_cast<uint8_t>(s[k]) & 0xC0) == 0x80) --k;
    return i - k;
  }
  static bool is_space_at(std::string_view s, size_t i) { return u_isUWhiteSpace(cp_at(s, i)); }
  static bool is_space_before(std::string_view s, size_t i) { return u_isUWhiteSpace(cp_at(s, i - prev_len(s, i))); }
  static bool word_char(UChar32 c) { return c == '_' || u_isalnum(c); }
  static bool word_char_at(std::string_view s, size_t i) { return word_char(cp_at(s, i)); }
  static bool word_char_before(std::string_view s, size_t i) { return word_char(cp_at(s, i - prev_len(s, i))); }
  std::vector<Node> nodes_;  // [0] is the root
  std::array<char, 256> first_{};
};

enum class NormKind { Nfc, Nfd, Nfkc, Nfkd, Lowercase };

struct PreStage {
  enum Kind { ByteLevel, Split } kind;
  bool add_prefix_space = false;
  bool use_regex = true;
  bool removed = false;            // Split: behaviour Removed (else Isolated)
  std::unique_ptr<Regex> regex;    // ByteLevel with use_regex, or Split with a Regex pattern
  std::string literal;             // Split with a String pattern
};

// HF's Lowercase normalizer maps character by character (Rust's char::to_lowercase): the full
// lowercase mapping without context, so a final capital sigma becomes σ, not ς. That is the
// simple mapping except for U+0130, the one unconditional multi-character lowercase mapping.
std::string lowercase_chars(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const int32_t n = int32_t(s.size());
  for (int32_t i = 0; i < n;) {
    UChar32 c;
    U8_NEXT(p, i, n, c);
    if (c == 0x130) {
      out += "i\xCC\x87";
      continue;
    }
    char buf[4];
    int32_t len = 0;
    U8_APPEND_UNSAFE(buf, len, u_tolower(c));
    out.append(buf, size_t(len));
  }
  return out;
}

std::string read_whole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  BT_CHECK(in, "hf tokenizer '", path, "': cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::atomic<uint64_t> g_instances{0};

struct StrHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// ---- the tokenizer -----------------------------------------------------------------------------

class HfBpeTokenizer final : public Tokenizer {
 public:
  HfBpeTokenizer(std::string file_bytes, const std::string& path)
      : raw_(std::move(file_bytes)), what_("hf tokenizer '" + path + "'"), instance_(++g_instances) {
    json j;
    try {
      j = json::parse(raw_);
    } catch (const json::exception& e) {
      BT_FAIL(what_, ": not valid JSON (", e.what(), ")");
    }
    BT_CHECK(j.is_object() && j.contains("model") && j["model"].is_object(), what_,
             ": no \"model\" object (not a Hugging Face tokenizer.json)");
    load_model(j["model"]);
    load_added(j.value("added_tokens", json::array()));
    load_normalizer(j.value("normalizer", json()));
    load_pre_tokenizer(j.value("pre_tokenizer", json()));
    hash_ = sha256_hex(raw_);
    build_decode_table();
    for (const char* name : {"<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>"}) {
      if (auto a = added_by_content_.find(name); a != added_by_content_.end()) {
        eos_ = a->second;
        break;
      }
      if (auto v = vocab_.find(name); v != vocab_.end()) {
        eos_ = v->second;
        break;
      }
    }
    BT_CHECK(eos_ >= 0, what_, ": no EOS token (<|endoftext|>, </s>, <eos> or <|end_of_text|>) in its vocabulary");
  }

  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 4);
    std::string repaired;
    if (!utf8_valid(text)) {
      repaired = utf8_repair(text);
      text = repaired;
    }
    auto normalized_part = [&](std::string_view piece) {
      std::string norm;
      std::string_view s = normalize(piece, norm);
      if (norm_added_.empty()) {
        pre_tokenize_and_bpe(s, out);
        return;
      }
      norm_added_.split(
          s, [&](size_t b, size_t e) { pre_tokenize_and_bpe(s.substr(b, e - b), out); },
          [&](const AddedToken* t, size_t, size_t) { out.push_back(t->id); });
    };
    if (raw_added_.empty()) {
      normalized_part(text);
    } else {
      raw_added_.split(
          text, [&](size_t b, size_t e) { normalized_part(text.substr(b, e - b)); },
          [&](const AddedToken* t, size_t, size_t) { out.push_back(t->id); });
    }
    return out;
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t id : ids)
      if (id >= 0 && id < vocab_size_ && !skip_[size_t(id)]) s += pieces_[size_t(id)];
    return s;
  }
  int vocab_size() const override { return vocab_size_; }
  int eos_id() const override { return eos_; }
  std::string name() const override { return "hf:" + hash_; }
  std::string kind() const override { return "hf"; }
  void save_to_dir(const std::string& dir) const override {
    write_file_atomic((fs::path(dir) / kHfTokenizerFile).string(), raw_);
    const json j = {{"kind", kind()}, {"name", name()}, {"vocab_size", vocab_size_}, {"eos_id", eos_},
                    {"model", kHfTokenizerFile}};
    write_file_atomic((fs::path(dir) / kTokenizerJsonFile).string(), j.dump(2) + "\n");
  }

 private:
  // ---- loading ----
  void load_model(const json& m) {
    const std::string type = m.value("type", std::string("BPE"));
    BT_CHECK(type == "BPE", what_, ": model type '", type, "' is not supported (only byte-level BPE)");
    BT_CHECK(!m.contains("dropout") || m["dropout"].is_null() || m["dropout"].get<double>() == 0.0, what_,
             ": BPE dropout is set; it makes encoding random (remove it for data preparation)");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
      BT_CHECK(!m.contains(k) || m[k].is_null() || m[k].get<std::string>().empty(), what_, ": model.", k,
               " is not supported (GPT-style byte-level BPE has none)");
    byte_fallback_ = m.value("byte_fallback", false);
    ignore_merges_ = m.value("ignore_merges", false);
    fuse_unk_ = m.value("fuse_unk", false);
    BT_CHECK(m.contains("vocab") && m["vocab"].is_object(), what_, ": model.vocab is missing");
    for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
      BT_CHECK(it.value().is_number_integer() && it.value().get<int64_t>() >= 0 &&
                   it.value().get<int64_t>() < (int64_t(1) << 31),
               what_, ": vocab entry '", it.key(), "' has no valid id");
      const int32_t id = it.value().get<int32_t>();
      vocab_[it.key()] = id;
      vocab_size_ = std::max(vocab_size_, id + 1);
    }
    if (m.contains("unk_token") && m["unk_token"].is_string()) {
      auto u = vocab_.find(m["unk_token"].get<std::string>());
      BT_CHECK(u != vocab_.end(), what_, ": unk_token '", m["unk_token"].get<std::string>(), "' is not in the vocab");
      unk_ = u->second;
    }
    const json& merges = m.value("merges", json::array());
    uint32_t rank = 0;
    for (const json& e : merges) {
      std::string a, b;
      if (e.is_string()) {
        const std::string s = e.get<std::string>();
        const size_t sp = s.find(' ', 1);
        BT_CHECK(sp != std::string::npos, what_, ": merge '", s, "' is not two pieces separated by a space");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else {
        BT_CHECK(e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string(), what_,
                 ": merge ", rank, " is neither \"a b\" nor [\"a\", \"b\"]");
        a = e[0].get<std::string>();
        b = e[1].get<std::string>();
      }
      auto ia = vocab_.find(a), ib = vocab_.find(b), ic = vocab_.find(a + b);
      BT_CHECK(ia != vocab_.end() && ib != vocab_.end() && ic != vocab_.end(), what_, ": merge ", rank, " ('", a,
               "' + '", b, "') uses a piece that is not in the vocab");
      merges_.emplace(key(ia->second, ib->second), Merge{rank, ic->second});  // the first (lowest) rank wins
      ++rank;
    }
    const auto alphabet = byte_level_alphabet();
    for (int b = 0; b < 256; ++b) {
      auto it = vocab_.find(alphabet[size_t(b)]);
      byte_id_[size_t(b)] = it == vocab_.end() ? -1 : it->second;
      char hex[8];
      std::snprintf(hex, sizeof hex, "<0x%02X>", b);
      auto f = vocab_.find(hex);
      fallback_id_[size_t(b)] = f == vocab_.end() ? -1 : f->second;
    }
  }

  void load_added(const json& arr) {
    BT_CHECK(arr.is_array(), what_, ": added_tokens is not a list");
    added_.reserve(arr.size());  // stable addresses for the matchers
    for (const json& a : arr) {
      BT_CHECK(a.is_object() && a.contains("id") && a.contains("content"), what_, ": malformed added token");
      AddedToken t{a["id"].get<int32_t>(), a["content"].get<std::string>(), a.value("special", false),
                   a.value("single_word", false), a.value("lstrip", false), a.value("rstrip", false),
                   a.value("normalized", !a.value("special", false))};
      BT_CHECK(t.id >= 0, what_, ": added token '", t.content, "' has a negative id");
      added_.push_back(t);
      vocab_size_ = std::max(vocab_size_, t.id + 1);
    }
    for (const AddedToken& t : added_) {
      (t.normalized ? norm_added_ : raw_added_).add(&t);
      added_by_content_[t.content] = t.id;
    }
  }

  void load_normalizer(const json& n) {
    if (n.is_null()) return;
    const std::string type = n.value("type", std::string());
    if (type == "Sequence") {
      for (const json& x : n.value("normalizers", json::array())) load_normalizer(x);
      return;
    }
    if (type == "NFC") norms_.push_back(NormKind::Nfc);
    else if (type == "NFD") norms_.push_back(NormKind::Nfd);
    else if (type == "NFKC") norms_.push_back(NormKind::Nfkc);
    else if (type == "NFKD") norms_.push_back(NormKind::Nfkd);
    else if (type == "Lowercase") norms_.push_back(NormKind::Lowercase);
    else BT_FAIL(what_, ": normalizer '", type, "' is not supported (NFC, NFD, NFKC, NFKD, Lowercase, Sequence)");
  }

  void load_pre_tokenizer(const json& p) {
    if (p.is_null()) return;
    const std::string type = p.value("type", std::string());
    if (type == "Sequence") {
      for (const json& x : p.value("pretokenizers", json::array())) load_pre_tokenizer(x);
      return;
    }
    PreStage st;
    if (type == "ByteLevel") {
      st.kind = PreStage::ByteLevel;
      st.add_prefix_space = p.value("add_prefix_space", false);
      st.use_regex = p.value("use_regex", true);
      if (st.use_regex) st.regex = std::make_unique<Regex>(kGpt2Pattern, what_);
      byte_level_ = true;
    } else if (type == "Split") {
      st.kind = PreStage::Split;
      const std::string beh = p.value("behavior", std::string("Isolated"));
      BT_CHECK(beh == "Isolated" || beh == "Removed", what_, ": Split behaviour '", beh,
               "' is not supported (Isolated, Removed)");
      st.removed = beh == "Removed";
      BT_CHECK(!p.value("invert", false), what_, ": Split with invert = true is not supported");
      const json& pat = p.value("pattern", json());
      if (pat.contains("Regex")) st.regex = std::make_unique<Regex>(pat["Regex"].get<std::string>(), what_);
      else if (pat.contains("String")) st.literal = pat["String"].get<std::string>();
      else BT_FAIL(what_, ": Split without a Regex or String pattern");
    } else {
      BT_FAIL(what_, ": pre-tokenizer '", type, "' is not supported (ByteLevel, Split, Sequence)");
    }
    stages_.push_back(std::move(st));
  }

  void build_decode_table() {
    pieces_.assign(size_t(vocab_size_), std::string());
    skip_.assign(size_t(vocab_size_), 1);  // ids without a piece decode to nothing
    std::unordered_map<std::string, int> char_byte;
    const auto alphabet = byte_level_alphabet();
    for (int b = 0; b < 256; ++b) char_byte[alphabet[size_t(b)]] = b;
    for (const auto& [tok, id] : vocab_) {
      skip_[size_t(id)] = 0;
      if (byte_fallback_ && tok.size() == 6 && tok.rfind("<0x", 0) == 0 && tok[5] == '>') {
        pieces_[size_t(id)] = std::string(1, char(std::stoi(tok.substr(3, 2), nullptr, 16)));
        continue;
      }
      pieces_[size_t(id)] = to_bytes(tok, char_byte);
    }
    for (const AddedToken& t : added_) {
      pieces_[size_t(t.id)] = to_bytes(t.content, char_byte);
      skip_[size_t(t.id)] = t.special ? 1 : 0;
    }
  }
  // A piece's bytes: through the byte-level alphabet when every character is in it, else as is.
  std::string to_bytes(const std::string& tok, const std::unordered_map<std::string, int>& char_byte) const {
    if (!byte_level_) return tok;
    std::string out;
    for (size_t i = 0; i < tok.size();) {
      const int n = std::max(1, utf8_seq_len(tok, i));
      auto it = char_byte.find(tok.substr(i, size_t(n)));
      if (it == char_byte.end()) return tok;
      out.push_back(char(it->second));
      i += size_t(n);
    }
    return out;
  }

  // ---- encoding ----
  std::string_view normalize(std::string_view s, std::string& buf) const {
    if (norms_.empty()) return s;
    bool ascii = true;
    for (char c : s)
      if (static_cast<uint8_t>(c) >= 0x80) {
        ascii = false;
        break;
      }
    std::string cur(s);
    for (NormKind k : norms_) {
      if (k == NormKind::Lowercase) {
        if (ascii) {
          for (char& c : cur)
            if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
        } else {
          cur = lowercase_chars(cur);
        }
        continue;
      }
      if (ascii) continue;  // ASCII is invariant under every normalization form
      UErrorCode st = U_ZERO_ERROR;
      const icu::Normalizer2* n = k == NormKind::Nfc    ? icu::Normalizer2::getNFCInstance(st)
                                  : k == NormKind::Nfd  ? icu::Normalizer2::getNFDInstance(st)
                                  : k == NormKind::Nfkc ? icu::Normalizer2::getNFKCInstance(st)
                                                        : icu::Normalizer2::getNFKDInstance(st);
      BT_CHECK(U_SUCCESS(st), what_, ": ICU normalizer unavailable (", u_errorName(st), ")");
      if (n->isNormalizedUTF8(cur, st) && U_SUCCESS(st)) continue;
      st = U_ZERO_ERROR;
      std::string o;
      icu::StringByteSink<std::string> sink(&o);
      n->normalizeUTF8(0, cur, sink, nullptr, st);
      BT_CHECK(U_SUCCESS(st), what_, ": normalization failed (", u_errorName(st), ")");
      cur = std::move(o);
    }
    buf = std::move(cur);
    return buf;
  }

  void pre_tokenize_and_bpe(std::string_view s, std::vector<int32_t>& out) const {
    if (s.empty()) return;
    if (stages_.empty()) {
      bpe_word(s, out);
      return;
    }
    // The common case (GPT-2, GPT-NeoX): one ByteLevel stage with its regex, no prefix space.
    if (stages_.size() == 1 && stages_[0].kind == PreStage::ByteLevel && stages_[0].regex &&
        !stages_[0].add_prefix_space) {
      stages_[0].regex->for_each_match(s, what_, [&](size_t b, size_t e) { bpe_word(s.substr(b, e - b), out); });
      return;
    }
    std::deque<std::string> storage;
    std::vector<std::string_view> cur{s}, next;
    for (const PreStage& st : stages_) {
      next.clear();
      for (std::string_view p : cur) {
        if (st.kind == PreStage::ByteLevel && st.add_prefix_space && (p.empty() || p[0] != ' '))
        {
          std::string& t = storage.emplace_back(1, ' ');
          t.append(p);
          p = t;
        }
        auto keep = [&](size_t b, size_t e) {
          if (e > b) next.push_back(p.substr(b, e - b));
        };
        if (st.regex || !st.literal.empty()) {
          size_t last = 0;
          auto match = [&](size_t b, size_t e) {
            if (b > last) keep(last, b);
            if (!st.removed) keep(b, e);
            last = e;
          };
          if (st.regex) {
            st.regex->for_each_match(p, what_, match);
          } else {
            for (size_t at = p.find(st.literal); at != std::string_view::npos; at = p.find(st.literal, last))
              match(at, at + st.literal.size());
          }
          if (last < p.size()) keep(last, p.size());
        } else {
          keep(0, p.size());
        }
      }
      std::swap(cur, next);
    }
    for (std::string_view p : cur) bpe_word(p, out);
  }

  static uint64_t key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  struct Merge {
    uint32_t rank;
    int32_t id;
  };

  // Initial symbols of a word: its bytes in the byte-level alphabet, or its characters (then
  // byte fallback or unk for characters outside the vocabulary).
  void initial_symbols(std::string_view w, std::vector<int32_t>& syms) const {
    auto missing = [&](std::string_view ch) {
      bool all = byte_fallback_;
      for (char c : ch) all = all && fallback_id_[static_cast<uint8_t>(c)] >= 0;
      if (all) {
        for (char c : ch) syms.push_back(fallback_id_[static_cast<uint8_t>(c)]);
      } else if (unk_ >= 0 && !(fuse_unk_ && !syms.empty() && syms.back() == unk_)) {
        syms.push_back(unk_);
      }
    };
    if (byte_level_) {
      for (size_t i = 0; i < w.size(); ++i) {
        const int32_t id = byte_id_[static_cast<uint8_t>(w[i])];
        if (id >= 0) syms.push_back(id);
        else missing(w.substr(i, 1));
      }
      return;
    }
    for (size_t i = 0; i < w.size();) {
      const size_t n = size_t(std::max(1, utf8_seq_len(w, i)));
      auto it = vocab_.find(w.substr(i, n));
      if (it != vocab_.end()) syms.push_back(it->second);
      else missing(w.substr(i, n));
      i += n;
    }
  }

  std::string byte_level_string(std::string_view w) const {
    static const auto alphabet = byte_level_alphabet();
    std::string s;
    for (char c : w) s += alphabet[static_cast<uint8_t>(c)];
    return s;
  }

  void bpe_word(std::string_view w, std::vector<int32_t>& out) const {
    struct Cache {
      uint64_t owner = 0;
      std::unordered_map<std::string, std::vector<int32_t>, StrHash, std::equal_to<>> map;
    };
    thread_local Cache cache;
    if (cache.owner != instance_) {
      cache.map.clear();
      cache.owner = instance_;
    }
    if (auto it = cache.map.find(w); it != cache.map.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
    std::vector<int32_t> syms;
    if (ignore_merges_) {
      auto it = vocab_.find(byte_level_ ? byte_level_string(w) : std::string(w));
      if (it != vocab_.end()) syms.push_back(it->second);
    }
    if (syms.empty()) {
      initial_symbols(w, syms);
      merge(syms);
    }
    out.insert(out.end(), syms.begin(), syms.end());
    if (w.size() <= 256) {
      if (cache.map.size() >= 65536) cache.map.clear();
      cache.map.emplace(std::string(w), std::move(syms));
    }
  }

  // Applies the merges: always the pair of lowest rank, the leftmost among equals.
  void merge(std::vector<int32_t>& syms) const {
    const size_t n = syms.size();
    if (n < 2) return;
    std::vector<int32_t> next(n), prev(n);
    std::vector<char> alive(n, 1);
    for (size_t i = 0; i < n; ++i) {
      next[i] = i + 1 < n ? int32_t(i + 1) : -1;
      prev[i] = int32_t(i) - 1;
    }
    using Cand = std::pair<uint64_t, int32_t>;  // (rank << 32 | position, merged id)
    std::priority_queue<Cand, std::vector<Cand>, std::greater<>> heap;
    auto push = [&](int32_t i) {
      if (i < 0 || next[size_t(i)] < 0) return;
      auto it = merges_.find(key(syms[size_t(i)], syms[size_t(next[size_t(i)])]));
      if (it != merges_.end()) heap.push({(uint64_t(it->second.rank) << 32) | uint32_t(i), it->second.id});
    };
    for (size_t i = 0; i + 1 < n; ++i) push(int32_t(i));
    while (!heap.empty()) {
      const auto [rk, id] = heap.top();
      heap.pop();
      const int32_t i = int32_t(rk & 0xffffffffu);
      const int32_t j = next[size_t(i)];
      if (!alive[size_t(i)] || j < 0) continue;
      auto it = merges_.find(key(syms[size_t(i)], syms[size_t(j)]));
      if (it == merges_.end() || it->second.rank != uint32_t(rk >> 32)) continue;  // stale
      syms[size_t(i)] = id;
      alive[size_t(j)] = 0;
      next[size_t(i)] = next[size_t(j)];
      if (next[size_t(i)] >= 0) prev[size_t(next[size_t(i)])] = i;
      push(prev[size_t(i)]);
      push(i);
    }
    size_t k = 0;
    for (int32_t i = 0; i >= 0; i = next[size_t(i)]) syms[k++] = syms[size_t(i)];
    syms.resize(k);
  }

  std::string raw_, what_, hash_;
  uint64_t instance_;
  std::unordered_map<std::string, int32_t, StrHash, std::equal_to<>> vocab_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::vector<AddedToken> added_;
  std::unordered_map<std::string, int32_t> added_by_content_;
  AddedMatcher raw_added_, norm_added_;
  std::vector<NormKind> norms_;
  std::vector<PreStage> stages_;
  std::array<int32_t, 256> byte_id_{}, fallback_id_{};
  std::vector<std::string> pieces_;
  std::vector<char> skip_;
  int32_t vocab_size_ = 0, eos_ = -1, unk_ = -1;
  bool byte_level_ = false, byte_fallback_ = false, ignore_merges_ = false, fuse_unk_ = false;
};

}  // namespace

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path) {
  std::string file = path;
  if (fs::is_directory(path)) file = (fs::path(path) / "tokenizer.json").string();  // Hugging Face's name
  BT_CHECK(fs::is_regular_file(file), "hf tokenizer '", file, "': no such file (give a tokenizer.json or its directory)");
  return std::make_unique<HfBpeTokenizer>(read_whole(file), file);
}

}  // namespace bt

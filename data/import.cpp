// Token-file import (import.h): planning units, converting documents in parallel, resuming,
// gathering the val split, and the manifest.
#include "data/import.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <thread>
#include <type_traits>

#include "core/checksum.h"
#include "core/error.h"
#include "core/log.h"
#include "core/progress.h"
#include "core/rng.h"
#include "core/timer.h"
#include "data/manifest.h"
#include "data/output_dir.h"
#include "data/sha256.h"
#include "data/shard.h"
#include "data/shard_append.h"
#include "data/tokenizer.h"

namespace bt {
namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace {

constexpr const char* kWork = ".import";
constexpr uint64_t kPiece = uint64_t(1) << 20;   // tokens converted at a time in streamed documents
// Longer documents are hashed, then written, in pieces (constant memory); tests lower the limit
// with BT_IMPORT_BIG_DOC_TOKENS to send every document through that path.
uint64_t big_doc_tokens() {
  static const uint64_t v = [] {
    const char* e = std::getenv("BT_IMPORT_BIG_DOC_TOKENS");
    return e && std::atoll(e) > 0 ? uint64_t(std::atoll(e)) : uint64_t(1) << 24;
  }();
  return v;
}

// ---- what the shards will say ----------------------------------------------------------------

struct Target {
  int64_t vocab = 0, eos = -1;
  std::string tokenizer;           // name recorded in the shards
  std::unique_ptr<Tokenizer> tok;  // null for ids:VOCAB
  bool wide() const { return vocab > 65536; }
};

Target make_target(const ImportOptions& opt) {
  Target t;
  BT_CHECK(!opt.tokenizer.empty(), "--format ", token_format_name(opt.format),
           " needs --tokenizer: the tokenizer the token ids were made with (e.g. hf:20B_tokenizer.json for the "
           "Pythia data, hf:gpt2/tokenizer.json for nanoGPT / llm.c GPT-2 data), or ids:VOCAB --eos-id N for "
           "ids without a tokenizer");
  if (opt.tokenizer.rfind("ids:", 0) == 0) {
    const std::string v = opt.tokenizer.substr(4);
    size_t used = 0;
    long long n = 0;
    try {
      n = std::stoll(v, &used);
    } catch (...) {
      used = 0;
    }
    BT_CHECK(!v.empty() && used == v.size() && n >= 2 && n <= (int64_t(1) << 31), "tokenizer '", opt.tokenizer,
             "': expected ids:<vocab size>, e.g. ids:50304");
    BT_CHECK(opt.eos_id >= 0, "tokenizer '", opt.tokenizer, "' has no EOS: give --eos-id");
    t.vocab = n;
    t.tokenizer = "ids:" + std::to_string(n);
  } else {
    BT_CHECK(opt.tokenizer.rfind("train-spm:", 0) != 0,
             "--tokenizer train-spm:N trains on text; token files need the tokenizer they were made with");
    t.tok = make_tokenizer(opt.tokenizer);
    t.vocab = t.tok->vocab_size();
    t.tokenizer = t.tok->name();
  }
  t.eos = opt.eos_id >= 0 ? opt.eos_id : t.tok->eos_id();
  BT_CHECK(t.eos < t.vocab, "--eos-id ", t.eos, " is outside the vocabulary of ", t.vocab, " (tokenizer ",
           t.tokenizer, ")");
  return t;
}

// ---- the source ---------------------------------------------------------------------------------

// A run of tokens of one input: elements [first, first + n) of its token array (megatron: of the
// whole .bin). seq: the megatron sequence (for errors), -1 otherwise.
struct Piece {
  const TokenFile* file;
  uint64_t first, n;
  int64_t seq;
};

struct Source {
  std::vector<TokenFile> files;
  bool indexed = true;         // documents listed up front (megatron; whole-file documents)
  bool megatron = false;
  bool eos_present = false;    // megatron --doc-eos present
  std::vector<uint64_t> file_docs;   // indexed: first global document of each file, [files + 1]
  std::vector<uint64_t> seg_begin;   // split: first stream position of each file, [files + 1]
  uint64_t total = 0;          // source tokens used (after max_tokens)
  uint64_t docs = 0;           // indexed: documents used
  uint64_t last_len = 0;       // indexed: length of the last used document (cut by max_tokens)
  int64_t eos = 0;

  // Indexed: file and element range of global document g (before the max_tokens cut).
  Piece doc(uint64_t g) const {
    const size_t f = size_t(std::upper_bound(file_docs.begin(), file_docs.end(), g) - file_docs.begin()) - 1;
    const TokenFile& t = files[f];
    const uint64_t j = g - file_docs[f];
    if (!megatron) return {&t, 0, t.tokens, -1};
    const int32_t len = load_le<int32_t>(t.sizes + 4 * j);
    const int64_t ptr = load_le<int64_t>(t.pointers + 8 * j);
    return {&t, uint64_t(ptr) / uint64_t(dtype_bytes(t.dtype)), uint64_t(len), int64_t(j)};
  }
  uint64_t doc_len(uint64_t g) const { return g + 1 == docs ? last_len : doc(g).n; }
};

template <class S>
S element(const TokenFile& f, uint64_t i) {
  return reinterpret_cast<const S*>(f.data)[i];
}

int64_t token_at(const TokenFile& f, uint64_t i) {
  switch (f.dtype) {
    case TokenDType::U8: return element<uint8_t>(f, i);
    case TokenDType::I8: return element<int8_t>(f, i);
    case TokenDType::U16: return element<uint16_t>(f, i);
    case TokenDType::I16: return element<int16_t>(f, i);
    case TokenDType::I32: return element<int32_t>(f, i);
    case TokenDType::U32: return element<uint32_t>(f, i);
    case TokenDType::I64: return element<int64_t>(f, i);
    case TokenDType::U64: return int64_t(element<uint64_t>(f, i));
  }
  return -1;
}

// First i in [a, b) with src[i] == eos, or b. Blocks of 64 are tested without branches (vectorized).
template <class S>
uint64_t find_value(const S* src, uint64_t a, uint64_t b, int64_t eos) {
  if (eos < int64_t(std::numeric_limits<S>::min()) || eos > int64_t(std::numeric_limits<S>::max())) return b;
  const S e = S(eos);
  uint64_t i = a;
  for (; i < b && (i & 63); ++i)
    if (src[i] == e) return i;
  for (; i + 64 <= b; i += 64) {
    int any = 0;
    for (int j = 0; j < 64; ++j) any |= src[i + j] == e;
    if (any)
      for (int j = 0;; ++j)
        if (src[i + j] == e) return i + j;
  }
  for (; i < b; ++i)
    if (src[i] == e) return i;
  return b;
}

uint64_t find_in_file(const TokenFile& f, uint64_t a, uint64_t b, int64_t eos) {
  switch (f.dtype) {
    case TokenDType::U8: return find_value(reinterpret_cast<const uint8_t*>(f.data), a, b, eos);
    case TokenDType::I8: return find_value(reinterpret_cast<const int8_t*>(f.data), a, b, eos);
    case TokenDType::U16: return find_value(reinterpret_cast<const uint16_t*>(f.data), a, b, eos);
    case TokenDType::I16: return find_value(reinterpret_cast<const int16_t*>(f.data), a, b, eos);
    case TokenDType::I32: return find_value(reinterpret_cast<const int32_t*>(f.data), a, b, eos);
    case TokenDType::U32: return find_value(reinterpret_cast<const uint32_t*>(f.data), a, b, eos);
    case TokenDType::I64: return find_value(reinterpret_cast<const int64_t*>(f.data), a, b, eos);
    case TokenDType::U64: return find_value(reinterpret_cast<const uint64_t*>(f.data), a, b, eos);
  }
  return b;
}

// Split mode: the first EOS at stream position in [p, limit), or s.total when there is none.
uint64_t find_eos(const Source& s, uint64_t p, uint64_t limit) {
  limit = std::min(limit, s.total);
  size_t f = size_t(std::upper_bound(s.seg_begin.begin(), s.seg_begin.end(), p) - s.seg_begin.begin()) - 1;
  for (; p < limit && f < s.files.size(); ++f) {
    const uint64_t a = p - s.seg_begin[f], b = std::min(s.seg_begin[f + 1], limit) - s.seg_begin[f];
    const uint64_t i = find_in_file(s.files[f], a, b, s.eos);
    if (i < b) return s.seg_begin[f] + i;
    p = s.seg_begin[f + 1];
  }
  return s.total;
}

// Split mode: the pieces of stream range [a, b).
void stream_pieces(const Source& s, uint64_t a, uint64_t b, std::vector<Piece>& out) {
  out.clear();
  size_t f = size_t(std::upper_bound(s.seg_begin.begin(), s.seg_begin.end(), a) - s.seg_begin.begin()) - 1;
  while (a < b) {
    while (s.seg_begin[f + 1] <= a) ++f;
    const uint64_t e = std::min(b, s.seg_begin[f + 1]);
    out.push_back({&s.files[f], a - s.seg_begin[f], e - a, -1});
    a = e;
  }
}

// ---- conversion ---------------------------------------------------------------------------------

// Copies src[0..n) to out as T; returns the index of the first id outside [0, vocab), or n.
template <class S, class T>
uint64_t convert_run(const S* src, uint64_t n, T* out, uint64_t vocab) {
  if constexpr (std::is_signed_v<S>) {
    S lo = 0, hi = 0;
    for (uint64_t i = 0; i < n; ++i) {
      const S v = src[i];
      lo = std::min(lo, v);
      hi = std::max(hi, v);
      out[i] = T(v);
    }
    if (lo >= 0 && uint64_t(hi) < vocab) return n;
    for (uint64_t i = 0; i < n; ++i)
      if (src[i] < 0 || uint64_t(src[i]) >= vocab) return i;
  } else {
    S hi = 0;
    for (uint64_t i = 0; i < n; ++i) {
      const S v = src[i];
      hi = std::max(hi, v);
      out[i] = T(v);
    }
    if (uint64_t(hi) < vocab) return n;
    for (uint64_t i = 0; i < n; ++i)
      if (uint64_t(src[i]) >= vocab) return i;
  }
  return n;
}

template <class T>
uint64_t convert_piece(const Piece& p, uint64_t off, uint64_t n, T* out, uint64_t vocab) {
  const uint8_t* d = p.file->data;
  const uint64_t i = p.first + off;
  switch (p.file->dtype) {
    case TokenDType::U8: return convert_run(reinterpret_cast<const uint8_t*>(d) + i, n, out, vocab);
    case TokenDType::I8: return convert_run(reinterpret_cast<const int8_t*>(d) + i, n, out, vocab);
    case TokenDType::U16: return convert_run(reinterpret_cast<const uint16_t*>(d) + i, n, out, vocab);
    case TokenDType::I16: return convert_run(reinterpret_cast<const int16_t*>(d) + i, n, out, vocab);
    case TokenDType::I32: return convert_run(reinterpret_cast<const int32_t*>(d) + i, n, out, vocab);
    case TokenDType::U32: return convert_run(reinterpret_cast<const uint32_t*>(d) + i, n, out, vocab);
    case TokenDType::I64: return convert_run(reinterpret_cast<const int64_t*>(d) + i, n, out, vocab);
    case TokenDType::U64: return convert_run(reinterpret_cast<const uint64_t*>(d) + i, n, out, vocab);
  }
  return 0;
}

[[noreturn]] void bad_token(const Piece& p, uint64_t at, const Target& tg) {
  const int64_t v = token_at(*p.file, p.first + at);
  if (p.seq >= 0)
    BT_FAIL("megatron dataset '", p.file->path, "': token id ", v, " in sequence ", p.seq, " (position ", at,
            ") is outside the vocabulary of ", tg.vocab, " of tokenizer ", tg.tokenizer,
            "; the data was made with another tokenizer (check --tokenizer)");
  BT_FAIL(p.file->what(), ": token id ", v, " at position ", p.first + at, " is outside the vocabulary of ",
          tg.vocab, " of tokenizer ", tg.tokenizer, "; the data was made with another tokenizer (check --tokenizer)");
}

uint64_t val_seed(uint64_t seed) {
  uint64_t x = seed ^ hash_name("import_val_split");
  return splitmix64(x);
}

bool is_val(uint64_t h, double fraction) {
  if (fraction <= 0) return false;
  uint64_t x = h;
  return double(splitmix64(x) >> 11) * 0x1.0p-53 < fraction;
}

// ---- the val documents of one unit: raw tokens + document starts ----------------------------------

class ValPart {
 public:
  ValPart(std::string base, int width) : base_(std::move(base)), width_(width) {}
  ~ValPart() {
    close_files();
    if (!done_) {
      std::remove((base_ + ".tokens.tmp").c_str());
      std::remove((base_ + ".offsets.tmp").c_str());
    }
  }
  void start_doc() {
    open_files();
    write(off_, &tokens_, 8);
    ++docs_;
  }
  void add(const void* p, uint64_t n) {
    write(tok_, p, n * uint64_t(width_));
    tokens_ += n;
  }
  uint64_t tokens() const { return tokens_; }
  uint64_t documents() const { return docs_; }
  void finish() {  // always leaves both files (possibly empty) under their final names
    open_files();
    for (FILE* f : {tok_, off_}) BT_CHECK(std::fflush(f) == 0, "cannot write '", base_, ".*' (disk full?)");
    close_files();
    for (const char* ext : {".tokens", ".offsets"}) {
      const std::string fin = base_ + ext, tmp = fin + ".tmp";
      fsync_path(tmp);
      BT_CHECK(std::rename(tmp.c_str(), fin.c_str()) == 0, "cannot rename '", tmp, "': ", std::strerror(errno));
    }
    done_ = true;
  }

 private:
  void open_files() {
    if (tok_) return;
    tok_ = std::fopen((base_ + ".tokens.tmp").c_str(), "wb");
    off_ = std::fopen((base_ + ".offsets.tmp").c_str(), "wb");
    BT_CHECK(tok_ && off_, "cannot create '", base_, ".tokens.tmp': ", std::strerror(errno));
  }
  void close_files() {
    if (tok_) std::fclose(tok_);
    if (off_) std::fclose(off_);
    tok_ = off_ = nullptr;
  }
  void write(FILE* f, const void* p, uint64_t bytes) {
    BT_CHECK(std::fwrite(p, 1, bytes, f) == bytes, "cannot write '", base_, ".*' (disk full?)");
  }
  std::string base_;
  int width_;
  FILE* tok_ = nullptr;
  FILE* off_ = nullptr;
  uint64_t tokens_ = 0, docs_ = 0;
  bool done_ = false;
};

// ---- units --------------------------------------------------------------------------------------

struct Unit {
  uint64_t begin = 0, end = 0;  // indexed: global documents; split: nominal stream positions
  uint64_t source_tokens = 0;   // indexed only (split: end - begin, approximately)
};

struct UnitResult {
  json state;
  uint64_t source = 0;
};

struct Stopped {};  // a worker gives up because another one failed

struct Shared {
  const Source& src;
  const Target& tg;
  const ImportOptions& opt;
  fs::path work;
  uint64_t vseed = 0;
  std::atomic<uint64_t> done{0};     // source tokens processed (progress)
  std::atomic<bool> stop{false};     // another worker failed
};

std::string unit_name(uint64_t k, const char* what) {
  char b[64];
  std::snprintf(b, sizeof b, "%s-%06llu", what, (unsigned long long)k);
  return b;
}

// Converts and routes documents of one unit.
template <class T>
class UnitWriter {
 public:
  UnitWriter(Shared& sh, uint64_t k)
      : sh_(sh), k_(k), train_((sh.work / (unit_name(k, "train") + ".h5")).string(),
                                ShardMeta{sh.tg.vocab, sh.tg.eos, sh.tg.tokenizer}),
        val_((sh.work / unit_name(k, "val")).string(), int(sizeof(T))) {}

  // One document: the pieces (source tokens, in order), then EOS when append_eos.
  void emit(const std::vector<Piece>& pieces, bool append_eos) {
    uint64_t n = append_eos ? 1 : 0;
    for (const Piece& p : pieces) n += p.n;
    if (n == 0) return;
    if (n <= big_doc_tokens()) {
      T* out = train_.template reserve<T>(n);
      uint64_t at = 0;
      for (const Piece& p : pieces) {
        const uint64_t bad = convert_piece(p, 0, p.n, out + at, uint64_t(sh_.tg.vocab));
        if (bad < p.n) bad_token(p, bad, sh_.tg);
        at += p.n;
      }
      if (append_eos) out[at] = T(sh_.tg.eos);
      if (is_val(XXH3_64bits_withSeed(out, n * sizeof(T), sh_.vseed), sh_.opt.val_fraction)) {
        val_.start_doc();
        val_.add(out, n);
        train_.cancel();
      } else {
        train_.commit_doc(n);
      }
    } else {
      emit_big(pieces, append_eos);
    }
    pending_ += n - (append_eos ? 1 : 0);
    if (pending_ >= kPiece) publish();
  }

  void publish() {
    sh_.done.fetch_add(pending_, std::memory_order_relaxed);
    source_ += pending_;
    pending_ = 0;
  }

  UnitResult finish() {
    publish();
    UnitResult r;
    r.source = source_;
    val_.finish();
    json train = nullptr;
    if (train_.documents() > 0) {
      const uint64_t bytes = train_.finish();
      train = {{"file", fs::path(train_.path()).filename().string()},
               {"tokens", train_.tokens()},
               {"documents", train_.documents()},
               {"bytes", bytes},
               {"sha256", sha256_file(train_.path())},
               {"xxh3", xxh3_file(train_.path())}};
    }
    r.state = {{"unit", k_},
               {"source_tokens", source_},
               {"dropped_empty", dropped_},
               {"train", train},
               {"val", {{"tokens", val_.tokens()}, {"documents", val_.documents()}}}};
    return r;
  }
  void dropped() { ++dropped_; }

 private:
  // Documents longer than big_doc_tokens(): pass 1 hashes them piece by piece, pass 2 writes them.
  template <class F>
  void for_each_run(const std::vector<Piece>& pieces, bool append_eos, F&& f) {
    scratch_.resize(kPiece);
    for (const Piece& p : pieces)
      for (uint64_t off = 0; off < p.n; off += kPiece) {
        const uint64_t c = std::min(kPiece, p.n - off);
        const uint64_t bad = convert_piece(p, off, c, scratch_.data(), uint64_t(sh_.tg.vocab));
        if (bad < c) bad_token(p, off + bad, sh_.tg);
        f(scratch_.data(), c);
      }
    if (append_eos) {
      scratch_[0] = T(sh_.tg.eos);
      f(scratch_.data(), 1);
    }
  }
  void emit_big(const std::vector<Piece>& pieces, bool append_eos) {
    std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> st(XXH3_createState(), XXH3_freeState);
    BT_CHECK(st && XXH3_64bits_reset_withSeed(st.get(), sh_.vseed) == XXH_OK, "XXH3: cannot initialize");
    for_each_run(pieces, append_eos, [&](const T* p, uint64_t c) { XXH3_64bits_update(st.get(), p, c * sizeof(T)); });
    if (is_val(XXH3_64bits_digest(st.get()), sh_.opt.val_fraction)) {
      val_.start_doc();
      for_each_run(pieces, append_eos, [&](const T* p, uint64_t c) { val_.add(p, c); });
    } else {
      train_.start_doc();
      for_each_run(pieces, append_eos, [&](const T* p, uint64_t c) {
        std::memcpy(train_.template reserve<T>(c), p, c * sizeof(T));
        train_.commit_tokens(c);
      });
    }
  }

  Shared& sh_;
  uint64_t k_;
  ShardAppender train_;
  ValPart val_;
  std::vector<T> scratch_;
  uint64_t pending_ = 0, source_ = 0, dropped_ = 0;
};

// Drops the mapped pages of [lo, hi) bytes of a file from this process (they stay in the page
// cache), so the resident size stays at what the running units touch.
void release_pages(const TokenFile& f, uint64_t lo, uint64_t hi) {
  const uint64_t page = 4096, a = lo / page * page, b = std::min<uint64_t>((hi + page - 1) / page * page, f.bin->size());
  if (b > a) ::madvise(const_cast<uint8_t*>(f.bin->data()) + a, b - a, MADV_DONTNEED);
}

// The byte ranges of each file that a unit read.
struct Touched {
  std::vector<std::pair<uint64_t, uint64_t>> range;  // [files]
  explicit Touched(size_t n) : range(n, {UINT64_MAX, 0}) {}
  void add(const Source& s, const Piece& p) {
    const size_t f = size_t(p.file - s.files.data());
    const uint64_t w = uint64_t(dtype_bytes(p.file->dtype)), base = uint64_t(p.file->data - p.file->bin->data());
    range[f].first = std::min(range[f].first, base + p.first * w);
    range[f].second = std::max(range[f].second, base + (p.first + p.n) * w);
  }
  void release(const Source& s) const {
    for (size_t f = 0; f < range.size(); ++f)
      if (range[f].second > range[f].first) release_pages(s.files[f], range[f].first, range[f].second);
  }
};

template <class T>
UnitResult process_unit(Shared& sh, uint64_t k, const Unit& u) {
  const Source& s = sh.src;
  UnitWriter<T> w(sh, k);
  std::vector<Piece> pieces;
  Touched touched(s.files.size());
  if (s.indexed) {
    for (uint64_t g = u.begin; g < u.end; ++g) {
      if ((g & 1023) == 0 && sh.stop.load(std::memory_order_relaxed)) throw Stopped{};
      Piece p = s.doc(g);
      const bool cut = g + 1 == s.docs && s.last_len < p.n;
      p.n = s.doc_len(g);
      bool append = !s.eos_present || cut;
      if (s.eos_present && !cut) {
        BT_CHECK(p.n > 0 && token_at(*p.file, p.first + p.n - 1) == s.eos, "megatron dataset '", p.file->path,
                 "': sequence ", p.seq, " does not end with EOS id ", s.eos,
                 " (--doc-eos present); files made without --append-eod need --doc-eos append");
        append = false;
      }
      pieces.assign(1, p);
      touched.add(s, p);
      w.emit(pieces, append);
    }
  } else {
    const uint64_t lim = std::min(u.end, s.total);
    uint64_t a = u.begin;
    if (a > 0) {  // the first document that starts at or after the nominal start, if one starts in the unit
      const uint64_t e = find_eos(s, a - 1, lim - 1);  // only this unit's range: no quadratic rescans
      a = e < s.total ? e + 1 : lim;
    }
    while (a < lim) {
      if (sh.stop.load(std::memory_order_relaxed)) throw Stopped{};
      const uint64_t e = find_eos(s, a, s.total);
      const uint64_t b = e < s.total ? e + 1 : s.total;
      if (e == a) {  // a lone EOS: an empty document
        w.dropped();
      } else {
        stream_pieces(s, a, b, pieces);
        for (const Piece& p : pieces) touched.add(s, p);
        w.emit(pieces, e >= s.total);
      }
      a = b;
    }
  }
  touched.release(s);
  return w.finish();
}

// ---- the output directory -------------------------------------------------------------------------

// Returns true when an interrupted import with the same plan can be resumed.
bool prepare_dir(const ImportOptions& opt, const json& plan) {
  std::error_code ec;
  const fs::path out(opt.out), work = out / kWork;
  bool resume = false;
  if (!opt.force && !fs::exists(out / kManifestFile, ec) && fs::exists(work / "plan.json", ec)) {
    try {
      std::ifstream in(work / "plan.json");
      resume = json::parse(in) == plan;
    } catch (...) {
      resume = false;
    }
  }
  // Leftovers: everything ours, except (when resuming) finished units and moved train shards.
  open_output_dir(opt.out, opt.force, [&](const std::string& name) {
    return resume && name.rfind("train-", 0) == 0 && !name.ends_with(".tmp");
  });
  mark_output_unfinished(opt.out);
  if (!resume) {
    fs::remove_all(work, ec);
    BT_CHECK(!ec, "cannot remove '", work.string(), "': ", ec.message());
    fs::create_directories(work, ec);
    BT_CHECK(!ec, "cannot create '", work.string(), "': ", ec.message());
    write_file_atomic((work / "plan.json").string(), plan.dump(1) + "\n");
  } else {
    for (const auto& e : fs::directory_iterator(work, ec))
      if (e.path().extension() == ".tmp") fs::remove(e.path(), ec);
  }
  return resume;
}

json input_identity(const std::string& p) {
  struct stat st {};
  BT_CHECK(::stat(p.c_str(), &st) == 0, "'", p, "': ", std::strerror(errno));
  return {{"path", fs::absolute(p).lexically_normal().string()},
          {"bytes", uint64_t(st.st_size)},
          {"mtime_ns", int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec}};
}

// Reads a val part's documents in order and calls f(tokens, count, length of the document when
// this piece starts one, else 0) in pieces of at most kPiece tokens.
template <class T, class F>
void read_val_part(const fs::path& base, F&& f) {
  const std::string tp = base.string() + ".tokens", op = base.string() + ".offsets";
  std::unique_ptr<FILE, int (*)(FILE*)> tf(std::fopen(tp.c_str(), "rb"), std::fclose);
  std::unique_ptr<FILE, int (*)(FILE*)> of(std::fopen(op.c_str(), "rb"), std::fclose);
  BT_CHECK(tf && of, "cannot open '", tp, "' (the interrupted run's state is damaged; rerun with --force)");
  const uint64_t ntok = fs::file_size(tp) / sizeof(T), ndoc = fs::file_size(op) / 8;
  std::vector<uint64_t> offs(ndoc);
  BT_CHECK(std::fread(offs.data(), 8, ndoc, of.get()) == ndoc, "cannot read '", op, "'");
  std::vector<T> buf(kPiece);
  for (uint64_t d = 0; d < ndoc; ++d) {
    const uint64_t len = (d + 1 < ndoc ? offs[d + 1] : ntok) - offs[d];
    for (uint64_t at = 0; at < len;) {
      const uint64_t c = std::min<uint64_t>(len - at, kPiece);
      BT_CHECK(std::fread(buf.data(), sizeof(T), c, tf.get()) == c, "cannot read '", tp, "'");
      f(buf.data(), c, at == 0 ? len : 0);
      at += c;
    }
  }
}

// Gathers the val parts of `units` (in order) into PREFIX-00000.h5 ... of about shard_tokens.
template <class T>
std::vector<json> write_gathered(const fs::path& out, const fs::path& work, const std::vector<uint64_t>& units,
                                 const char* prefix, const Target& tg, uint64_t shard_tokens) {
  std::vector<json> shards;
  std::unique_ptr<ShardAppender> cur;
  auto close = [&] {
    if (!cur) return;
    const uint64_t bytes = cur->finish();
    shards.push_back({{"file", fs::path(cur->path()).filename().string()},
                      {"split", prefix},
                      {"tokens", cur->tokens()},
                      {"documents", cur->documents()},
                      {"bytes", bytes},
                      {"sha256", sha256_file(cur->path())},
                      {"xxh3", xxh3_file(cur->path())}});
    cur.reset();
  };
  for (uint64_t k : units) {
    read_val_part<T>(work / unit_name(k, "val"), [&](const T* p, uint64_t c, uint64_t len) {
      if (len > 0) {
        if (cur && cur->tokens() > 0 && cur->tokens() + len > shard_tokens) close();
        if (!cur) {
          char name[64];
          std::snprintf(name, sizeof name, "%s-%05d.h5", prefix, int(shards.size()));
          cur = std::make_unique<ShardAppender>((out / name).string(), ShardMeta{tg.vocab, tg.eos, tg.tokenizer});
        }
        cur->start_doc();
      }
      std::memcpy(cur->template reserve<T>(c), p, c * sizeof(T));
      cur->commit_tokens(c);
    });
  }
  close();
  return shards;
}

}  // namespace

ImportSummary run_import(const ImportOptions& opt) {
  // ---- validate everything before touching the output ----
  BT_CHECK(!opt.inputs.empty(), "bt prepare: no --input given");
  BT_CHECK(!opt.out.empty(), "bt prepare: --out DIR is required");
  BT_CHECK(opt.val_fraction >= 0 && opt.val_fraction < 1, "--val-fraction must be in [0, 1), got ", opt.val_fraction);
  BT_CHECK(opt.shard_tokens >= 1, "--shard-tokens must be >= 1");
  BT_CHECK(opt.doc_eos == "append" || opt.doc_eos == "present", "--doc-eos must be append or present, got '",
           opt.doc_eos, "'");
  const bool megatron = opt.format == TokenFileFormat::Megatron;
  BT_CHECK(!(megatron && opt.split_on_eos), "--split-on-eos applies to nanogpt, npy and llmc inputs; megatron "
           "datasets list their documents in the index");
  BT_CHECK(megatron || opt.doc_eos == "append", "--doc-eos applies to megatron inputs (use --split-on-eos for ",
           token_format_name(opt.format), ")");
  for (const auto& p : opt.inputs) BT_CHECK(p != "-", "--format ", token_format_name(opt.format), " cannot read stdin");
  Target tg = make_target(opt);

  Source src;
  src.megatron = megatron;
  src.eos_present = megatron && opt.doc_eos == "present";
  src.indexed = megatron || !opt.split_on_eos;
  src.eos = tg.eos;
  json inputs = json::array();
  for (const auto& p : opt.inputs) {
    src.files.push_back(open_token_file(p, opt.format));
    const TokenFile& t = src.files.back();
    json id = {{"format", token_format_name(t.format)}, {"data", input_identity(t.path)}};
    if (megatron) id["index"] = input_identity(t.idx_path);
    inputs.push_back(id);
  }

  // ---- plan the units ----
  std::vector<Unit> units;
  const uint64_t S = opt.shard_tokens, cap = opt.max_tokens > 0 ? opt.max_tokens : UINT64_MAX;
  if (src.indexed) {
    src.file_docs.push_back(0);
    for (const TokenFile& t : src.files) src.file_docs.push_back(src.file_docs.back() + (megatron ? t.sequences : 1));
    const uint64_t ndocs = src.file_docs.back();
    Unit u;
    uint64_t unit_tokens = 0;
    for (uint64_t g = 0; g < ndocs && src.total < cap; ++g) {
      uint64_t len = src.doc(g).n;
      const bool cut = src.total + len > cap;
      if (cut) len = cap - src.total;
      const uint64_t out_len = len + (src.eos_present && !cut ? 0 : 1);
      if (unit_tokens > 0 && unit_tokens + out_len > S) {
        u.end = g;
        units.push_back(u);
        u = Unit{g, g, 0};
        unit_tokens = 0;
      }
      unit_tokens += out_len;
      u.source_tokens += len;
      src.total += len;
      src.docs = g + 1;
      src.last_len = len;
    }
    if (src.docs > u.begin) {
      u.end = src.docs;
      units.push_back(u);
    }
  } else {
    src.seg_begin.push_back(0);
    for (const TokenFile& t : src.files) src.seg_begin.push_back(src.seg_begin.back() + t.tokens);
    src.total = std::min(src.seg_begin.back(), cap);
    for (uint64_t a = 0; a < src.total; a += S) units.push_back(Unit{a, std::min(a + S, src.total), std::min(S, src.total - a)});
  }
  BT_CHECK(src.total > 0, "empty input: ", opt.inputs.size() == 1 ? "'" + opt.inputs[0] + "' holds" : "the inputs hold",
           " no tokens");

  const json plan = {{"format", "bt-import-plan"},
                     {"version", 1},
                     {"inputs", inputs},
                     {"tokenizer", tg.tokenizer},
                     {"vocab_size", tg.vocab},
                     {"eos_id", tg.eos},
                     {"split_on_eos", opt.split_on_eos},
                     {"doc_eos", opt.doc_eos},
                     {"val_fraction", opt.val_fraction},
                     {"seed", opt.seed},
                     {"shard_tokens", opt.shard_tokens},
                     {"max_tokens", opt.max_tokens},
                     {"units", units.size()}};
  const bool resume = prepare_dir(opt, plan);
  const fs::path out(opt.out), work = out / kWork;

  // ---- the units, in parallel; finished ones (resume) are skipped ----
  std::vector<json> states(units.size());
  std::vector<char> todo(units.size(), 1);
  ImportSummary sum;
  sum.tokenizer = tg.tokenizer;
  sum.vocab_size = int(tg.vocab);
  sum.units = units.size();
  uint64_t done_before = 0;
  if (resume)
    for (size_t k = 0; k < units.size(); ++k) {
      const fs::path sp = work / (unit_name(k, "unit") + ".json");
      if (!fs::exists(sp)) continue;
      try {
        std::ifstream in(sp);
        states[k] = json::parse(in);  // its train shard is checked when gathered
        todo[k] = 0;
        done_before += states[k]["source_tokens"].get<uint64_t>();
        ++sum.units_resumed;
      } catch (...) {
        states[k] = json();
      }
    }
  if (resume)
    log_info("prepare: resuming '{}': {} of {} units already done", opt.out, sum.units_resumed, units.size());

  Shared sh{src, tg, opt, work};
  sh.vseed = val_seed(opt.seed);
  sh.done = done_before;
  const int hw = int(std::min(8u, std::max(1u, std::thread::hardware_concurrency())));
  const int nthreads = std::max(1, std::min<int>(opt.threads > 0 ? opt.threads : hw,
                                                 int(std::count(todo.begin(), todo.end(), 1))));
  std::atomic<size_t> next{0};
  std::atomic<int> running{nthreads};
  std::mutex err_mu;
  std::exception_ptr first_error;
  // Test hook: exit at once, like a kill, after this many units of this run (0: never).
  const char* hook = std::getenv("BT_IMPORT_EXIT_AFTER_UNITS");
  const long exit_after = hook ? std::atol(hook) : 0;
  std::atomic<long> finished{0};
  Timer timer;
  {
    ProgressBar bar("prepare", "tokens", src.total, {.enabled = opt.progress, .done_before = done_before});
    std::vector<std::thread> pool;
    for (int t = 0; t < nthreads; ++t)
      pool.emplace_back([&] {
        try {
          for (size_t k; (k = next.fetch_add(1)) < units.size();) {
            if (!todo[k]) continue;
            if (sh.stop.load()) break;
            UnitResult r = tg.wide() ? process_unit<uint32_t>(sh, k, units[k]) : process_unit<uint16_t>(sh, k, units[k]);
            write_file_atomic((work / (unit_name(k, "unit") + ".json")).string(), r.state.dump() + "\n");
            states[k] = std::move(r.state);
            if (exit_after > 0 && ++finished >= exit_after) std::_Exit(137);  // tests: a kill after N units
          }
        } catch (const Stopped&) {
        } catch (...) {
          std::lock_guard<std::mutex> lock(err_mu);
          if (!first_error) first_error = std::current_exception();
          sh.stop = true;
        }
        --running;
      });
    while (running.load() > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      bar.update(sh.done.load());
    }
    for (auto& th : pool) th.join();
    if (first_error) std::rethrow_exception(first_error);
    bar.finish(sh.done.load());
  }
  sum.seconds = timer.seconds();
  sum.source_tokens = src.total;

  // ---- gather: train shards renamed in order, val parts merged, tokenizer files, manifest ----
  std::vector<json> shards;
  std::vector<uint64_t> val_units;
  uint64_t train_docs = 0, val_docs = 0;
  for (size_t k = 0; k < units.size(); ++k) {
    const json& st = states[k];
    sum.dropped_empty += st["dropped_empty"].get<uint64_t>();
    if (!st["train"].is_null()) train_docs += st["train"]["documents"].get<uint64_t>();
    val_docs += st["val"]["documents"].get<uint64_t>();
    val_units.push_back(k);
  }
  BT_CHECK(train_docs + val_docs > 0, "empty input: no documents in ", opt.inputs.front(),
           opt.inputs.size() > 1 ? ", ..." : "");
  for (size_t k = 0; k < units.size(); ++k) {
    const json& tr = states[k]["train"];
    if (tr.is_null()) continue;
    char name[64];
    std::snprintf(name, sizeof name, "train-%05d.h5", int(shards.size()));
    const fs::path from = work / tr["file"].get<std::string>(), to = out / name;
    if (fs::exists(from)) {
      fs::rename(from, to);
    } else {
      BT_CHECK(fs::exists(to) && fs::file_size(to) == tr["bytes"].get<uint64_t>(), "resuming '", opt.out, "': ",
               from.string(), " is missing; the interrupted run's state is damaged, rerun with --force");
    }
    json e = {{"file", name}, {"split", "train"}};
    for (const char* f : {"tokens", "documents", "bytes", "sha256"}) e[f] = tr[f];
    if (tr.contains("xxh3")) e["xxh3"] = tr["xxh3"];  // the checksum the loaders verify (data/manifest.h)
    shards.push_back(e);
  }
  if (!shards.empty()) fsync_path(out.string());
  std::vector<json> val_shards;
  if (train_docs == 0) {
    log_warn("all {} documents fell into the val split; using them for train instead (no val shard)", val_docs);
    val_shards = tg.wide() ? write_gathered<uint32_t>(out, work, val_units, "train", tg, S)
                           : write_gathered<uint16_t>(out, work, val_units, "train", tg, S);
    shards = val_shards;
    val_shards.clear();
  } else if (val_docs > 0) {
    val_shards = tg.wide() ? write_gathered<uint32_t>(out, work, val_units, "val", tg, S)
                           : write_gathered<uint16_t>(out, work, val_units, "val", tg, S);
  } else if (opt.val_fraction > 0) {
    log_warn("no document fell into the val split (--val-fraction {} of {} documents); no val shard written",
             opt.val_fraction, train_docs);
  }
  for (auto& v : val_shards) shards.push_back(v);
  for (const auto& s : shards) {
    const bool tr = s["split"] == "train";
    (tr ? sum.train_tokens : sum.val_tokens) += s["tokens"].get<uint64_t>();
    (tr ? sum.train_documents : sum.val_documents) += s["documents"].get<uint64_t>();
    (tr ? sum.train_shards : sum.val_shards) += 1;
  }
  sum.tokens_per_second = double(src.total - done_before) / std::max(sum.seconds, 1e-9);

  if (tg.tok) {
    tg.tok->save_to_dir(opt.out);
  } else {
    const json j = {{"kind", "ids"}, {"name", tg.tokenizer}, {"vocab_size", tg.vocab}, {"eos_id", tg.eos}};
    write_file_atomic((out / kTokenizerJsonFile).string(), j.dump(2) + "\n");
  }
  std::string eos_rule;
  if (megatron)
    eos_rule = src.eos_present ? "each sequence ends with EOS in the source (checked)"
                               : "EOS appended after every sequence (the source holds none between documents)";
  else if (opt.split_on_eos)
    eos_rule = "documents end at each EOS of the source; lone EOS tokens dropped; EOS appended to a last document without one";
  else
    eos_rule = "each input file is one document, EOS appended";
  const ManifestHeader header{tg.tokenizer, tg.tok ? tg.tok->kind() : std::string("ids"), tg.vocab, tg.eos,
                              opt.inputs, token_format_name(opt.format), opt.val_fraction, opt.seed,
                              opt.shard_tokens};
  write_manifest(opt.out, header,
                 {{"import",
                   {{"split_on_eos", opt.split_on_eos},
                    {"doc_eos", megatron ? opt.doc_eos : std::string("")},
                    {"eos", eos_rule},
                    {"max_tokens", opt.max_tokens},
                    {"source_tokens", src.total},
                    {"dropped_empty", sum.dropped_empty}}}},
                 shards);
  std::error_code ec;
  fs::remove_all(work, ec);
  return sum;
}

}  // namespace bt

// MemorySource and ShardSource: the padded token stream, in memory or read lazily from shards.
#include "data/token_source.h"

#include <sys/resource.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/rng.h"
#include "data/shard.h"

namespace bt {

namespace {
uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}
}  // namespace

int first_block_pads(uint64_t seed, uint64_t doc, int block_length) {
  if (block_length <= 1) return 0;
  uint64_t h = mix64(seed ^ hash_name("random_pad_first_block")) ^ (doc * 0x9e3779b97f4a7c15ull);
  return int(mix64(h) % uint64_t(block_length));
}

PadSpec PadSpec::make(int block_length, bool random_first, bool boundary, int pad_id, uint64_t seed) {
  PadSpec p;
  p.block_length = block_length;
  p.random_pad_first_block = random_first;
  p.pad_to_block_boundary = boundary;
  if (!p.active()) return PadSpec{};
  p.pad_id = pad_id >= 0 ? pad_id : -1;
  p.seed = seed;
  return p;
}

// ---- MemorySource ------------------------------------------------------------------------------

MemorySource::MemorySource(std::shared_ptr<const TokenStream> stream, const PadSpec& pad,
                           int model_vocab_size) {
  BT_CHECK(stream, "data loader: no token stream");
  const TokenStream& s = *stream;
  BT_CHECK(!s.tokens.empty(), "data: the token stream is empty");
  BT_CHECK(s.eos_id >= 0, "data: the token stream has no EOS id");
  const int64_t vocab = model_vocab_size > 0 ? model_vocab_size : s.vocab_size;
  if (model_vocab_size > 0)
    BT_CHECK(s.vocab_size <= model_vocab_size, "data: tokenizer ", s.tokenizer, " has vocab_size ",
             s.vocab_size, " > model.vocab_size ", model_vocab_size,
             "; raise model.vocab_size or prepare the data with a smaller tokenizer");
  {
    const auto it = std::max_element(s.tokens.begin(), s.tokens.end());
    const auto mn = std::min_element(s.tokens.begin(), s.tokens.end());
    BT_CHECK(*it < vocab, "data: token id ", *it, " at position ", it - s.tokens.begin(),
             " >= vocab size ", vocab, " (the data was prepared for a larger vocabulary)");
    BT_CHECK(*mn >= 0, "data: negative token id ", *mn, " at position ", mn - s.tokens.begin());
  }
  for (size_t i = 0; i < s.doc_offsets.size(); ++i)
    BT_CHECK(s.doc_offsets[i] < s.tokens.size() && (i == 0 ? s.doc_offsets[0] == 0
                                                           : s.doc_offsets[i] > s.doc_offsets[i - 1]),
             "data: document offsets are not increasing from 0 (offset ", i, " = ", s.doc_offsets[i], ")");
  pad_ = pad;
  vocab_size_ = s.vocab_size;
  eos_id_ = s.eos_id;
  tokenizer_ = s.tokenizer;
  stream_ = std::move(stream);
  if (!pad_.active()) {
    tok_ = stream_->tokens.data();
    n_ = stream_->tokens.size();
    return;
  }
  // Pads before document d: first_block_pads(seed, d, L_B); after each EOS
  // (pad_to_block_boundary): up to the next multiple of L_B.
  const int32_t padv = pad_id();
  const uint64_t n = s.tokens.size();
  const uint64_t lb = uint64_t(pad_.block_length);
  const uint64_t ndocs = std::max<uint64_t>(1, s.doc_offsets.size());
  const int per_doc = (pad_.random_pad_first_block ? 1 : 0) + (pad_.pad_to_block_boundary ? 1 : 0);
  std::vector<int32_t>& pt = padded_tok_;
  std::vector<uint8_t>& pm = padded_mask_;
  pt.reserve(n + ndocs * (lb - 1) * uint64_t(per_doc));
  pm.reserve(pt.capacity());
  for (uint64_t d = 0; d < ndocs; ++d) {
    const uint64_t begin = s.doc_offsets.empty() ? 0 : s.doc_offsets[d];
    const uint64_t end = d + 1 < s.doc_offsets.size() ? s.doc_offsets[d + 1] : n;
    if (pad_.random_pad_first_block) {
      const int k = first_block_pads(pad_.seed, d, pad_.block_length);
      pt.insert(pt.end(), k, padv);
      pm.insert(pm.end(), k, 0);
    }
    pt.insert(pt.end(), s.tokens.begin() + int64_t(begin), s.tokens.begin() + int64_t(end));
    pm.insert(pm.end(), end - begin, 1);
    if (pad_.pad_to_block_boundary) {
      const uint64_t k = (lb - pt.size() % lb) % lb;
      pt.insert(pt.end(), k, padv);
      pm.insert(pm.end(), k, 0);
    }
  }
  tok_ = pt.data();
  mask_ = pm.data();
  n_ = pt.size();
}

void MemorySource::read(uint64_t begin, uint64_t n, int32_t* tokens, uint8_t* mask) const {
  BT_CHECK(begin <= n_ && n <= n_ - begin, "data: read of tokens ", begin, "..", begin + n,
           " past the end of the stream (", n_, " tokens)");
  std::memcpy(tokens, tok_ + begin, n * sizeof(int32_t));
  if (mask_)
    std::memcpy(mask, mask_ + begin, n);
  else
    std::memset(mask, 1, n);
}

// ---- ShardSource -------------------------------------------------------------------------------

namespace {
constexpr uint64_t kLow32 = 0xffffffffull;

// Open shard files: up to half the soft descriptor limit (raised to the hard limit first),
// at least 16.
size_t open_file_budget() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return 256;
  if (rl.rlim_cur != RLIM_INFINITY && (rl.rlim_max == RLIM_INFINITY || rl.rlim_cur < rl.rlim_max)) {
    rlimit want = rl;
    want.rlim_cur = rl.rlim_max == RLIM_INFINITY ? std::max<rlim_t>(rl.rlim_cur, 65536) : rl.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &want) == 0) rl = want;
  }
  const uint64_t cur = rl.rlim_cur == RLIM_INFINITY ? 65536 : uint64_t(rl.rlim_cur);
  return size_t(std::max<uint64_t>(16, cur / 2));
}
}  // namespace

ShardSource::ShardSource(const std::string& glob_or_list, int model_vocab_size, const PadSpec& pad,
                         size_t max_open_files, const ShardCheckOptions& check) {
  pad_ = pad;
  max_open_ = max_open_files > 0 ? max_open_files : open_file_budget();
  const std::vector<std::string> paths = expand_shard_list(glob_or_list);
  // Pass 1: attributes and shapes of every shard (no tokens read), as read_shards does.
  std::vector<ShardInfo> infos;
  for (const auto& p : paths) {
    auto f = std::make_unique<ShardFile>(p);
    ShardInfo in = f->info();
    check_shard_fits(infos.empty() ? in : infos.front(), in, model_vocab_size);
    Shard s;
    s.path = p;
    s.tokens = in.tokens;
    s.documents = in.documents;
    s.raw_begin = raw_total_;
    s.doc_begin = docs_total_;
    raw_total_ += in.tokens;
    docs_total_ += in.documents;
    if (open_ < max_open_) {
      s.file = std::move(f);
      ++open_;
    }
    shards_.push_back(std::move(s));
    infos.push_back(std::move(in));
  }
  check_shards_against_manifests(glob_or_list, paths, infos, check);
  BT_CHECK(raw_total_ > 0, "the shards '", glob_or_list, "' hold no tokens");
  vocab_size_ = int(infos.front().vocab_size);
  eos_id_ = int(infos.front().eos_id);
  tokenizer_ = infos.front().tokenizer;

  // Pass 2 (padding options only): index the documents by their padded starts.
  const uint64_t lb = uint64_t(pad_.block_length);
  if (pad_.active()) docs_.reserve(docs_total_);
  for (Shard& s : shards_) {
    s.padded_begin = padded_total_;
    if (!pad_.active()) {
      s.padded_len = s.tokens;
    } else {
      const std::vector<uint64_t> offs = file(s).read_doc_offsets();
      BT_CHECK(s.tokens <= kLow32, "shard '", s.path, "': ", s.tokens,
               " tokens; the lazy loader's padding options need shards below 2^32 tokens (prepare "
               "smaller shards)");
      uint64_t p = 0;
      for (uint64_t d = 0; d < s.documents; ++d) {
        const uint64_t len = (d + 1 < s.documents ? offs[d + 1] : s.tokens) - offs[d];
        docs_.push_back((p << 32) | offs[d]);
        if (pad_.random_pad_first_block) p += uint64_t(first_block_pads(pad_.seed, s.doc_begin + d, pad_.block_length));
        p += len;
        if (pad_.pad_to_block_boundary) p += (lb - p % lb) % lb;
      }
      BT_CHECK(p <= kLow32, "shard '", s.path, "': more than 2^32 tokens after padding; the lazy "
               "loader's padding options need smaller shards");
      s.padded_len = p;
    }
    padded_total_ += s.padded_len;
    padded_begins_.push_back(s.padded_begin);
  }
  if (pad_.active()) {
    const int pv = pad_id();
    BT_CHECK(pv >= 0 && pv < (model_vocab_size > 0 ? model_vocab_size : vocab_size_), "data loader: pad_id ",
             pv, " outside the vocabulary of ", model_vocab_size > 0 ? model_vocab_size : vocab_size_);
  }
}

ShardSource::~ShardSource() = default;

ShardFile& ShardSource::file(const Shard& s) const {
  s.last_use = ++clock_;
  if (s.file) return *s.file;
  if (open_ >= max_open_) {  // close the least recently used open shard
    const Shard* lru = nullptr;
    for (const Shard& o : shards_)
      if (o.file && (!lru || o.last_use < lru->last_use)) lru = &o;
    if (lru) {
      lru->file.reset();
      --open_;
    }
  }
  s.file = std::make_unique<ShardFile>(s.path);
  ++open_;
  return *s.file;
}

void ShardSource::read(uint64_t begin, uint64_t n, int32_t* tokens, uint8_t* mask) const {
  BT_CHECK(begin <= padded_total_ && n <= padded_total_ - begin, "data: read of tokens ", begin, "..",
           begin + n, " past the end of the stream (", padded_total_, " tokens)");
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t pos = begin;
  const uint64_t end = begin + n;
  while (pos < end) {
    // The last shard starting at or before pos (empty shards share their successor's start).
    const size_t si = size_t(std::upper_bound(padded_begins_.begin(), padded_begins_.end(), pos) -
                             padded_begins_.begin()) - 1;
    const Shard& s = shards_[si];
    const uint64_t stop = std::min(end, s.padded_begin + s.padded_len);
    const uint64_t a = pos - s.padded_begin, b = stop - s.padded_begin, o = pos - begin;
    if (!pad_.active()) {
      file(s).read_tokens(a, b - a, tokens + o);
      std::memset(mask + o, 1, b - a);
    } else {
      read_padded(s, a, b, tokens + o, mask + o);
    }
    pos = stop;
  }
}

// Positions [a, b) of shard s's padded stream. A document's padded span is [front pads][its
// tokens][boundary pads]; the real tokens of consecutive documents are consecutive in /tokens,
// so one hyperslab read covers the window.
void ShardSource::read_padded(const Shard& s, uint64_t a, uint64_t b, int32_t* tok, uint8_t* mask) const {
  const uint64_t* E = docs_.data() + s.doc_begin;
  const uint64_t nd = s.documents;
  const int32_t padv = pad_id();
  std::fill(tok, tok + (b - a), padv);
  std::memset(mask, 0, b - a);
  uint64_t d = uint64_t(std::upper_bound(E, E + nd, (a << 32) | kLow32) - E) - 1;
  segs_.clear();  // (window offset, raw start, count) triples
  uint64_t raw_lo = 0, raw_hi = 0;
  for (; d < nd; ++d) {
    const uint64_t ps = E[d] >> 32;
    if (ps >= b) break;
    const uint64_t rs = E[d] & kLow32, re = d + 1 < nd ? (E[d + 1] & kLow32) : s.tokens;
    const uint64_t k = pad_.random_pad_first_block
                           ? uint64_t(first_block_pads(pad_.seed, s.doc_begin + d, pad_.block_length))
                           : 0;
    const uint64_t t0 = std::max(a, ps + k), t1 = std::min(b, ps + k + (re - rs));  // real part in [a, b)
    if (t0 >= t1) continue;
    const uint64_t r0 = rs + (t0 - (ps + k));
    if (segs_.empty()) raw_lo = r0;
    raw_hi = r0 + (t1 - t0);
    segs_.insert(segs_.end(), {t0 - a, r0, t1 - t0});
  }
  if (segs_.empty()) return;
  scratch_.resize(raw_hi - raw_lo);
  file(s).read_tokens(raw_lo, raw_hi - raw_lo, scratch_.data());
  for (size_t i = 0; i < segs_.size(); i += 3) {
    const uint64_t w = segs_[i], r = segs_[i + 1], c = segs_[i + 2];
    std::memcpy(tok + w, scratch_.data() + (r - raw_lo), c * sizeof(int32_t));
    std::memset(mask + w, 1, c);
  }
}

}  // namespace bt

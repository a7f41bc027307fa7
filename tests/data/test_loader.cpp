// The loader: world-size invariance, epoch coverage, exact resume (also across world sizes),
// the padding options, prefetch equivalence, and its one-line errors; the lazy shard source
// gives exactly the batches of the in-memory stream.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <map>
#include <set>

#include "core/error.h"
#include "core/rng.h"
#include "data/loader.h"
#include "data/shard.h"

using namespace bt;

namespace {

// Documents of random length 1..max_len (EOS included), tokens in [0, V-1), EOS = V-1.
std::shared_ptr<TokenStream> make_stream(uint64_t tokens, int vocab, int max_len, uint64_t seed) {
  auto s = std::make_shared<TokenStream>();
  s->vocab_size = vocab;
  s->eos_id = vocab - 1;
  s->tokenizer = "test";
  Rng rng(seed);
  while (s->tokens.size() < tokens) {
    s->doc_offsets.push_back(s->tokens.size());
    const int len = 1 + int(rng.below(uint64_t(max_len)));
    for (int i = 0; i + 1 < len; ++i) s->tokens.push_back(int32_t(rng.below(uint64_t(vocab - 1))));
    s->tokens.push_back(s->eos_id);
  }
  return s;
}

LoaderOptions opts(int L, int G, int micro, int rank = 0, int world = 1) {
  LoaderOptions o;
  o.context_length = L;
  o.global_batch = G;
  o.micro_batch = micro;
  o.rank = rank;
  o.world = world;
  o.seed = 99;
  return o;
}

// All rows of one step of one rank, in order: [rows * L] tokens and mask.
struct Rows {
  std::vector<int32_t> tok;
  std::vector<uint8_t> mask;
  bool operator==(const Rows& o) const { return tok == o.tok && mask == o.mask; }
};
Rows flatten(const StepBatch& b) {
  Rows r;
  for (const auto& m : b.micro) {
    EXPECT_EQ(m.tokens.size(), m.mask.size());
    EXPECT_EQ(m.tokens.size() % size_t(m.rows), 0u);
    r.tok.insert(r.tok.end(), m.tokens.begin(), m.tokens.end());
    r.mask.insert(r.mask.end(), m.mask.begin(), m.mask.end());
  }
  return r;
}

using MakeLoader = std::function<std::unique_ptr<Loader>(const LoaderOptions&)>;

// The global batch of `steps` steps for a given world size: ranks' slices concatenated, for
// any way of making a rank's loader.
std::vector<Rows> global_batches_of(const MakeLoader& make, LoaderOptions base, int world, int steps,
                                    const LoaderState* start = nullptr) {
  std::vector<std::unique_ptr<Loader>> ranks;
  for (int r = 0; r < world; ++r) {
    LoaderOptions o = base;
    o.rank = r;
    o.world = world;
    ranks.push_back(make(o));
    if (start) ranks.back()->set_state(*start);
  }
  std::vector<Rows> out;
  for (int i = 0; i < steps; ++i) {
    Rows all;
    for (auto& l : ranks) {
      Rows r = flatten(l->next());
      all.tok.insert(all.tok.end(), r.tok.begin(), r.tok.end());
      all.mask.insert(all.mask.end(), r.mask.begin(), r.mask.end());
    }
    out.push_back(std::move(all));
  }
  for (auto& l : ranks) EXPECT_EQ(l->state(), ranks.front()->state());
  return out;
}

// The same for the in-memory stream.
std::vector<Rows> global_batches(std::shared_ptr<const TokenStream> s, LoaderOptions base, int world,
                                 int steps, const LoaderState* start = nullptr) {
  return global_batches_of(
      [&](const LoaderOptions& o) {
        auto l = std::make_unique<Loader>(s, o);
        EXPECT_EQ(l->accum(), base.global_batch / (base.micro_batch * world));
        return l;
      },
      base, world, steps, start);
}

}  // namespace

TEST(WindowPermutation, IsABijectionAndDependsOnSeedAndEpoch) {
  for (uint64_t n : {1ull, 2ull, 3ull, 5ull, 17ull, 64ull, 1000ull, 4097ull}) {
    WindowPermutation p(n, 7, 0);
    std::vector<int> seen(n, 0);
    for (uint64_t i = 0; i < n; ++i) {
      ASSERT_LT(p(i), n);
      ++seen[p(i)];
    }
    for (uint64_t i = 0; i < n; ++i) ASSERT_EQ(seen[i], 1) << "n=" << n;
  }
  WindowPermutation a(1000, 7, 0), b(1000, 7, 1), c(1000, 8, 0), a2(1000, 7, 0), id(1000, 7, 0, false);
  int diff_epoch = 0, diff_seed = 0, fixed = 0;
  for (uint64_t i = 0; i < 1000; ++i) {
    EXPECT_EQ(a(i), a2(i));
    EXPECT_EQ(id(i), i);
    diff_epoch += a(i) != b(i);
    diff_seed += a(i) != c(i);
    fixed += a(i) == i;
  }
  EXPECT_GT(diff_epoch, 900);
  EXPECT_GT(diff_seed, 900);
  EXPECT_LT(fixed, 20);
}

TEST(Loader, SameGlobalBatchForAnyWorldSize) {
  auto s = make_stream(20000, 500, 60, 1);
  LoaderOptions o = opts(16, 8, 2);
  auto w1 = global_batches(s, o, 1, 12);
  auto w2 = global_batches(s, o, 2, 12);
  auto w4 = global_batches(s, o, 4, 12);
  o.micro_batch = 1;
  auto w4m1 = global_batches(s, o, 4, 12);  // accum 2 per rank
  ASSERT_EQ(w1.size(), 12u);
  for (int i = 0; i < 12; ++i) {
    EXPECT_EQ(w1[i].tok.size(), 8u * 16u);
    EXPECT_TRUE(w1[i] == w2[i]) << "step " << i;
    EXPECT_TRUE(w1[i] == w4[i]) << "step " << i;
    EXPECT_TRUE(w1[i] == w4m1[i]) << "step " << i;
  }
  EXPECT_FALSE(w1[0] == w1[1]);
}

TEST(Loader, EveryWindowOnceEachEpoch) {
  const int L = 16, G = 8;
  for (uint64_t ntok : {uint64_t(16 * 8 * 25), uint64_t(16 * 8 * 25 + 16 * 5 + 7)}) {
    auto s = make_stream(ntok, 50000, 200, 2);
    s->tokens.resize(ntok);  // exact length; the last document may lose its EOS, harmless here
    Loader l(s, opts(L, G, 4));
    const uint64_t W = ntok / L;
    ASSERT_EQ(l.windows_per_epoch(), W);
    ASSERT_EQ(l.steps_per_epoch(), W / G);
    std::map<std::vector<int32_t>, uint64_t> index;  // window content -> window number
    for (uint64_t w = 0; w < W; ++w)
      index[std::vector<int32_t>(s->tokens.begin() + int64_t(w * L), s->tokens.begin() + int64_t((w + 1) * L))] = w;
    ASSERT_EQ(index.size(), W) << "test stream has duplicate windows";
    std::vector<std::vector<uint64_t>> order(2);
    for (int epoch = 0; epoch < 2; ++epoch) {
      std::vector<int> count(W, 0);
      for (uint64_t step = 0; step < W / G; ++step) {
        Rows r = flatten(l.next());
        for (size_t row = 0; row < size_t(G); ++row) {
          std::vector<int32_t> win(r.tok.begin() + int64_t(row * L), r.tok.begin() + int64_t((row + 1) * L));
          auto it = index.find(win);
          ASSERT_NE(it, index.end());
          ++count[it->second];
          order[epoch].push_back(it->second);
        }
      }
      uint64_t seen = 0;
      for (uint64_t w = 0; w < W; ++w) {
        EXPECT_LE(count[w], 1);
        seen += count[w];
      }
      EXPECT_EQ(seen, (W / G) * G);  // the partial global batch at the end is dropped
      EXPECT_EQ(l.state().epoch, uint64_t(epoch + 1));
      EXPECT_EQ(l.state().next_window, 0u);
    }
    EXPECT_NE(order[0], order[1]);  // a new permutation each epoch
  }
}

TEST(Loader, ValidationIteratesInOrder) {
  auto s = make_stream(16 * 40, 300, 30, 3);
  LoaderOptions o = opts(16, 4, 2);
  o.shuffle = false;
  Loader l(s, o);
  for (int step = 0; step < 10; ++step) {
    Rows r = flatten(l.next());
    std::vector<int32_t> want(s->tokens.begin() + step * 64, s->tokens.begin() + (step + 1) * 64);
    EXPECT_EQ(r.tok, want);
  }
  EXPECT_EQ(l.state().epoch, 1u);
  EXPECT_EQ(flatten(l.next()).tok, std::vector<int32_t>(s->tokens.begin(), s->tokens.begin() + 64));
}

TEST(Loader, ResumeContinuesExactly) {
  auto s = make_stream(16 * 8 * 10 + 40, 400, 50, 4);
  LoaderOptions o = opts(16, 8, 2);
  o.random_pad_first_block = true;
  o.block_length = 4;
  const int spe = int(Loader(s, o).steps_per_epoch());
  ASSERT_GE(spe, 9);
  ASSERT_LE(spe, 12);  // 35 steps cross at least two epoch boundaries
  auto straight = global_batches(s, o, 1, 35);
  for (int split : {0, 3, spe, spe + 7, 2 * spe + 5}) {
    Loader first(s, o);
    for (int i = 0; i < split; ++i) EXPECT_TRUE(flatten(first.next()) == straight[i]);
    const nlohmann::json saved = first.state().to_json();
    const LoaderState st = LoaderState::from_json(nlohmann::json::parse(saved.dump()));
    EXPECT_EQ(st.epoch, uint64_t(split / spe));
    for (int world : {1, 2, 4}) {
      auto rest = global_batches(s, o, world, 35 - split, &st);
      for (int i = split; i < 35; ++i)
        EXPECT_TRUE(rest[i - split] == straight[i]) << "split " << split << " world " << world << " step " << i;
    }
  }
  // A state saved by 4 ranks resumes on 1 (states count global windows).
  LoaderOptions o4 = o;
  o4.world = 4;
  o4.rank = 3;
  Loader r3(s, o4);
  for (int i = 0; i < 13; ++i) r3.next();
  Loader one(s, o);
  one.set_state(r3.state());
  EXPECT_TRUE(flatten(one.next()) == straight[13]);
}

TEST(Loader, PrefetchOnAndOffGiveTheSameBatches) {
  auto s = make_stream(16 * 8 * 6, 400, 50, 5);
  LoaderOptions on = opts(16, 8, 4), off = on;
  on.pad_to_block_boundary = off.pad_to_block_boundary = true;
  on.block_length = off.block_length = 4;
  off.prefetch = false;
  Loader a(s, on), b(s, off);
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(flatten(a.next()) == flatten(b.next())) << i;
    ASSERT_EQ(a.state(), b.state());
    if (i == 7) {  // jump back and forth: the prefetched batch must be discarded
      LoaderState j{0, 16};
      a.set_state(j);
      b.set_state(j);
    }
  }
}

namespace {
// The padded stream, computed independently of the loader from the option semantics.
void expected_padding(const TokenStream& s, const LoaderOptions& o, std::vector<int32_t>& tok,
                      std::vector<uint8_t>& mask) {
  const int pad = o.pad_id >= 0 ? o.pad_id : s.eos_id;
  for (size_t d = 0; d < s.doc_offsets.size(); ++d) {
    const uint64_t b = s.doc_offsets[d], e = d + 1 < s.doc_offsets.size() ? s.doc_offsets[d + 1] : s.tokens.size();
    int before = o.random_pad_first_block ? first_block_pads(o.seed, d, o.block_length) : 0;
    for (int i = 0; i < before; ++i) tok.push_back(pad), mask.push_back(0);
    for (uint64_t i = b; i < e; ++i) tok.push_back(s.tokens[i]), mask.push_back(1);
    while (o.pad_to_block_boundary && tok.size() % size_t(o.block_length)) tok.push_back(pad), mask.push_back(0);
  }
}
}  // namespace

TEST(Loader, PaddingOptions) {
  auto s = make_stream(4000, 300, 23, 6);
  const int LB = 4, L = 32, G = 4;
  struct Case {
    bool first, boundary;
    int pad_id;
  };
  for (Case c : {Case{false, false, -1}, Case{true, false, -1}, Case{false, true, -1}, Case{true, true, -1},
                 Case{true, true, 7}}) {
    SCOPED_TRACE(testing::Message() << "first=" << c.first << " boundary=" << c.boundary << " pad=" << c.pad_id);
    LoaderOptions o = opts(L, G, 2);
    o.block_length = LB;
    o.random_pad_first_block = c.first;
    o.pad_to_block_boundary = c.boundary;
    o.pad_id = c.pad_id;
    o.shuffle = false;
    Loader l(s, o);
    // One epoch in order = the padded stream up to the dropped tail.
    std::vector<int32_t> tok;
    std::vector<uint8_t> mask;
    for (uint64_t i = 0; i < l.steps_per_epoch(); ++i) {
      Rows r = flatten(l.next());
      tok.insert(tok.end(), r.tok.begin(), r.tok.end());
      mask.insert(mask.end(), r.mask.begin(), r.mask.end());
    }
    std::vector<int32_t> want_tok;
    std::vector<uint8_t> want_mask;
    expected_padding(*s, o, want_tok, want_mask);
    ASSERT_EQ(l.padded_tokens(), want_tok.size());
    ASSERT_LE(tok.size(), want_tok.size());
    EXPECT_GT(tok.size() + uint64_t(L * G), want_tok.size());
    want_tok.resize(tok.size());
    want_mask.resize(tok.size());
    EXPECT_EQ(tok, want_tok);
    EXPECT_EQ(mask, want_mask);

    // Properties, checked on the loader's output directly: map every original token to its
    // padded position (the mask-1 positions in order), then look at the gaps between documents.
    const int pad = c.pad_id >= 0 ? c.pad_id : s->eos_id;
    std::vector<uint64_t> where;  // padded position of original token i
    for (size_t p = 0; p < tok.size(); ++p) {
      if (mask[p]) {
        where.push_back(p);
      } else {
        EXPECT_EQ(tok[p], pad) << p;
      }
    }
    std::vector<int32_t> real;
    for (uint64_t p : where) real.push_back(tok[p]);
    EXPECT_EQ(real, std::vector<int32_t>(s->tokens.begin(), s->tokens.begin() + int64_t(real.size())));
    uint64_t docs_with_front_pads = 0, checked = 0;
    for (size_t d = 0; d < s->doc_offsets.size() && s->doc_offsets[d] < where.size(); ++d) {
      const uint64_t start = where[s->doc_offsets[d]];  // first token of document d
      const int64_t prev_end = d == 0 ? -1 : int64_t(where[s->doc_offsets[d] - 1]);  // previous EOS
      const uint64_t gap = start - uint64_t(prev_end + 1);  // pads between the documents
      const uint64_t aligned = (uint64_t(prev_end + 1) + LB - 1) / LB * LB;
      if (!c.first && !c.boundary) {
        EXPECT_EQ(gap, 0u);
      }
      if (c.first && !c.boundary) {
        EXPECT_LT(gap, uint64_t(LB));
      }
      if (!c.first && c.boundary) {
        EXPECT_EQ(start % LB, 0u) << "document " << d << " not block aligned";
        EXPECT_EQ(start, aligned);
      }
      if (c.first && c.boundary) {
        EXPECT_GE(start, aligned);
        EXPECT_LT(start - aligned, uint64_t(LB));
        docs_with_front_pads += start != aligned;
      } else {
        docs_with_front_pads += gap > 0 && c.first;
      }
      ++checked;
    }
    EXPECT_GT(checked, 100u);
    if (c.first) {
      EXPECT_GT(docs_with_front_pads, checked / 2);
    }
  }
}

TEST(Loader, StateJson) {
  LoaderState s{3, 1234, 999};
  LoaderState t = LoaderState::from_json(s.to_json());
  EXPECT_EQ(t.epoch, 3u);
  EXPECT_EQ(t.next_window, 1234u);
  EXPECT_EQ(t.windows_per_epoch, 999u);
  EXPECT_THROW(LoaderState::from_json(nlohmann::json{{"epoch", 1}}), bt::Error);
}

TEST(Loader, SyntheticStreams) {
  TokenStream r = synthetic_stream("repeat:7:100", 50, 1);
  EXPECT_EQ(r.tokens.size(), 98u);
  EXPECT_EQ(r.doc_offsets.size(), 14u);
  EXPECT_EQ(r.eos_id, 49);
  for (size_t i = 0; i < r.tokens.size(); ++i) {
    EXPECT_EQ(r.tokens[i], r.tokens[i % 7]);
    EXPECT_EQ(r.tokens[i] == 49, i % 7 == 6);
  }
  TokenStream a = synthetic_stream("random:5000", 100, 2), b = synthetic_stream("random:5000", 100, 2);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.tokens.size(), 5000u);
  EXPECT_EQ(a.tokens.back(), 99);
  EXPECT_THROW(synthetic_stream("zigzag:3", 100, 1), bt::Error);
  EXPECT_THROW(synthetic_stream("repeat:x", 100, 1), bt::Error);
}

TEST(Loader, Errors) {
  auto s = make_stream(16 * 10, 300, 20, 7);
  auto expect_error = [](auto&& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "expected an error containing " << needle;
    } catch (const bt::Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(needle), std::string::npos) << m;
      EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    }
  };
  expect_error([&] { Loader l(s, opts(16, 16, 4)); }, "fewer than one global batch");
  expect_error([&] { Loader l(s, opts(1000, 1, 1)); }, "less than one window");
  expect_error([&] { Loader l(s, opts(16, 6, 4)); }, "not divisible");
  expect_error([&] { Loader l(s, opts(16, 8, 2, 0, 3)); }, "not divisible");
  LoaderOptions o = opts(16, 2, 1);
  o.vocab_size = 100;
  expect_error([&] { Loader l(s, o); }, "model.vocab_size 100");
  auto bad = std::make_shared<TokenStream>(*s);
  bad->tokens[5] = 300;
  o.vocab_size = 0;
  expect_error([&] { Loader l(bad, o); }, "token id 300");
  auto empty = std::make_shared<TokenStream>();
  empty->eos_id = 0;
  empty->vocab_size = 1;
  expect_error([&] { Loader l(empty, o); }, "empty");
  Loader ok(s, o);
  expect_error([&] { ok.set_state(LoaderState{0, 1000}); }, "past the");
}

// ---- the lazy shard source ---------------------------------------------------------------------

namespace {
namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "bt_test_loader_XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string operator/(const std::string& name) const { return (fs::path(path_) / name).string(); }

 private:
  std::string path_;
};

// Writes s as shards cut at document boundaries after the given document counts (the rest goes
// into the last shard); a count of 0 makes an empty shard. Returns the glob.
std::string write_as_shards(const TokenStream& s, const TempDir& dir, const std::string& name,
                            const std::vector<size_t>& docs_per_shard) {
  size_t d = 0;
  for (size_t i = 0; i <= docs_per_shard.size(); ++i) {
    const size_t nd = i < docs_per_shard.size() ? docs_per_shard[i] : s.doc_offsets.size() - d;
    const uint64_t b = d < s.doc_offsets.size() ? s.doc_offsets[d] : s.tokens.size();
    const uint64_t e = d + nd < s.doc_offsets.size() ? s.doc_offsets[d + nd] : s.tokens.size();
    std::vector<int32_t> tok(s.tokens.begin() + int64_t(b), s.tokens.begin() + int64_t(e));
    std::vector<uint64_t> offs;
    for (size_t k = d; k < d + nd; ++k) offs.push_back(s.doc_offsets[k] - b);
    char fname[64];
    std::snprintf(fname, sizeof fname, "%s-%05zu.h5", name.c_str(), i);
    write_shard(dir / fname, ShardMeta{s.vocab_size, s.eos_id, s.tokenizer}, tok, offs);
    d += nd;
  }
  return dir / (name + "-*.h5");
}

}  // namespace

TEST(ShardSource, SameBatchesAsTheInMemoryStream) {
  TempDir tmp;
  for (int vocab : {300, 70000}) {  // uint16 and uint32 on disk
    auto s = make_stream(16 * 8 * 12 + 37, vocab, 50, 11);
    const size_t nd = s->doc_offsets.size();
    ASSERT_GT(nd, 40u);
    const std::string glob = write_as_shards(*s, tmp, "c" + std::to_string(vocab), {7, 0, nd / 2, 1});
    EXPECT_EQ(read_shards(glob, 0).tokens, s->tokens);
    struct Case {
      bool first, boundary;
      int pad_id;
    };
    for (Case c : {Case{false, false, -1}, Case{true, false, -1}, Case{false, true, -1}, Case{true, true, -1},
                   Case{true, true, 7}}) {
      for (size_t max_open : {size_t(0), size_t(2)}) {
        SCOPED_TRACE(testing::Message() << "vocab=" << vocab << " first=" << c.first << " boundary=" << c.boundary
                                        << " pad=" << c.pad_id << " max_open=" << max_open);
        LoaderOptions o = opts(16, 8, 2);
        o.block_length = 4;
        o.random_pad_first_block = c.first;
        o.pad_to_block_boundary = c.boundary;
        o.pad_id = c.pad_id;
        o.vocab_size = vocab;
        auto src = std::make_shared<ShardSource>(glob, vocab, pad_spec(o), max_open);
        EXPECT_EQ(src->raw_tokens(), s->tokens.size());
        EXPECT_EQ(src->documents(), nd);
        EXPECT_EQ(src->shards(), 5u);
        // The whole padded stream, read in odd pieces, equals the in-memory one.
        {
          MemorySource mem(s, pad_spec(o), vocab);
          ASSERT_EQ(src->size(), mem.size());
          std::vector<int32_t> a(mem.size()), b(mem.size());
          std::vector<uint8_t> am(mem.size()), bm(mem.size());
          mem.read(0, mem.size(), a.data(), am.data());
          for (uint64_t at = 0, step = 1; at < mem.size(); at += step, step = step * 3 % 101 + 1) {
            const uint64_t n = std::min(step, mem.size() - at);
            src->read(at, n, b.data() + at, bm.data() + at);
          }
          ASSERT_EQ(a, b);
          ASSERT_EQ(am, bm);
        }
        const MakeLoader mem = [&](const LoaderOptions& lo) { return std::make_unique<Loader>(s, lo); };
        const MakeLoader lazy = [&](const LoaderOptions& lo) {
          return std::make_unique<Loader>(std::shared_ptr<const TokenSource>(src), lo);
        };
        const int spe = int(Loader(s, o).steps_per_epoch());
        ASSERT_GE(spe, 5);
        const int steps = 2 * spe + 3;  // crosses two epoch boundaries
        auto want = global_batches_of(mem, o, 1, steps);
        for (int world : {1, 2}) {
          auto got = global_batches_of(lazy, o, world, steps);
          for (int i = 0; i < steps; ++i) EXPECT_TRUE(got[i] == want[i]) << "world " << world << " step " << i;
          // Resume mid-epoch and across an epoch boundary.
          for (int split : {3, spe + 1}) {
            auto first = lazy(o);
            for (int i = 0; i < split; ++i) first->next();
            const LoaderState st = LoaderState::from_json(nlohmann::json::parse(first->state().to_json().dump()));
            auto rest = global_batches_of(lazy, o, world, steps - split, &st);
            for (int i = split; i < steps; ++i)
              EXPECT_TRUE(rest[i - split] == want[i]) << "resume at " << split << " world " << world << " step " << i;
          }
        }
        // Validation order (no shuffle, no prefetch).
        LoaderOptions v = o;
        v.shuffle = false;
        v.prefetch = false;
        auto vw = global_batches_of(mem, v, 1, spe + 1), vg = global_batches_of(lazy, v, 1, spe + 1);
        for (int i = 0; i <= spe; ++i) EXPECT_TRUE(vw[i] == vg[i]) << "validation step " << i;
        Loader l(std::shared_ptr<const TokenSource>(src), o);
        EXPECT_EQ(l.stream_tokens(), s->tokens.size());
        EXPECT_EQ(l.padded_tokens(), src->size());
      }
    }
  }
}

TEST(ShardSource, ErrorsAtOpenAndOnRead) {
  TempDir tmp;
  auto expect_error = [](auto&& f, std::initializer_list<std::string> needles) {
    try {
      f();
      ADD_FAILURE() << "expected an error";
    } catch (const bt::Error& e) {
      const std::string m = e.what();
      for (const auto& n : needles) EXPECT_NE(m.find(n), std::string::npos) << m;
      EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    }
  };
  auto s = make_stream(16 * 8 * 4, 300, 40, 12);
  const std::string glob = write_as_shards(*s, tmp, "ok", {10});
  LoaderOptions o = opts(16, 4, 2);
  o.vocab_size = 200;
  expect_error([&] { open_shard_source(glob, o); }, {"ok-00000.h5", "vocab_size 300", "model.vocab_size 200"});
  o.vocab_size = 300;
  // A mismatch between the source's and the loader's padding options.
  auto plain = open_shard_source(glob, o);
  LoaderOptions padded = o;
  padded.block_length = 4;
  padded.pad_to_block_boundary = true;
  expect_error([&] { Loader l(std::shared_ptr<const TokenSource>(plain), padded); }, {"padding options"});
  // Mixed tokenizers.
  auto other = std::make_shared<TokenStream>(*s);
  other->tokenizer = "other";
  write_as_shards(*other, tmp, "zz", {});
  expect_error([&] { open_shard_source(glob + "," + (tmp / "zz-00000.h5"), o); }, {"mixed tokenizers", "zz-00000.h5"});
  // Truncated.
  fs::copy_file(tmp / "ok-00001.h5", tmp / "trunc.h5");
  fs::resize_file(tmp / "trunc.h5", fs::file_size(tmp / "ok-00001.h5") / 2);
  expect_error([&] { open_shard_source(tmp / "trunc.h5", o); }, {"trunc.h5", "truncated"});

  // A bad token id is not looked for at open, but reported by the read that meets it.
  fs::copy_file(tmp / "ok-00001.h5", tmp / "bad-00001.h5");
  fs::copy_file(tmp / "ok-00000.h5", tmp / "bad-00000.h5");
  {
    hid_t f = H5Fopen((tmp / "bad-00001.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    hid_t d = H5Dopen2(f, "tokens", H5P_DEFAULT);
    hid_t fs_ = H5Dget_space(d);
    hsize_t off[1] = {5}, cnt[1] = {1};
    H5Sselect_hyperslab(fs_, H5S_SELECT_SET, off, nullptr, cnt, nullptr);
    hid_t ms = H5Screate_simple(1, cnt, nullptr);
    const uint16_t v = 299 + 7;
    ASSERT_GE(H5Dwrite(d, H5T_NATIVE_UINT16, ms, fs_, H5P_DEFAULT, &v), 0);
    H5Sclose(ms);
    H5Sclose(fs_);
    H5Dclose(d);
    H5Fclose(f);
  }
  for (bool boundary : {false, true}) {
    LoaderOptions b = o;
    b.block_length = 4;
    b.pad_to_block_boundary = boundary;
    b.shuffle = false;
    std::shared_ptr<TokenSource> src;
    ASSERT_NO_THROW(src = open_shard_source(tmp / "bad-*.h5", b));
    Loader l(std::shared_ptr<const TokenSource>(src), b);
    expect_error([&] {
      for (uint64_t i = 0; i <= l.steps_per_epoch(); ++i) l.next();
    }, {"bad-00001.h5", "token id 306", "position 5", "vocab_size 300"});
    std::vector<int32_t> t(src->size());
    std::vector<uint8_t> m(src->size());
    expect_error([&] { src->read(0, src->size(), t.data(), m.data()); }, {"bad-00001.h5", "token id 306"});
  }
}

// Token-file import and the hf: tokenizer from C++: imported shards pass our own shard reader and
// the lazy loader; the streaming ShardAppender writes what ShardWriter writes; UTF-8 repair follows
// the maximal-subpart rule; a hand-made byte-level BPE encodes by merge rank; a tokenizer larger
// than model.vocab_size is refused by `bt generate`, naming it. (The Python tests
// test_import_h5py.py and test_bpe_tokenizer.py compare against numpy / h5py / `tokenizers`.)
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/bpe_tokenizer.h"
#include "data/import.h"
#include "data/loader.h"
#include "data/shard.h"
#include "data/shard_append.h"
#include "data/token_files.h"
#include "data/token_source.h"
#include "data/utf8.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/params.h"
#include "model/model.h"

namespace bt {
namespace {
namespace fs = std::filesystem;

fs::path temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / (name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

TEST(Import, NanoGptShardsPassOurReaderAndTheLazyLoader) {
  const fs::path tmp = temp_dir("bt_import_cpp");
  // Documents of 1..300 tokens separated by EOS = 7, written as nanoGPT does (flat uint16).
  std::vector<uint16_t> stream;
  std::vector<std::vector<int32_t>> docs;
  uint64_t x = 12345;
  for (int d = 0; d < 500; ++d) {
    std::vector<int32_t> doc;
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    const int len = 1 + int((x >> 33) % 300);
    for (int i = 0; i < len; ++i) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      doc.push_back(int32_t(8 + (x >> 33) % 992));
    }
    for (int32_t t : doc) stream.push_back(uint16_t(t));
    stream.push_back(7);
    doc.push_back(7);
    docs.push_back(doc);
  }
  {
    std::ofstream f(tmp / "train.bin", std::ios::binary);
    f.write(reinterpret_cast<const char*>(stream.data()), std::streamsize(stream.size() * 2));
  }
  ImportOptions o;
  o.inputs = {(tmp / "train.bin").string()};
  o.format = TokenFileFormat::NanoGpt;
  o.out = (tmp / "out").string();
  o.tokenizer = "ids:1000";
  o.eos_id = 7;
  o.split_on_eos = true;
  o.val_fraction = 0;
  o.shard_tokens = 5000;
  o.threads = 2;
  o.progress = false;
  const ImportSummary s = run_import(o);
  EXPECT_EQ(s.train_documents, docs.size());
  EXPECT_GT(s.train_shards, 10);
  EXPECT_EQ(s.source_tokens, stream.size());

  // Our reader checks ids, offsets and the EOS at the end of every document.
  const TokenStream ts = read_shards((tmp / "out/train-*.h5").string(), 1024);
  ASSERT_EQ(ts.doc_offsets.size(), docs.size());
  std::vector<int32_t> flat;
  for (const auto& d : docs) flat.insert(flat.end(), d.begin(), d.end());
  EXPECT_EQ(ts.tokens, flat);
  EXPECT_EQ(ts.tokenizer, "ids:1000");
  // The lazy loader with both padding options gives the in-memory loader's stream.
  const PadSpec pad = PadSpec::make(4, true, true, -1, 3);
  ShardSource lazy((tmp / "out/train-*.h5").string(), 1024, pad);
  MemorySource mem(std::make_shared<const TokenStream>(ts), pad, 1024);
  ASSERT_EQ(lazy.size(), mem.size());
  std::vector<int32_t> a(lazy.size()), b(lazy.size());
  std::vector<uint8_t> ma(lazy.size()), mb(lazy.size());
  lazy.read(0, lazy.size(), a.data(), ma.data());
  mem.read(0, mem.size(), b.data(), mb.data());
  EXPECT_EQ(a, b);
  EXPECT_EQ(ma, mb);
  // No tokenizer to load for bare ids.
  EXPECT_EQ(load_tokenizer_from_dir((tmp / "out").string()), nullptr);
  fs::remove_all(tmp);
}

TEST(Import, ShardAppenderWritesWhatShardWriterWrites) {
  const fs::path tmp = temp_dir("bt_appender_cpp");
  for (int64_t vocab : {50277, 100000}) {
    const ShardMeta meta{vocab, 3, "ids:test"};
    ShardWriter w((tmp / "w.h5").string(), meta);
    ShardAppender a((tmp / "a.h5").string(), meta);
    std::vector<int32_t> doc;
    for (int d = 0; d < 40; ++d) {
      // Documents up to 2.5 chunks long, some added in pieces.
      const size_t len = d % 13 == 0 ? (kShardChunkElems * 5) / 2 : size_t(1 + d * 977 % 5000);
      doc.resize(len);
      for (size_t i = 0; i < len; ++i) doc[i] = int32_t(4 + (i * 31 + size_t(d)) % 40000);
      w.add_document(doc.data(), doc.size());
      doc.push_back(3);
      auto put = [&](auto* p, size_t off, size_t n) {
        for (size_t i = 0; i < n; ++i) p[i] = decltype(+p[0])(doc[off + i]);
      };
      if (d % 2 == 0) {
        if (a.wide()) put(a.reserve<uint32_t>(doc.size()), 0, doc.size());
        else put(a.reserve<uint16_t>(doc.size()), 0, doc.size());
        a.commit_doc(doc.size());
      } else {
        a.start_doc();
        for (size_t off = 0; off < doc.size(); off += 1000) {
          const size_t n = std::min<size_t>(1000, doc.size() - off);
          if (a.wide()) put(a.reserve<uint32_t>(n), off, n);
          else put(a.reserve<uint16_t>(n), off, n);
          a.commit_tokens(n);
        }
      }
      if (d % 5 == 0) {  // a reserved and cancelled document leaves no trace
        if (a.wide()) a.reserve<uint32_t>(10);
        else a.reserve<uint16_t>(10);
        a.cancel();
      }
    }
    w.finish();
    a.finish();
    std::vector<int32_t> tw, ta;
    std::vector<uint64_t> ow, oa;
    const ShardInfo iw = read_shard((tmp / "w.h5").string(), tw, ow);
    const ShardInfo ia = read_shard((tmp / "a.h5").string(), ta, oa);
    EXPECT_EQ(tw, ta);
    EXPECT_EQ(ow, oa);
    EXPECT_EQ(iw.token_bytes, ia.token_bytes);
    EXPECT_EQ(ia.token_bytes, vocab > 65536 ? 4 : 2);
  }
  // Destroyed before finish: nothing is left.
  {
    ShardAppender a((tmp / "gone.h5").string(), ShardMeta{100, 0, "x"});
    a.reserve<uint16_t>(5);
    a.commit_doc(5);
  }
  EXPECT_FALSE(fs::exists(tmp / "gone.h5"));
  EXPECT_FALSE(fs::exists(tmp / "gone.h5.tmp"));
  fs::remove_all(tmp);
}

// Headers that the token_files fuzz target (tests/fuzz) showed to be accepted wrongly: a numpy
// shape of -1 (std::stoull read it as 2^64 - 1 tokens), an empty shape (substr out of range), a
// shape whose byte count wraps around 2^64, a dtype with a line break (a two-line error), and an
// empty Megatron index (memcmp on a null map: undefined behaviour).
TEST(TokenFiles, DamagedHeadersAreRefusedInOneLine) {
  const fs::path tmp = temp_dir("bt_token_files_bad");
  auto npy = [&](const std::string& name, const std::string& descr, const std::string& shape, size_t data_bytes) {
    std::string h = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
    while ((10 + h.size() + 1) % 64) h += ' ';
    h += '\n';
    std::string f = "\x93NUMPY";
    f += '\x01';
    f += '\x00';
    f += char(h.size() & 0xff);
    f += char(h.size() >> 8);
    f += h + std::string(data_bytes, '\x01');
    std::ofstream((tmp / name).string(), std::ios::binary) << f;
    return (tmp / name).string();
  };
  auto expect_refused = [](const std::function<void()>& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "accepted; expected an error with '" << needle << "'";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(needle), std::string::npos) << m;
      EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    }
  };
  const std::string ok = npy("ok.npy", "<u2", "(3,)", 6);
  EXPECT_EQ(open_token_file(ok, TokenFileFormat::Npy).tokens, 3u);
  const std::string neg = npy("neg.npy", "<u2", "(-1,)", 2);
  expect_refused([&] { open_token_file(neg, TokenFileFormat::Npy); }, "malformed shape (-1,)");
  const std::string untupled = npy("untupled.npy", "<u2", "", 2);
  expect_refused([&] { open_token_file(untupled, TokenFileFormat::Npy); }, "malformed shape ''");
  const std::string wrap = npy("wrap.npy", "<u8", "(2305843009213693952,)", 0);
  expect_refused([&] { open_token_file(wrap, TokenFileFormat::Npy); }, "needs more than 2^64");
  const std::string big = npy("big.npy", "<u2", "(4,)", 6);
  expect_refused([&] { open_token_file(big, TokenFileFormat::Npy); }, "shape (4,) needs 136");
  const std::string broken = npy("broken.npy", "<u\n2", "(1,)", 2);
  expect_refused([&] { open_token_file(broken, TokenFileFormat::Npy); }, "dtype '<u\\n2'");
  std::ofstream((tmp / "empty.idx").string());
  std::ofstream((tmp / "empty.bin").string());
  expect_refused([&] { open_token_file((tmp / "empty").string(), TokenFileFormat::Megatron); }, "empty file");
  fs::remove_all(tmp);
}

TEST(Utf8, RepairReplacesMaximalSubparts) {
  // Python: bytes.decode("utf-8", "replace") gives the same.
  const std::string R = "\xEF\xBF\xBD";
  EXPECT_TRUE(utf8_valid("plain ascii, caf\xC3\xA9, \xF0\x9F\x98\x80"));
  EXPECT_EQ(utf8_repair("a\xED\xA0\x80z"), "a" + R + R + R + "z");  // a surrogate: 3 replacements
  EXPECT_EQ(utf8_repair("\xE2\x82("), R + "(");                      // a cut 3-byte sequence: 1
  EXPECT_EQ(utf8_repair("\xF0\x9F\x98"), R);                          // a cut 4-byte sequence: 1
  EXPECT_EQ(utf8_repair("\xC0\xAF"), R + R);                           // an overlong: 2
  EXPECT_EQ(utf8_repair("\xF4\x90\x80\x80"), R + R + R + R);          // above U+10FFFF: 4
  EXPECT_EQ(utf8_repair("\xE0\x80\x80"), R + R + R);
  EXPECT_EQ(utf8_repair("\xFF\xFE"), R + R);
  EXPECT_EQ(utf8_repair("ok\xC3\xA9"), "ok\xC3\xA9");
  EXPECT_FALSE(utf8_valid("\xC3"));
}

// A tiny byte-level BPE written by hand: the byte alphabet, then merges "t h" (rank 0), "th e"
// (rank 1), "Ġ th" (rank 2), "e e" (rank 3), and <|endoftext|> as a special added token.
fs::path tiny_bpe(const fs::path& dir, int extra_tokens) {
  nlohmann::ordered_json vocab;
  int id = 0;
  auto alpha = [](int b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    static int n = 0;
    static std::map<int, int> memo;
    if (!memo.count(b)) memo[b] = printable ? b : 256 + n++;
    const int cp = memo[b];
    std::string s;
    if (cp < 0x80) s.push_back(char(cp));
    else {
      s.push_back(char(0xC0 | (cp >> 6)));
      s.push_back(char(0x80 | (cp & 0x3F)));
    }
    return s;
  };
  for (int b = 0; b < 256; ++b) vocab[alpha(b)] = id++;
  for (const char* t : {"th", "the", "\xC4\xA0th", "ee"}) vocab[t] = id++;
  for (int i = 0; i < extra_tokens; ++i) vocab["<x" + std::to_string(i) + ">"] = id++;
  nlohmann::ordered_json j = {
      {"version", "1.0"},
      {"added_tokens", {{{"id", id}, {"content", "<|endoftext|>"}, {"special", true}, {"single_word", false},
                         {"lstrip", false}, {"rstrip", false}, {"normalized", false}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", {"t h", "th e", "\xC4\xA0 th", "e e"}}}}};
  const fs::path p = dir / "tokenizer.json";
  std::ofstream(p) << j.dump();
  return p;
}

TEST(HfTokenizer, MergesByRankAndDecodes) {
  const fs::path tmp = temp_dir("bt_hf_cpp");
  auto tok = load_hf_tokenizer(tiny_bpe(tmp, 0).string());
  EXPECT_EQ(tok->vocab_size(), 261);
  EXPECT_EQ(tok->eos_id(), 260);
  EXPECT_EQ(tok->kind(), "hf");
  // "the the<|endoftext|>eee": "the" -> t h (rank 0), then th e (rank 1); " the" -> Ġ t h e ->
  // Ġ th e; then th e (rank 1) goes before Ġ th (rank 2): [Ġ, the]; "eee" -> [ee, e] (leftmost).
  // Byte b has id b (the alphabet was listed in byte order), so Ġ (the space) is 32 and e is 101.
  const std::vector<int32_t> ids = tok->encode("the the<|endoftext|>eee");
  EXPECT_EQ(ids, (std::vector<int32_t>{257, 32, 257, 260, 259, 101}));
  EXPECT_EQ(tok->decode(ids), "the theeee");  // the special token is skipped
  EXPECT_EQ(tok->decode({1000, -1}), "");       // out of range: nothing
  // Invalid UTF-8 encodes as its U+FFFD replacement.
  EXPECT_EQ(tok->encode("\xFF"), tok->encode("\xEF\xBF\xBD"));
  fs::remove_all(tmp);
}

TEST(HfTokenizer, LargerThanTheModelIsRefusedByName) {
  const char* b = std::getenv("BT_BINARY");
  if (!b) GTEST_SKIP() << "BT_BINARY not set";
  const fs::path tmp = temp_dir("bt_hf_vocab");
  const fs::path tj = tiny_bpe(tmp, 20);  // 281 tokens
  Config c;
  c.model.kind = "vanilla";
  c.model.context_length = 16;
  c.model.decoder = {1, 16, 2, 32, 0};
  c.model.vocab_size = 260;
  c.train.precision = "fp32";
  c.data.synthetic = "repeat:7";
  ParamTable t(c.model);
  std::vector<float> w(t.total(), 0.01f);
  CheckpointContents cc;
  cc.step = 1;
  cc.config = &c;
  cc.table = &t;
  cc.params = w.data();
  const std::string dir = save_checkpoint((tmp / "ck").string(), cc, 1);
  const std::string err = (tmp / "err.txt").string();
  const std::string cmd = std::string(b) + " generate --device cpu --ckpt " + dir + " --tokenizer hf:" + tj.string() +
                          " --prompt hi --max-new-tokens 2 >/dev/null 2>" + err;
  EXPECT_NE(std::system(cmd.c_str()), 0);
  std::ifstream f(err);
  const std::string msg((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_NE(msg.find("tokenizer hf:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("vocab_size 281 > model.vocab_size 260"), std::string::npos) << msg;
  // A model with room for it generates text through it.
  c.model.vocab_size = 300;
  ParamTable t2(c.model);
  std::vector<float> w2(t2.total(), 0.01f);
  cc.table = &t2;
  cc.params = w2.data();
  const std::string dir2 = save_checkpoint((tmp / "ck2").string(), cc, 1);
  const std::string out = (tmp / "out.txt").string();
  const std::string ok = std::string(b) + " generate --device cpu --ckpt " + dir2 + " --tokenizer hf:" + tj.string() +
                         " --prompt 'the the' --greedy --max-new-tokens 3 --print-ids >" + out + " 2>&1";
  EXPECT_EQ(std::system(ok.c_str()), 0);
  std::ifstream g(out);
  const std::string gen((std::istreambuf_iterator<char>(g)), std::istreambuf_iterator<char>());
  EXPECT_NE(gen.find("=== sample 1 (3 prompt tokens"), std::string::npos) << gen;  // "the", "Ġ", "the"
  fs::remove_all(tmp);
}

}  // namespace
}  // namespace bt

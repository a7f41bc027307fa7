// Shards, tokenizers and `bt prepare` (run in-process): round trips for the byte tokenizer and a
// small trained SentencePiece model, and the one-line errors for every kind of bad input.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/rng.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "data/sha256.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace bt;

namespace {

using bt::test::TempDir;

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

// Runs f, expects a bt::Error whose one-line message contains every needle.
template <class F>
void expect_error(F&& f, std::initializer_list<std::string> needles) {
  try {
    f();
    ADD_FAILURE() << "expected an error containing '" << *needles.begin() << "'";
  } catch (const bt::Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

PrepareOptions quiet(const std::vector<std::string>& inputs, const std::string& out,
                     const std::string& tokenizer = "byte") {
  PrepareOptions o;
  o.inputs = inputs;
  o.out = out;
  o.tokenizer = tokenizer;
  o.val_fraction = 0;
  o.progress = false;
  return o;
}

// Documents of the text below, as `--doc-split blank` must see them.
const std::vector<std::string> kDocs = {
    "The first document.\nIt has two lines.",
    "Second: UTF-8 \xc3\xa9\xc3\xa8 \xe2\x82\xac and tabs\tinside.",
    "  indented third\n  still third",
    "x",
};
const std::string kText =
    "\n\nThe first document.\nIt has two lines.\n\n\n"
    "Second: UTF-8 \xc3\xa9\xc3\xa8 \xe2\x82\xac and tabs\tinside.\r\n"
    "   \n"
    "  indented third\n  still third\n\nx";

std::vector<int32_t> expected_stream(const Tokenizer& tok, const std::vector<std::string>& docs,
                                     std::vector<uint64_t>* offsets = nullptr) {
  std::vector<int32_t> out;
  for (const auto& d : docs) {
    if (offsets) offsets->push_back(out.size());
    auto ids = tok.encode(d);
    out.insert(out.end(), ids.begin(), ids.end());
    out.push_back(tok.eos_id());
  }
  return out;
}

// Pseudo-English for tokenizer training: words drawn from a small vocabulary.
std::string make_corpus(int docs, uint64_t seed) {
  static const char* words[] = {"the",  "and",   "of",    "king",   "land", "people", "said", "unto",
                                "them", "shall", "house", "Israel", "LORD", "came",   "went", "day",
                                "city", "water", "bread", "fire",   "12",   "2024",   "na\xc3\xafve"};
  Rng rng(seed);
  std::ostringstream ss;
  for (int d = 0; d < docs; ++d) {
    const int lines = 1 + int(rng.below(4));
    for (int l = 0; l < lines; ++l) {
      const int n = 3 + int(rng.below(12));
      for (int w = 0; w < n; ++w) ss << (w ? " " : "") << words[rng.below(std::size(words))];
      ss << (rng.below(2) ? "." : ",") << "\n";
    }
    ss << "\n";
  }
  return ss.str();
}

std::vector<std::string> split_blank(const std::string& text) {
  std::vector<std::string> docs;
  std::istringstream in(text);
  std::string line, cur;
  while (std::getline(in, line)) {
    if (line.empty()) {
      if (!cur.empty()) docs.push_back(cur);
      cur.clear();
    } else {
      cur += (cur.empty() ? "" : "\n") + line;
    }
  }
  if (!cur.empty()) docs.push_back(cur);
  return docs;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  return nlohmann::json::parse(f);
}

// A raw HDF5 file with the given attributes and datasets, for malformed shards.
void write_raw_h5(const std::string& path, const std::string& format, bool with_tokens,
                  const std::vector<uint16_t>& tokens, const std::vector<uint64_t>& offsets,
                  int64_t vocab = 257, int64_t eos = 256) {
  hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  auto str_attr = [&](const char* name, const std::string& v) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
    const char* p = v.c_str();
    H5Awrite(a, t, &p);
    H5Aclose(a);
    H5Sclose(s);
    H5Tclose(t);
  };
  auto int_attr = [&](const char* name, int64_t v) {
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, name, H5T_STD_I64LE, s, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    H5Sclose(s);
  };
  str_attr("format", format);
  int_attr("version", 1);
  int_attr("vocab_size", vocab);
  int_attr("eos_id", eos);
  str_attr("tokenizer", "byte");
  auto dataset = [&](const char* name, hid_t ftype, hid_t mtype, const void* data, hsize_t n) {
    hid_t s = H5Screate_simple(1, &n, nullptr);
    hid_t d = H5Dcreate2(f, name, ftype, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    H5Dclose(d);
    H5Sclose(s);
  };
  if (with_tokens) dataset("tokens", H5T_STD_U16LE, H5T_NATIVE_UINT16, tokens.data(), tokens.size());
  dataset("doc_offsets", H5T_STD_U64LE, H5T_NATIVE_UINT64, offsets.data(), offsets.size());
  H5Fclose(f);
}

}  // namespace

TEST(Sha256, KnownVectors) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Tokenizer, ByteAndSpecs) {
  auto tok = make_tokenizer("byte");
  EXPECT_EQ(tok->vocab_size(), 257);
  EXPECT_EQ(tok->eos_id(), 256);
  EXPECT_EQ(tok->name(), "byte");
  const std::string s = "h\xc3\xa9llo\n\x01\xff";
  auto ids = tok->encode(s);
  ASSERT_EQ(ids.size(), s.size());
  EXPECT_EQ(ids[1], 0xc3);
  EXPECT_EQ(ids.back(), 255);
  ids.push_back(256);
  EXPECT_EQ(tok->decode(ids), s);  // EOS decodes to nothing
  expect_error([] { parse_tokenizer_spec("gpt2"); }, {"unknown tokenizer 'gpt2'"});
  expect_error([] { parse_tokenizer_spec("train-spm:abc"); }, {"train-spm:abc"});
  expect_error([] { parse_tokenizer_spec("train-spm:10"); }, {"vocab size"});
  expect_error([] { make_tokenizer("spm:/nonexistent/m.model"); }, {"/nonexistent/m.model", "no such file"});
}

// A damaged SentencePiece model whose error names a piece holding a line break (found by
// tests/fuzz/fuzz_spm_model.cpp; the input is its regression seed): still a one-line error.
TEST(Tokenizer, DamagedSpmModelGivesOneLineError) {
  const char* src = std::getenv("BT_SOURCE_DIR");
  const fs::path root = src && *src ? fs::path(src) : fs::path(__FILE__).parent_path().parent_path().parent_path();
  const std::string model = (root / "tests/fuzz/corpus/spm_model/regress-multiline-status.model").string();
  ASSERT_TRUE(fs::exists(model)) << model;
  expect_error([&] { load_spm_tokenizer(model); }, {model, "cannot load", "byte piece \\n"});
}

TEST(Shards, ByteRoundTrip) {
  TempDir tmp;
  write_text(tmp / "in.txt", kText);
  PrepareSummary s = run_prepare(quiet({tmp / "in.txt"}, tmp / "out"));
  auto tok = make_byte_tokenizer();
  std::vector<uint64_t> offsets;
  const auto want = expected_stream(*tok, kDocs, &offsets);
  EXPECT_EQ(s.train_documents, kDocs.size());
  EXPECT_EQ(s.train_tokens, want.size());
  EXPECT_EQ(s.val_documents, 0u);

  TokenStream got = read_shards(tmp / "out/train-*.h5", 4096);
  EXPECT_EQ(got.tokens, want);
  EXPECT_EQ(got.doc_offsets, offsets);
  EXPECT_EQ(got.vocab_size, 257);
  EXPECT_EQ(got.eos_id, 256);
  EXPECT_EQ(got.tokenizer, "byte");
  EXPECT_FALSE(fs::exists(tmp / "out/val-00000.h5"));

  ShardInfo info = read_shard_info(tmp / "out/train-00000.h5");
  EXPECT_EQ(info.token_bytes, 2);
  EXPECT_EQ(info.documents, kDocs.size());

  // The manifest describes the shard; the directory's tokenizer decodes it.
  auto m = read_json(tmp / "out/manifest.json");
  EXPECT_EQ(m["tokenizer"], "byte");
  EXPECT_EQ(m["vocab_size"], 257);
  EXPECT_EQ(m["eos_id"], 256);
  ASSERT_EQ(m["shards"].size(), 1u);
  EXPECT_EQ(m["shards"][0]["file"], "train-00000.h5");
  EXPECT_EQ(m["shards"][0]["tokens"], want.size());
  EXPECT_EQ(m["shards"][0]["documents"], kDocs.size());
  EXPECT_EQ(m["shards"][0]["sha256"], sha256_file(tmp / "out/train-00000.h5"));
  auto dir_tok = load_tokenizer_from_dir(tmp / "out");
  EXPECT_EQ(dir_tok->name(), "byte");
  auto shard_tok = load_tokenizer_for_shard_file(tmp / "out/train-00000.h5");
  std::vector<int32_t> doc0(got.tokens.begin(), got.tokens.begin() + int64_t(got.doc_offsets[1]));
  EXPECT_EQ(shard_tok->decode(doc0), kDocs[0]);
  // No temporary files are left behind.
  for (const auto& e : fs::directory_iterator(tmp / "out"))
    EXPECT_NE(e.path().extension(), ".tmp") << e.path();
}

TEST(Shards, ManyShardsSplitsAndDeterminism) {
  TempDir tmp;
  const std::string text = make_corpus(300, 3);
  write_text(tmp / "in.txt", text);
  const auto docs = split_blank(text);
  auto opt = quiet({tmp / "in.txt"}, tmp / "a");
  opt.shard_tokens = 2000;
  opt.val_fraction = 0.2;
  PrepareSummary s = run_prepare(opt);
  EXPECT_GT(s.train_shards, 3);
  EXPECT_GE(s.val_shards, 1);
  EXPECT_EQ(s.train_documents + s.val_documents, docs.size());
  EXPECT_GT(s.val_documents, docs.size() / 10);
  EXPECT_LT(s.val_documents, docs.size() * 3 / 10);

  // train + val hold every document exactly once, each split in input order.
  auto tok = make_byte_tokenizer();
  TokenStream tr = read_shards(tmp / "a/train-*.h5", 0), va = read_shards(tmp / "a/val-*.h5", 0);
  auto split_docs = [&](const TokenStream& st) {
    std::vector<std::string> out;
    for (size_t d = 0; d < st.doc_offsets.size(); ++d) {
      uint64_t b = st.doc_offsets[d], e = d + 1 < st.doc_offsets.size() ? st.doc_offsets[d + 1] : st.tokens.size();
      EXPECT_EQ(st.tokens[e - 1], 256);
      out.push_back(tok->decode(std::vector<int32_t>(st.tokens.begin() + int64_t(b), st.tokens.begin() + int64_t(e))));
    }
    return out;
  };
  auto trd = split_docs(tr), vad = split_docs(va);
  std::vector<std::string> merged;
  size_t i = 0, j = 0;
  for (const auto& d : docs) {
    if (i < trd.size() && trd[i] == d)
      ++i;
    else if (j < vad.size() && vad[j] == d)
      ++j;
    else
      ADD_FAILURE() << "document missing or out of order: " << d.substr(0, 40);
  }
  EXPECT_EQ(i, trd.size());
  EXPECT_EQ(j, vad.size());
  // Each shard stays near the requested size (documents are never split).
  auto m = read_json(tmp / "a/manifest.json");
  uint64_t total = 0;
  for (const auto& sh : m["shards"]) {
    EXPECT_LE(sh["tokens"].get<uint64_t>(), 2000u + 2000u);
    total += sh["tokens"].get<uint64_t>();
    EXPECT_EQ(sh["sha256"], sha256_file(tmp / ("a/" + sh["file"].get<std::string>())));
  }
  EXPECT_EQ(total, tr.tokens.size() + va.tokens.size());
  // Same seed, same output, byte for byte (also in a later second: no timestamps in shards).
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  opt.out = tmp / "b";
  run_prepare(opt);
  auto m2 = read_json(tmp / "b/manifest.json");
  ASSERT_EQ(m2["shards"].size(), m["shards"].size());
  for (size_t k = 0; k < m["shards"].size(); ++k) EXPECT_EQ(m2["shards"][k]["sha256"], m["shards"][k]["sha256"]);
}

TEST(Shards, JsonlAndLineSplit) {
  TempDir tmp;
  write_text(tmp / "in.jsonl",
             "{\"text\": \"alpha\\nbeta\", \"id\": 1}\n\n{\"text\": \"\"}\r\n{\"text\": \"gamma\"}\n");
  run_prepare(quiet({tmp / "in.jsonl"}, tmp / "j"));
  auto tok = make_byte_tokenizer();
  EXPECT_EQ(read_shards(tmp / "j/train-00000.h5", 0).tokens, expected_stream(*tok, {"alpha\nbeta", "gamma"}));

  write_text(tmp / "lines.txt", "one\ntwo two\n\nthree\n");
  auto o = quiet({tmp / "lines.txt"}, tmp / "l");
  o.doc_split = "line";
  run_prepare(o);
  EXPECT_EQ(read_shards(tmp / "l/train-*.h5", 0).tokens, expected_stream(*tok, {"one", "two two", "three"}));

  write_text(tmp / "bad.jsonl", "{\"text\": \"ok\"}\n{\"text\": 3}\n");
  expect_error([&] { run_prepare(quiet({tmp / "bad.jsonl"}, tmp / "b")); }, {tmp / "bad.jsonl", ":2:", "\"text\""});
  write_text(tmp / "bad2.jsonl", "{\"text\": \"ok\"}\n{not json\n");
  expect_error([&] { run_prepare(quiet({tmp / "bad2.jsonl"}, tmp / "b")); }, {tmp / "bad2.jsonl", ":2:", "not valid JSON"});
  EXPECT_FALSE(fs::exists(tmp / "b/manifest.json"));
}

TEST(Shards, TrainedSpmRoundTrip) {
  TempDir tmp;
  const std::string text = make_corpus(400, 5);
  write_text(tmp / "in.txt", text);
  const auto docs = split_blank(text);
  PrepareSummary s = run_prepare(quiet({tmp / "in.txt"}, tmp / "s", "train-spm:400"));
  ASSERT_TRUE(fs::exists(tmp / "s/tokenizer.model"));
  auto tok = load_tokenizer_from_dir(tmp / "s");
  EXPECT_EQ(tok->kind(), "spm");
  EXPECT_EQ(tok->name().substr(0, 4), "spm:");
  EXPECT_EQ(tok->name(), "spm:" + sha256_file(tmp / "s/tokenizer.model"));
  EXPECT_LE(tok->vocab_size(), 400);
  EXPECT_EQ(s.vocab_size, tok->vocab_size());
  TokenStream got = read_shards(tmp / "s/train-*.h5", 400);
  EXPECT_EQ(got.tokenizer, tok->name());
  EXPECT_EQ(got.eos_id, tok->eos_id());
  EXPECT_EQ(got.tokens, expected_stream(*tok, docs));
  EXPECT_LT(got.tokens.size(), text.size() / 2);  // it really merged pieces
  // Identity normalization + byte fallback: decode inverts encode, newlines included.
  for (size_t d = 0; d < 20; ++d) EXPECT_EQ(tok->decode(tok->encode(docs[d])), docs[d]);
  const std::string odd = "Tabs\tand  two spaces, \xe4\xb8\xad\xe6\x96\x87 {unseen}\nnext line";
  EXPECT_EQ(tok->decode(tok->encode(odd)), odd);
  // The shard's attribute finds the model next to it.
  EXPECT_EQ(load_tokenizer_for_shard_file(tmp / "s/train-00000.h5")->name(), tok->name());
  EXPECT_EQ(load_tokenizer_for_shards(tmp / "s/*.h5")->name(), tok->name());

  // An existing model via spm:PATH gives the same name and the same tokens.
  run_prepare(quiet({tmp / "in.txt"}, tmp / "p", "spm:" + (tmp / "s/tokenizer.model")));
  TokenStream again = read_shards(tmp / "p/train-*.h5", 0);
  EXPECT_EQ(again.tokenizer, tok->name());
  EXPECT_EQ(again.tokens, got.tokens);

  // Mixing these shards with byte shards is refused.
  run_prepare(quiet({tmp / "in.txt"}, tmp / "byte"));
  expect_error([&] { read_shards((tmp / "s/train-00000.h5") + "," + (tmp / "byte/train-00000.h5"), 0); },
               {"mixed tokenizers", tmp / "byte/train-00000.h5", "byte", tok->name()});
  // A replaced model file is detected.
  expect_error([&] { load_tokenizer_for_shard(tok->name(), tmp / "byte"); }, {"tokenizer.model", "missing"});
}

TEST(Shards, WideTokensAndWriter) {
  TempDir tmp;
  // vocab > 65536 is stored as uint32.
  std::vector<int32_t> toks = {70000, 5, 99999, 100000 - 1, 3, 99999};
  ShardMeta meta{100000, 99999, "test-wide"};
  write_shard(tmp / "w.h5", meta, toks, {0, 3});
  ShardInfo in = read_shard_info(tmp / "w.h5");
  EXPECT_EQ(in.token_bytes, 4);
  TokenStream s = read_shards(tmp / "w.h5", 0);
  EXPECT_EQ(s.tokens, toks);
  EXPECT_EQ(s.doc_offsets, (std::vector<uint64_t>{0, 3}));
  // A writer that never finishes leaves nothing.
  {
    ShardWriter w(tmp / "never.h5", ShardMeta{257, 256, "byte"});
    std::vector<int32_t> ids = {1, 2, 3};
    w.add_document(ids.data(), ids.size());
  }
  EXPECT_FALSE(fs::exists(tmp / "never.h5"));
  EXPECT_FALSE(fs::exists(tmp / "never.h5.tmp"));
  ShardWriter w(tmp / "x.h5", ShardMeta{257, 256, "byte"});
  std::vector<int32_t> bad = {1, 257};
  expect_error([&] { w.add_document(bad.data(), bad.size()); }, {tmp / "x.h5", "257"});
}

TEST(Shards, BadInputsGiveOneLineErrors) {
  TempDir tmp;
  auto tok = make_byte_tokenizer();
  const auto good = expected_stream(*tok, {"hello", "world"});

  expect_error([&] { read_shards(tmp / "missing.h5", 0); }, {tmp / "missing.h5", "no such file"});
  expect_error([&] { read_shards(tmp / "nothing-*.h5", 0); }, {tmp / "nothing-*.h5", "no shard matches"});

  write_text(tmp / "text.h5", "this is not an HDF5 file at all\n");
  expect_error([&] { read_shards(tmp / "text.h5", 0); }, {tmp / "text.h5", "not an HDF5 file"});

  write_raw_h5(tmp / "notokens.h5", "bt-tokens", false, {}, {0});
  expect_error([&] { read_shards(tmp / "notokens.h5", 0); }, {tmp / "notokens.h5", "no /tokens"});

  write_raw_h5(tmp / "format.h5", "something-else", true, {104, 256}, {0});
  expect_error([&] { read_shards(tmp / "format.h5", 0); }, {tmp / "format.h5", "format", "something-else"});

  write_raw_h5(tmp / "big.h5", "bt-tokens", true, {104, 300, 256}, {0});
  expect_error([&] { read_shards(tmp / "big.h5", 0); }, {tmp / "big.h5", "token id 300", "vocab_size 257"});

  write_raw_h5(tmp / "noeos.h5", "bt-tokens", true, {104, 105}, {0});
  expect_error([&] { read_shards(tmp / "noeos.h5", 0); }, {tmp / "noeos.h5", "EOS"});

  // Truncated: a real shard cut in half (the superblock survives, the data does not).
  std::vector<int32_t> many;
  std::vector<uint64_t> offs;
  Rng rng(1);
  for (int d = 0; d < 200; ++d) {
    offs.push_back(many.size());
    for (int i = 0; i < 999; ++i) many.push_back(int32_t(rng.below(256)));
    many.push_back(256);
  }
  write_shard(tmp / "full.h5", ShardMeta{257, 256, "byte"}, many, offs);
  EXPECT_EQ(read_shards(tmp / "full.h5", 0).tokens, many);
  fs::copy_file(tmp / "full.h5", tmp / "trunc.h5");
  fs::resize_file(tmp / "trunc.h5", fs::file_size(tmp / "full.h5") / 2);
  expect_error([&] { read_shards(tmp / "trunc.h5", 0); }, {tmp / "trunc.h5", "truncated"});
  fs::copy_file(tmp / "full.h5", tmp / "tiny.h5");
  fs::resize_file(tmp / "tiny.h5", 100);
  expect_error([&] { read_shards(tmp / "tiny.h5", 0); }, {tmp / "tiny.h5"});

  // Empty corpus.
  write_text(tmp / "empty.txt", "\n\n   \n");
  expect_error([&] { run_prepare(quiet({tmp / "empty.txt"}, tmp / "e")); }, {"empty corpus", tmp / "empty.txt"});
  expect_error([&] { run_prepare(quiet({tmp / "empty.txt"}, tmp / "e", "train-spm:500")); }, {"empty corpus"});
  EXPECT_FALSE(fs::exists(tmp / "e/manifest.json"));
  expect_error([&] { run_prepare(quiet({tmp / "nope.txt"}, tmp / "e")); }, {tmp / "nope.txt", "no such file"});

  // Tokenizer vocab larger than the model's.
  write_shard(tmp / "ok.h5", ShardMeta{257, 256, "byte"}, good, {0, 6});
  expect_error([&] { read_shards(tmp / "ok.h5", 100); }, {tmp / "ok.h5", "vocab_size 257", "model.vocab_size 100"});
  EXPECT_NO_THROW(read_shards(tmp / "ok.h5", 257));
  // Mixed tokenizers.
  write_shard(tmp / "other.h5", ShardMeta{257, 256, "spm:0123abcd"}, good, {0, 6});
  expect_error([&] { read_shards((tmp / "ok.h5") + "," + (tmp / "other.h5"), 0); },
               {"mixed tokenizers", tmp / "other.h5", "spm:0123abcd"});
  expect_error([&] { read_shards((tmp / "ok.h5") + "," + (tmp / "ok.h5"), 0); }, {"listed twice"});
}

TEST(Shards, OutputDirectoryIsNeverHalfReplaced) {
  TempDir tmp;
  write_text(tmp / "in.txt", kText);
  run_prepare(quiet({tmp / "in.txt"}, tmp / "o"));
  expect_error([&] { run_prepare(quiet({tmp / "in.txt"}, tmp / "o")); }, {tmp / "o", "--force"});
  // --force with a smaller shard size: no stale shard of the old run survives.
  auto o = quiet({tmp / "in.txt"}, tmp / "o");
  o.force = true;
  o.shard_tokens = 10;
  run_prepare(o);
  auto m = read_json(tmp / "o/manifest.json");
  size_t h5 = 0;
  for (const auto& e : fs::directory_iterator(tmp / "o")) h5 += e.path().extension() == ".h5";
  EXPECT_EQ(h5, m["shards"].size());
  EXPECT_EQ(read_shards(tmp / "o/train-*.h5", 0).tokens, expected_stream(*make_byte_tokenizer(), kDocs));
  // Leftovers of an interrupted run (shards, no manifest) are cleaned without --force.
  fs::remove(tmp / "o/manifest.json");
  write_text(tmp / "o/train-00042.h5.tmp", "partial");
  o.force = false;
  o.shard_tokens = 1000;
  run_prepare(o);
  EXPECT_FALSE(fs::exists(tmp / "o/train-00042.h5.tmp"));
  EXPECT_FALSE(fs::exists(tmp / "o/train-00001.h5"));
}

TEST(Shards, LoaderChecksModelVocab) {
  TempDir tmp;
  write_text(tmp / "in.txt", kText);
  run_prepare(quiet({tmp / "in.txt"}, tmp / "o"));
  auto s = std::make_shared<TokenStream>(read_shards(tmp / "o/train-*.h5", 0));
  LoaderOptions o;
  o.context_length = 8;
  o.global_batch = 2;
  o.micro_batch = 1;
  o.vocab_size = 200;
  expect_error([&] { Loader l(s, o); }, {"vocab_size 257", "model.vocab_size 200"});
  o.vocab_size = 257;
  Loader l(s, o);
  EXPECT_EQ(l.next().micro.size(), 2u);
}

// What the shard fuzzer (tests/fuzz/fuzz_shard.cpp) found, and what h5py writes: every layout
// below is built with the HDF5 API and must load exactly or fail with one line, without reading
// fill values for missing data or allocating what a damaged header claims.
TEST(Shards, StorageAndAttributeLayouts) {
  TempDir tmp;
  // opts: fixed-length null-padded strings (h5py's np.bytes_), /doc_offsets element bytes,
  // /tokens chunk elements (0: contiguous), tokens actually written, an external data file.
  struct Layout {
    bool fixed_strings = false;
    size_t offsets_bytes = 8;
    hsize_t chunk = 0;
    hsize_t written = ~hsize_t(0);
    std::string external = "";
  };
  const std::vector<uint16_t> toks = {104, 105, 256, 33, 256};
  const std::vector<uint64_t> offs = {0, 3};
  auto write = [&](const std::string& path, const Layout& l) {
    hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    auto str_attr = [&](const char* name, const std::string& v) {
      hid_t t = H5Tcopy(H5T_C_S1);
      if (l.fixed_strings) {
        H5Tset_size(t, v.size());  // exactly the characters, no terminator
        H5Tset_strpad(t, H5T_STR_NULLPAD);
      } else {
        H5Tset_size(t, H5T_VARIABLE);
      }
      hid_t s = H5Screate(H5S_SCALAR);
      hid_t a = H5Acreate2(f, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
      const char* p = v.c_str();
      H5Awrite(a, t, l.fixed_strings ? static_cast<const void*>(p) : static_cast<const void*>(&p));
      H5Aclose(a);
      H5Sclose(s);
      H5Tclose(t);
    };
    auto int_attr = [&](const char* name, int64_t v) {
      hid_t s = H5Screate(H5S_SCALAR);
      hid_t a = H5Acreate2(f, name, H5T_STD_I64LE, s, H5P_DEFAULT, H5P_DEFAULT);
      H5Awrite(a, H5T_NATIVE_INT64, &v);
      H5Aclose(a);
      H5Sclose(s);
    };
    str_attr("format", "bt-tokens");
    int_attr("version", 1);
    int_attr("vocab_size", 257);
    int_attr("eos_id", 256);
    str_attr("tokenizer", "spm:0123");
    // /tokens
    hsize_t n = toks.size(), maxn = H5S_UNLIMITED;
    hid_t s = H5Screate_simple(1, &n, l.chunk ? &maxn : nullptr);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (l.chunk) H5Pset_chunk(dcpl, 1, &l.chunk);
    if (!l.external.empty()) H5Pset_external(dcpl, l.external.c_str(), 0, n * 2);
    hid_t d = H5Dcreate2(f, "tokens", H5T_STD_U16LE, s, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    ASSERT_GE(d, 0);
    const hsize_t w = std::min<hsize_t>(l.written, n);
    if (w > 0) {
      hsize_t start = 0;
      hid_t fs = H5Dget_space(d), ms = H5Screate_simple(1, &w, nullptr);
      H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, nullptr, &w, nullptr);
      ASSERT_GE(H5Dwrite(d, H5T_NATIVE_UINT16, ms, fs, H5P_DEFAULT, toks.data()), 0);
      H5Sclose(ms);
      H5Sclose(fs);
    }
    H5Dclose(d);
    H5Pclose(dcpl);
    H5Sclose(s);
    // /doc_offsets
    hid_t ot = H5Tcopy(H5T_STD_U64LE);
    H5Tset_precision(ot, 64);
    H5Tset_size(ot, l.offsets_bytes);
    n = offs.size();
    s = H5Screate_simple(1, &n, nullptr);
    d = H5Dcreate2(f, "doc_offsets", ot, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(d, 0);
    ASSERT_GE(H5Dwrite(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, offs.data()), 0);
    H5Dclose(d);
    H5Sclose(s);
    H5Tclose(ot);
    H5Fclose(f);
  };
  auto expect_loads = [&](const std::string& path) {
    std::vector<int32_t> t;
    std::vector<uint64_t> o;
    ShardInfo in = read_shard(path, t, o);
    EXPECT_EQ(in.tokenizer, "spm:0123");
    EXPECT_EQ(t, std::vector<int32_t>(toks.begin(), toks.end()));
    EXPECT_EQ(o, offs);
  };

  write(tmp / "plain.h5", {});
  expect_loads(tmp / "plain.h5");
  write(tmp / "chunked.h5", {.chunk = 2});
  expect_loads(tmp / "chunked.h5");
  // h5py's fixed-length strings used to lose their last character ("bt-token").
  write(tmp / "fixed.h5", {.fixed_strings = true});
  expect_loads(tmp / "fixed.h5");

  // Only the first chunk of /tokens written: the rest would read as fill values (zeros).
  write(tmp / "unallocated.h5", {.chunk = 2, .written = 2});
  expect_error([&] { read_shard_info(tmp / "unallocated.h5"); },
               {tmp / "unallocated.h5", "/tokens has 5 elements but only 1 of its 3 chunks are stored"});
  // A chunk larger than any shard writes (HDF5 would allocate it whole to read one element).
  write(tmp / "hugechunk.h5", {.chunk = hsize_t(1) << 26, .written = 0});
  expect_error([&] { read_shard_info(tmp / "hugechunk.h5"); },
               {tmp / "hugechunk.h5", "/tokens uses chunks of 67108864 elements"});
  // The fuzzer's 1.28 GB allocation: /doc_offsets with integers of ~427 MB each.
  write(tmp / "wideoffsets.h5", {.offsets_bytes = 16});
  expect_error([&] { read_shard_info(tmp / "wideoffsets.h5"); },
               {tmp / "wideoffsets.h5", "/doc_offsets must hold integers of at most 64 bits"});
  // Data in another file.
  write_text(tmp / "ext.bin", std::string(10, 'x'));
  write(tmp / "external.h5", {.external = tmp / "ext.bin"});
  expect_error([&] { read_shard_info(tmp / "external.h5"); }, {tmp / "external.h5", "external files"});
}

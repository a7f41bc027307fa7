// Shard identity and read integrity (docs/data.md "Integrity"): shards checked against manifest.json
// when a run opens them (a deleted, unlisted, resized or corrupted shard, another tokenizer, the
// output of an unfinished `bt prepare`), checksums split over ranks; a shard truncated while open
// and a dataset with unwritten chunks reported instead of read as zeros; `bt prepare` with
// invalid UTF-8 (error | replace, counted) and on a full disk (file size limit): exit 1 with one
// line, no HDF5 crash at exit, no shard that looks finished.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <hdf5.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/checksum.h"
#include "core/error.h"
#include "data/h5.h"
#include "data/loader.h"
#include "data/manifest.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "data/utf8.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace bt;

namespace {

using bt::test::error_of;
using bt::test::TempDir;

// Text of `docs` documents of about 60 bytes each, blank-line separated.
std::string corpus(int docs) {
  std::ostringstream s;
  for (int d = 0; d < docs; ++d) s << "document " << d << " says the quick brown fox jumps over dog " << d * 7 << "\n\n";
  return s.str();
}

// A byte-tokenized corpus of several train shards (no val) in dir.
void prepare_corpus(const std::string& dir, const std::string& text, uint64_t shard_tokens) {
  const std::string in = dir + ".txt";
  std::ofstream(in, std::ios::binary) << text;
  PrepareOptions o;
  o.inputs = {in};
  o.out = dir;
  o.val_fraction = 0;
  o.shard_tokens = shard_tokens;
  o.progress = false;
  run_prepare(o);
}

LoaderOptions opts(bool verify = true, int rank = 0, int world = 1) {
  LoaderOptions o;
  o.context_length = 16;
  o.global_batch = o.micro_batch = 1;
  o.vocab_size = 257;
  o.verify_checksums = verify;
  o.rank = rank;
  o.world = world;
  return o;
}

void flip_byte(const std::string& path, uint64_t at) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(std::streamoff(at));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x01);
  f.seekp(std::streamoff(at));
  f.write(&c, 1);
}

// The offset of the first chunk of /tokens in a shard file.
uint64_t tokens_offset(const std::string& path) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t d = H5Dopen2(f, "tokens", H5P_DEFAULT);
  haddr_t addr = 0;
  hsize_t off[1] = {0}, size = 0;
  unsigned mask = 0;
  H5Dget_chunk_info_by_coord(d, off, &mask, &addr, &size);
  H5Dclose(d);
  H5Fclose(f);
  return uint64_t(addr);
}

using bt::test::bt_binary;

}  // namespace

TEST(Manifest, PrepareRecordsChecksumsAndFinishes) {
  TempDir tmp;
  const std::string dir = tmp / "c";
  prepare_corpus(dir, corpus(40), 600);
  const nlohmann::json m = nlohmann::json::parse(std::ifstream(dir + "/manifest.json"));
  ASSERT_GE(m["shards"].size(), 3u);
  for (const auto& s : m["shards"]) {
    const std::string p = dir + "/" + s["file"].get<std::string>();
    EXPECT_EQ(s["xxh3"], xxh3_file(p));
    EXPECT_EQ(s["bytes"], fs::file_size(p));
  }
  EXPECT_FALSE(fs::exists(dir + "/" + kPrepareMarker));
  EXPECT_NO_THROW(open_shard_source(dir + "/train-*.h5", opts()));
}

TEST(Manifest, DeletedUnlistedResizedAndCorruptShardsAreErrors) {
  TempDir tmp;
  const std::string dir = tmp / "c";
  prepare_corpus(dir, corpus(40), 600);
  const std::string glob = dir + "/train-*.h5", s1 = dir + "/train-00001.h5";
  fs::copy_file(s1, tmp / "keep.h5");

  // Deleted: the glob no longer matches it, the manifest still lists it.
  fs::remove(s1);
  EXPECT_HAS(error_of([&] { open_shard_source(glob, opts()); }), "lists shard 'train-00001.h5'");
  // A subset named explicitly is fine.
  EXPECT_NO_THROW(open_shard_source(dir + "/train-00000.h5", opts()));
  fs::copy_file(tmp / "keep.h5", s1);

  // Not listed: a stray file that the glob picks up.
  fs::copy_file(s1, dir + "/train-00077.h5");
  EXPECT_HAS(error_of([&] { open_shard_source(glob, opts()); }), "'" + dir + "/train-00077.h5' is not listed");
  fs::remove(dir + "/train-00077.h5");

  // Another size (HDF5 itself ignores bytes after its end of file).
  { std::ofstream(s1, std::ios::app | std::ios::binary) << "x"; }
  EXPECT_HAS(error_of([&] { open_shard_source(glob, opts()); }), "bytes but");
  fs::copy_file(tmp / "keep.h5", s1, fs::copy_options::overwrite_existing);

  // One flipped byte in the token data: same size, valid token ids, another checksum.
  flip_byte(s1, tokens_offset(s1) + 10);
  EXPECT_HAS(error_of([&] { open_shard_source(glob, opts()); }), "does not match its checksum");
  // Without verification only the size is checked.
  EXPECT_NO_THROW(open_shard_source(glob, opts(false)));
  // On 2 ranks shard 1 is hashed by rank 1 only: rank 0 reads the corpus's other half.
  EXPECT_NO_THROW(open_shard_source(glob, opts(true, 0, 2)));
  EXPECT_HAS(error_of([&] { open_shard_source(glob, opts(true, 1, 2)); }), "train-00001.h5' does not match");
  fs::copy_file(tmp / "keep.h5", s1, fs::copy_options::overwrite_existing);

  // A manifest of another tokenizer.
  nlohmann::json m = nlohmann::json::parse(std::ifstream(dir + "/manifest.json"));
  const nlohmann::json orig = m;
  m["tokenizer"] = "spm:0000";
  std::ofstream(dir + "/manifest.json") << m.dump();
  EXPECT_HAS(error_of([&] { open_shard_source(glob, opts()); }), "records spm:0000");
  std::ofstream(dir + "/manifest.json") << orig.dump();
  EXPECT_NO_THROW(open_shard_source(glob, opts()));
}

TEST(Manifest, UnfinishedPrepareIsRefusedAndForeignShardsWarned) {
  TempDir tmp;
  const std::string dir = tmp / "c";
  prepare_corpus(dir, corpus(20), 600);
  const std::string glob = dir + "/train-*.h5";
  fs::remove(dir + "/manifest.json");
  // Shards without a manifest and without any sign of `bt prepare`: used, with a warning.
  EXPECT_NO_THROW(open_shard_source(glob, opts()));
  std::ofstream(dir + "/" + kPrepareMarker) << "pid 1\n";
  EXPECT_HAS(error_of([&] { open_shard_source(glob, opts()); }), "has not finished");
  fs::remove(dir + "/" + kPrepareMarker);
  fs::copy_file(dir + "/train-00000.h5", dir + "/train-00009.h5.tmp");
  EXPECT_HAS(error_of([&] { open_shard_source(glob, opts()); }), "has not finished");
}

TEST(ShardRead, TruncatedWhileOpenIsAnErrorNotZeros) {
  TempDir tmp;
  // 3 chunks of 1M tokens; the last one is cut off after the file was opened.
  const uint64_t n = 3 * kShardChunkElems;
  std::vector<int32_t> tokens(n);
  for (uint64_t i = 0; i < n; ++i) tokens[i] = 1 + int32_t(i % 200);
  tokens.back() = 0;
  const std::string path = tmp / "big.h5";
  write_shard(path, {257, 0, "byte"}, tokens, {0});
  ShardFile f(path);
  std::vector<int32_t> out(1000);
  f.read_tokens(n - 1000, 1000, out.data());
  EXPECT_EQ(out[0], tokens[n - 1000]);
  fs::resize_file(path, fs::file_size(path) - kShardChunkElems);
  EXPECT_HAS(error_of([&] { f.read_tokens(n - 2000, 1000, out.data()); }), "shrank");
  // Through the loader's source as well.
  write_shard(tmp / "b2.h5", {257, 0, "byte"}, tokens, {0});
  auto src = open_shard_source(tmp / "b2.h5", opts());
  fs::resize_file(tmp / "b2.h5", fs::file_size(tmp / "b2.h5") / 2);
  std::vector<uint8_t> mask(1000);
  EXPECT_HAS(error_of([&] { src->read(n - 1000, 1000, out.data(), mask.data()); }), "truncated");
}

TEST(ShardRead, UnwrittenChunksAreAnError) {
  TempDir tmp;
  const std::string path = tmp / "holes.h5";
  {
    // A shard whose /tokens has 2 chunks of which only the first was ever written.
    h5::init();
    hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    h5::write_string_attr(f, "format", kShardFormat, "t");
    h5::write_int_attr(f, "version", kShardVersion, "t");
    h5::write_int_attr(f, "vocab_size", 257, "t");
    h5::write_int_attr(f, "eos_id", 0, "t");
    h5::write_string_attr(f, "tokenizer", "byte", "t");
    hsize_t dims[1] = {2 * 1024}, chunk[1] = {1024};
    hid_t sp = H5Screate_simple(1, dims, nullptr);
    hid_t pl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(pl, 1, chunk);
    H5Pset_alloc_time(pl, H5D_ALLOC_TIME_INCR);
    hid_t d = H5Dcreate2(f, "tokens", H5T_STD_U16LE, sp, H5P_DEFAULT, pl, H5P_DEFAULT);
    std::vector<uint16_t> first(1024, 5);
    hsize_t off[1] = {0};
    H5Sselect_hyperslab(sp, H5S_SELECT_SET, off, nullptr, chunk, nullptr);
    hid_t ms = H5Screate_simple(1, chunk, nullptr);
    ASSERT_GE(H5Dwrite(d, H5T_NATIVE_UINT16, ms, sp, H5P_DEFAULT, first.data()), 0);
    hsize_t one[1] = {1};
    hid_t osp = H5Screate_simple(1, one, nullptr);
    hid_t od = H5Dcreate2(f, "doc_offsets", H5T_STD_U64LE, osp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    const uint64_t zero = 0;
    H5Dwrite(od, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, &zero);
    H5Dclose(od);
    H5Sclose(osp);
    H5Sclose(ms);
    H5Dclose(d);
    H5Pclose(pl);
    H5Sclose(sp);
    H5Fclose(f);
  }
  EXPECT_HAS(error_of([&] { ShardFile f(path); }), "/tokens has 2048 elements but only 1 of its 2 chunks are stored");
  // A last chunk that is only partly filled is complete (2 chunks for 1M + 123 tokens).
  std::vector<int32_t> t(kShardChunkElems + 123, 7);
  t.back() = 0;
  write_shard(tmp / "partial.h5", {257, 0, "byte"}, t, {0});
  EXPECT_NO_THROW(ShardFile f(tmp / "partial.h5"));
  std::vector<int32_t> tt;
  std::vector<uint64_t> oo;
  EXPECT_NO_THROW(read_shard(tmp / "partial.h5", tt, oo));
}

TEST(Utf8, MaximalSubpartsAsPythonReplaces) {
  // bytes.decode("utf-8", "replace") of the Unicode standard's example (Table 3-8) and others.
  const std::string R = "\xEF\xBF\xBD";
  struct Case {
    std::string in, out;
    uint64_t bad;
  };
  const Case cases[] = {
      {"\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64", "a" + R + R + R + "b" + R + "c" + R + R + "d", 9},
      {"\xED\xA0\x80", R + R + R, 3},          // a surrogate
      {"\xC0\x80", R + R, 2},                  // overlong
      {"\xF4\x90\x80\x80", R + R + R + R, 4},  // above U+10FFFF
      {"ok\xE2\x82", "ok" + R, 2},             // cut short
      {"\xE2\x82\xAC \xF0\x9F\x98\x80", "\xE2\x82\xAC \xF0\x9F\x98\x80", 0},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(utf8_invalid_bytes(c.in), c.bad);
    EXPECT_EQ(utf8_first_invalid(c.in) == std::string_view::npos, c.bad == 0);
    const std::string s = utf8_repair(c.in);
    EXPECT_EQ(s, c.out);
    EXPECT_EQ(utf8_first_invalid(s), std::string_view::npos);
  }
  EXPECT_EQ(utf8_first_invalid("ab\xC3(cd"), 2u);
}

TEST(Utf8, PrepareErrorsOrReplacesAndCounts) {
  TempDir tmp;
  // Line 3 holds 0xFF and a lone continuation byte (2 bad bytes); line 5 one more.
  std::string text = corpus(30);
  text = "first line\nsecond\nbad \xFF here \x80 x\n\nnext\nagain \xC3 end\n\n" + text;
  std::ofstream(tmp / "in.txt", std::ios::binary) << text;
  PrepareOptions o;
  o.inputs = {tmp / "in.txt"};
  o.val_fraction = 0;
  o.progress = false;

  o.out = tmp / "err";
  o.tokenizer = "train-spm:300";
  o.on_invalid_utf8 = "error";
  const std::string e = error_of([&] { run_prepare(o); });
  EXPECT_HAS(e, tmp / "in.txt" + ":3: not valid UTF-8 (byte 0xff at column 5)");
  EXPECT_HAS(e, "--on-invalid-utf8 replace");

  o.out = tmp / "spm";
  o.on_invalid_utf8 = "replace";
  PrepareSummary s = run_prepare(o);
  EXPECT_EQ(s.invalid_utf8_bytes, 3u);
  EXPECT_EQ(s.invalid_utf8_lines, 2u);
  EXPECT_TRUE(s.invalid_utf8_replaced);
  EXPECT_EQ(s.invalid_utf8_first, tmp / "in.txt" + ":3");
  auto tok = load_tokenizer_from_dir(tmp / "spm");
  std::vector<int32_t> ids;
  std::vector<uint64_t> offs;
  read_shard(tmp / "spm/train-00000.h5", ids, offs);
  std::vector<int32_t> first(ids.begin(), ids.begin() + int64_t(offs[1]));
  EXPECT_EQ(tok->decode(first), "first line\nsecond\nbad \xEF\xBF\xBD here \xEF\xBF\xBD x");
  const nlohmann::json m = nlohmann::json::parse(std::ifstream(tmp / "spm/manifest.json"));
  EXPECT_EQ(m["invalid_utf8_bytes"], 3);

  // The byte tokenizer keeps the bytes (and counts them).
  o.out = tmp / "byte";
  o.tokenizer = "byte";
  s = run_prepare(o);
  EXPECT_EQ(s.invalid_utf8_bytes, 3u);
  EXPECT_FALSE(s.invalid_utf8_replaced);
  ids.clear();
  offs.clear();
  read_shard(tmp / "byte/train-00000.h5", ids, offs);
  std::vector<int32_t> b(ids.begin(), ids.begin() + int64_t(offs[1]) - 1);
  EXPECT_EQ(make_byte_tokenizer()->decode(b), "first line\nsecond\nbad \xFF here \x80 x");
}

TEST(PrepareCli, FullDiskIsOneLineAndExitOneNotACrash) {
  const std::string bt = bt_binary();
  if (bt.empty()) GTEST_SKIP() << "BT_BINARY not set and no bt next to the tests";
  TempDir tmp;
  // Shards of 20000 tokens (40 KB) fit; the one holding the last, 80 KB document does not.
  std::ofstream(tmp / "in.txt", std::ios::binary) << corpus(1000) << std::string(40000, 'z') << "\n";
  const std::string out = tmp / "out", log = tmp / "log";
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // A 64 KiB file size limit: the first shards fit, a later one fails with EFBIG, as on a full disk.
    signal(SIGXFSZ, SIG_IGN);
    rlimit r{64 << 10, 64 << 10};
    setrlimit(RLIMIT_FSIZE, &r);
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 2);
    ::dup2(fd, 1);
    ::execl(bt.c_str(), bt.c_str(), "prepare", "--input", (tmp / "in.txt").c_str(), "--out", out.c_str(),
            "--val-fraction", "0", "--shard-tokens", "20000", "--no-progress", (char*)nullptr);
    ::_exit(127);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  std::ifstream lf(log);
  const std::string text((std::istreambuf_iterator<char>(lf)), std::istreambuf_iterator<char>());
  ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << WTERMSIG(status) << ": " << text;
  EXPECT_EQ(WEXITSTATUS(status), 1) << text;
  EXPECT_HAS(text, "File too large");
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1) << text;
  for (const auto& e : fs::directory_iterator(out)) EXPECT_NE(e.path().extension(), ".tmp") << e.path();
  // The shards it did finish are refused as the output of an unfinished run.
  EXPECT_TRUE(fs::exists(out + "/train-00000.h5"));
  EXPECT_HAS(error_of([&] { open_shard_source(out + "/train-*.h5", opts()); }), "has not finished");
}

// Integrity of what a run reads back (docs/checkpoints.md "Integrity"): safetensors whose data
// offsets overlap, leave holes or trailing bytes; checkpoints whose files changed after the save
// (checksums.json: flipped bytes, truncation, a missing file); non-finite weights and optimizer
// moments refused by tensor name; a failed save (file size limit standing in for a full disk)
// leaving nothing behind and `latest` unchanged; leftovers of killed writers; the messages of
// resolve_checkpoint for an empty or partial directory; the out_dir lock; the config validator's
// checkpoint_every 0 / keep_checkpoints <= 0 / vanilla block_length rules.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/checksum.h"
#include "core/error.h"
#include "core/rng.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/params.h"
#include "model/safetensors.h"
#include "tests/test_util.h"
#include "train/run_lock.h"

using namespace bt;
namespace fs = std::filesystem;

namespace {

using TmpDir = bt::test::TempDir;
using bt::test::error_of;

Config tiny_config() {
  Config c;
  c.name = "integrity_test";
  c.model.vocab_size = 40;
  c.model.context_length = 16;
  c.model.block_length = 4;
  c.model.embedder_dim = 4;
  c.model.block_decoder = {1, 16, 2, 32, 0};
  c.model.token_decoder = {1, 16, 2, 32, 2};
  c.data.synthetic = "repeat:7";
  return c;
}

using bt::test::random_flat;

std::string save(const std::string& root, int64_t step, const Config& c, const ParamTable& t, const float* w,
                 const std::vector<SafetensorOut>& opt = {}) {
  CheckpointContents cc;
  cc.step = step;
  cc.config = &c;
  cc.table = &t;
  cc.params = w;
  cc.optimizer = opt;
  return save_checkpoint(root, cc, 0);
}

// A safetensors file from a hand-written header and data section.
void write_raw(const std::string& path, const std::string& header, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  uint64_t n = header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << header << data;
}

void flip_byte(const std::string& path, uint64_t at) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(std::streamoff(at));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x10);
  f.seekp(std::streamoff(at));
  f.write(&c, 1);
}

}  // namespace

TEST(Checksum, Xxh3KnownValuesAndFiles) {
  // XXH3-64 with seed 0 of "" and "a" (xxhash's reference values).
  EXPECT_EQ(xxh3_hex(""), "2d06800538d394c2");
  EXPECT_EQ(xxh3_hex("a"), "e6c632b61e964e1f");
  TmpDir tmp("xxh3");
  std::string big(3 << 20, 'x');
  for (size_t i = 0; i < big.size(); i += 7) big[i] = char(i);
  std::ofstream(tmp / "f", std::ios::binary) << big;
  uint64_t n = 0;
  EXPECT_EQ(xxh3_file(tmp / "f", &n), xxh3_hex(big));
  EXPECT_EQ(n, big.size());
  Xxh3 h;
  h.update(big.data(), 1000);
  h.update(big.data() + 1000, big.size() - 1000);
  EXPECT_EQ(h.hex(), xxh3_hex(big));
}

TEST(Safetensors, OverlapsHolesAndTrailingBytesAreRefused) {
  TmpDir tmp("offsets");
  const std::string data(16, '\0');
  // Two tensors reading the same bytes.
  write_raw(tmp / "overlap.safetensors",
            R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
            data.substr(0, 12));
  EXPECT_HAS(error_of([&] { SafetensorsReader r(tmp / "overlap.safetensors"); }), "overlaps tensor 'a'");
  // A hole between tensors.
  write_raw(tmp / "hole.safetensors",
            R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
            data);
  EXPECT_HAS(error_of([&] { SafetensorsReader r(tmp / "hole.safetensors"); }), "4 bytes before tensor 'b'");
  // Bytes after the last tensor.
  write_raw(tmp / "tail.safetensors", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", data);
  EXPECT_HAS(error_of([&] { SafetensorsReader r(tmp / "tail.safetensors"); }), "trailing garbage");
  // A shape whose byte count overflows.
  write_raw(tmp / "huge.safetensors",
            R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", "");
  EXPECT_HAS(error_of([&] { SafetensorsReader r(tmp / "huge.safetensors"); }), "more than 2^64 bytes");
  // Zero-size tensors anywhere, and tensors listed out of order, are fine.
  write_raw(tmp / "ok.safetensors",
            R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"e":{"dtype":"F32","shape":[0],"data_offsets":[8,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
            data);
  EXPECT_NO_THROW(SafetensorsReader r(tmp / "ok.safetensors"));
  // A directory is named as one.
  EXPECT_HAS(error_of([&] { SafetensorsReader r(tmp.str()); }), "is a directory");
}

TEST(CheckpointIntegrity, ChecksumsAreRecordedAndVerified) {
  TmpDir tmp("sums");
  const Config c = tiny_config();
  ParamTable t(c.model);
  const std::vector<float> w = random_flat(t, 1);
  const std::vector<float> m = random_flat(t, 2);
  const std::string dir = save(tmp / "ck", 10, c, t, w.data(), flat_tensors(t, m.data(), ".exp_avg"));
  const nlohmann::json sums = nlohmann::json::parse(std::ifstream(fs::path(dir) / "checksums.json"));
  EXPECT_EQ(sums["algorithm"], "xxh3-64");
  for (const char* f : {"model.safetensors", "optimizer.safetensors", "trainer_state.json", "config.yaml"}) {
    ASSERT_TRUE(sums["files"].contains(f)) << f;
    EXPECT_EQ(sums["files"][f]["xxh3"], xxh3_file((fs::path(dir) / f).string())) << f;
    EXPECT_EQ(sums["files"][f]["bytes"], fs::file_size(fs::path(dir) / f)) << f;
  }
  EXPECT_TRUE(verify_checkpoint(dir));
  std::vector<float> back(t.total());
  load_weights((fs::path(dir) / "model.safetensors").string(), t, back.data());
  EXPECT_EQ(back, w);

  // A byte flipped in the tensor data of a copy (a new path: nothing is remembered as verified).
  const std::string bad = tmp / "ck/step_00000011";
  fs::copy(dir, bad, fs::copy_options::recursive);
  const std::string model = bad + "/model.safetensors";
  flip_byte(model, fs::file_size(model) - 100);
  std::string e = error_of([&] { verify_checkpoint(bad); });
  EXPECT_HAS(e, "model.safetensors does not match the checksum");
  // The hint names the newest earlier checkpoint.
  EXPECT_HAS(e, "step_00000010");
  // The same through load_weights on the file alone (the checksums.json next to it).
  EXPECT_HAS(error_of([&] { load_weights(model, t, back.data()); }), "does not match the checksum");
  // Truncated.
  fs::resize_file(model, fs::file_size(model) - 4);
  EXPECT_HAS(error_of([&] { verify_checkpoint(bad); }), "was written with");
  // A listed file removed.
  fs::remove(bad + "/config.yaml");
  fs::copy_file(dir + "/model.safetensors", model, fs::copy_options::overwrite_existing);
  EXPECT_HAS(error_of([&] { verify_checkpoint(bad); }), "config.yaml is missing");
  // Without checksums.json (an older checkpoint) nothing is verified and the weights load.
  fs::remove(bad + "/checksums.json");
  EXPECT_FALSE(verify_checkpoint(bad));
  EXPECT_NO_THROW(load_weights(model, t, back.data()));
}

TEST(CheckpointIntegrity, NonFiniteWeightsAreRefusedByName) {
  TmpDir tmp("nan");
  const Config c = tiny_config();
  ParamTable t(c.model);
  std::vector<float> w = random_flat(t, 3);
  const auto& victim = t.entries()[3];
  w[victim.offset + 5] = std::nanf("");
  write_safetensors(tmp / "nan.safetensors", flat_tensors(t, w.data(), ""));
  std::vector<float> back(t.total());
  const std::string e = error_of([&] { load_weights(tmp / "nan.safetensors", t, back.data()); });
  EXPECT_HAS(e, "'" + victim.name + "'");
  EXPECT_HAS(e, "non-finite");
  EXPECT_HAS(e, "index 5");
  // Optimizer moments too.
  std::vector<float> m = random_flat(t, 4);
  m[t.entries()[1].offset] = INFINITY;
  write_safetensors(tmp / "opt.safetensors", flat_tensors(t, m.data(), ".exp_avg_sq"));
  SafetensorsReader r(tmp / "opt.safetensors");
  EXPECT_HAS(error_of([&] { load_flat_by_suffix(r, t, ".exp_avg_sq", back.data()); }),
             t.entries()[1].name + ".exp_avg_sq");
}

TEST(CheckpointIntegrity, FailedSaveLeavesNothingAndLatestUnchanged) {
  TmpDir tmp("full");
  const Config c = tiny_config();
  ParamTable t(c.model);
  const std::vector<float> w = random_flat(t, 5);
  const std::string root = tmp / "ck";
  const std::string first = save(root, 1, c, t, w.data());
  // A file size limit stands in for a full disk: writes fail with EFBIG instead of ENOSPC.
  struct sigaction ign {}, old {};
  ign.sa_handler = SIG_IGN;
  sigaction(SIGXFSZ, &ign, &old);
  rlimit saved{};
  getrlimit(RLIMIT_FSIZE, &saved);
  rlimit small = saved;
  small.rlim_cur = 2048;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string e;
  try {
    save(root, 2, c, t, w.data());
  } catch (const Error& err) {
    e = err.what();
  }
  setrlimit(RLIMIT_FSIZE, &saved);
  sigaction(SIGXFSZ, &old, nullptr);
  EXPECT_HAS(e, "write failed");
  EXPECT_HAS(e, "checkpoint of step 2 not saved");
  EXPECT_HAS(e, "latest still points at");
  for (const auto& d : fs::directory_iterator(root))
    EXPECT_EQ(d.path().filename().string().find(".tmp-"), std::string::npos) << "leftover " << d.path();
  EXPECT_EQ(find_latest_checkpoint(root), fs::weakly_canonical(first).string());
  EXPECT_EQ(list_checkpoints(root).size(), 1u);
}

TEST(CheckpointIntegrity, LeftoversOfLiveWritersAreKeptUnlessTheLockIsHeld) {
  TmpDir tmp("leftovers");
  const std::string root = tmp / "ck";
  // pid 1 is alive: without the lock its directory might be a live writer's.
  fs::create_directories(root + "/step_00000005.tmp-1");
  fs::create_directories(root + "/step_00000004.del-1");
  clean_checkpoint_leftovers(root, false);
  EXPECT_TRUE(fs::exists(root + "/step_00000005.tmp-1"));
  clean_checkpoint_leftovers(root, true);
  EXPECT_FALSE(fs::exists(root + "/step_00000005.tmp-1"));
  EXPECT_FALSE(fs::exists(root + "/step_00000004.del-1"));
}

TEST(CheckpointIntegrity, ResolveNamesWhatADirectoryIs) {
  TmpDir tmp("resolve");
  fs::create_directories(tmp / "empty");
  std::string e = error_of([&] { resolve_checkpoint(tmp / "empty"); });
  EXPECT_HAS(e, "is not a checkpoint: the directory is empty");
  EXPECT_EQ(e.find("incomplete"), std::string::npos) << e;
  fs::create_directories(tmp / "other");
  std::ofstream(tmp / "other/notes.txt") << "x";
  EXPECT_HAS(error_of([&] { resolve_checkpoint(tmp / "other"); }), "holds no model.safetensors");
  // A checkpoint being written (files but no COMPLETE) is the interrupted case.
  fs::create_directories(tmp / "partial");
  std::ofstream(tmp / "partial/model.safetensors") << "x";
  EXPECT_HAS(error_of([&] { resolve_checkpoint(tmp / "partial"); }), "is incomplete");
  // A checkpoints folder without `latest` names its checkpoints.
  const Config c = tiny_config();
  ParamTable t(c.model);
  const std::vector<float> w = random_flat(t, 6);
  save(tmp / "ck", 3, c, t, w.data());
  fs::remove(tmp / "ck/latest");
  EXPECT_HAS(error_of([&] { resolve_checkpoint(tmp / "ck"); }), "step_00000003");
}

TEST(RunLock, OneHolderAtATimeNamedInTheError) {
  TmpDir tmp("lock");
  const std::string out = tmp / "run";
  {
    RunLock first(out);
    // A second holder (another open file description: flock conflicts even within one process).
    const std::string e = error_of([&] { RunLock second(out); });
    EXPECT_HAS(e, "is in use by another `bt train`");
    EXPECT_HAS(e, "pid " + std::to_string(::getpid()));
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    EXPECT_HAS(e, std::string("host ") + host);
  }
  // Released with its holder.
  EXPECT_NO_THROW(RunLock again(out));
}

TEST(ConfigRules, CheckpointIntervalsAndVanillaBlockLength) {
  const std::string src = std::getenv("BT_SOURCE_DIR") ? std::getenv("BT_SOURCE_DIR") : ".";
  const std::string block = src + "/configs/tiny/block_b4.yaml", vanilla = src + "/configs/tiny/vanilla.yaml";
  // docs/checkpoints.md: 0 = only at the end; <= 0 keeps all.
  EXPECT_EQ(load_config(block, {"train.checkpoint_every=0"}).train.checkpoint_every, 0);
  EXPECT_EQ(load_config(block, {"train.keep_checkpoints=0"}).train.keep_checkpoints, 0);
  EXPECT_EQ(load_config(block, {"train.keep_checkpoints=-1"}).train.keep_checkpoints, -1);
  EXPECT_HAS(error_of([&] { load_config(block, {"train.checkpoint_every=-1"}); }), "train.checkpoint_every must be >= 0");
  // A vanilla model has no blocks.
  EXPECT_HAS(error_of([&] { load_config(vanilla, {"model.block_length=8"}); }),
             "model.block_length is set (8) but model.kind is vanilla");
  // At the default value it is only named in a warning: vanilla checkpoints written before the
  // rule carry `block_length: 4` in their config.yaml and must still load.
  const std::string dflt = std::to_string(ModelConfig{}.block_length);
  std::string text;
  {
    std::ifstream in(vanilla);
    std::ostringstream os;
    os << in.rdbuf();
    text = os.str();
  }
  const size_t at = text.find("\nmodel:\n");
  ASSERT_NE(at, std::string::npos);
  text.insert(at + 8, "  block_length: " + dflt + "\n");
  const int line = 1 + static_cast<int>(std::count(text.begin(), text.begin() + at + 8, '\n'));
  testing::internal::CaptureStderr();
  const Config old = parse_config(text, "old/config.yaml");
  const std::string warned = testing::internal::GetCapturedStderr();
  EXPECT_EQ(old.model.kind, "vanilla");
  EXPECT_HAS(warned, "warning: old/config.yaml:" + std::to_string(line) +
                         ": model.block_length is ignored: model.kind is vanilla");
  testing::internal::CaptureStderr();
  load_config(vanilla, {"model.block_length=" + dflt});
  EXPECT_HAS(testing::internal::GetCapturedStderr(), "override 'model.block_length=" + dflt + "': model.block_length is ignored");
  testing::internal::CaptureStderr();
  load_config(vanilla);
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
  const Config v = load_config(vanilla);
  EXPECT_EQ(to_yaml(v).find("block_length"), std::string::npos) << to_yaml(v);
  EXPECT_EQ(parse_config(to_yaml(v), "x"), parse_config(to_yaml(v), "x"));
  EXPECT_EQ(to_yaml(parse_config(to_yaml(v), "x")), to_yaml(v));
  // data.verify_checksums round-trips.
  EXPECT_FALSE(load_config(block, {"data.verify_checksums=false"}).data.verify_checksums);
}

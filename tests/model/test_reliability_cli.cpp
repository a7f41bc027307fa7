// The `bt` command line (BT_BINARY) under misuse and damage, on a tiny CPU model: one run per
// out_dir (the lock names the holder; an earlier run is not silently replaced; leftovers of a
// failed save are cleaned at the next start), shards of another tokenizer (train's data.val,
// eval's data vs the checkpoint), a corrupted or non-finite checkpoint, a diverged run (no
// checkpoint of a NaN step), resuming at or past train.steps, `bt generate` / `bt eval` /
// `bt bench infer` options, and the continuation decoded together with its prompt.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "data/prepare.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "model/checkpoint.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace bt;

namespace {

using bt::test::env_or;

using bt::test::bt_binary;

struct Result {
  int rc = -1;
  std::string out;  // stdout and stderr
};

// Runs `bt ARGS` through the shell, output captured.
Result run_bt(const std::string& args) {
  const std::string cmd = bt_binary() + " " + args + " 2>&1";
  Result r;
  FILE* p = ::popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int st = ::pclose(p);
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

#define EXPECT_HAS(text, needle) EXPECT_NE(std::string(text).find(needle), std::string::npos) << (text)

// The error line of a failed command (the last line starting with "error: ").
std::string error_line(const Result& r) {
  const size_t at = r.out.rfind("error: ");
  return at == std::string::npos ? "" : r.out.substr(at, r.out.find('\n', at) - at);
}

const std::string kTiny =
    " model.vocab_size=260 model.context_length=16 model.embedder.dim=8 model.block_decoder.dim=32"
    " model.block_decoder.heads=2 model.block_decoder.ffn_dim=64 model.token_decoder.dim=32"
    " model.token_decoder.heads=2 model.token_decoder.ffn_dim=64 train.micro_batch=2 train.global_batch=2"
    " train.device=cpu train.precision=fp32 train.log_every=1 train.eval_batches=1 optim.warmup_steps=2 ";

std::string config() { return " --config " + env_or("BT_SOURCE_DIR", ".") + "/configs/tiny/block_b4.yaml "; }

class ReliabilityCli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (bt_binary().empty()) GTEST_SKIP() << "BT_BINARY not set and no bt next to the tests";
    dir_ = fs::temp_directory_path() / ("bt_reliability_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& s) const { return (dir_ / s).string(); }

  // A byte-tokenized corpus prepared in-process (manifest, tokenizer.json), for data.train/val.
  std::string corpus(const std::string& name) {
    const std::string in = path(name + ".txt");
    std::ofstream f(in);
    for (int d = 0; d < 300; ++d) f << "In the beginning document " << d << " was the word and more words\n\n";
    f.close();
    PrepareOptions o;
    o.inputs = {in};
    o.out = path(name);
    o.val_fraction = 0.1;
    o.progress = false;
    run_prepare(o);
    return " data.train=" + path(name) + "/train-*.h5 data.val=" + path(name) + "/val-*.h5 ";
  }
  // A checkpoint of a 2-step run on the corpus; returns its run directory.
  std::string trained(const std::string& data) {
    const std::string run = path("trained");
    if (!fs::exists(run)) {
      Result r = run_bt("train" + config() + kTiny + data + "train.steps=2 train.checkpoint_every=1 train.out_dir=" + run);
      EXPECT_EQ(r.rc, 0) << r.out;
    }
    return run;
  }

  fs::path dir_;
};

}  // namespace

TEST_F(ReliabilityCli, OneRunPerOutDir) {
  const std::string data = corpus("c");
  const std::string out = path("run");
  // A long run in the background, stopped with SIGTERM once the second one has been refused.
  const std::string cmd = bt_binary() + config() + kTiny + data + "train.steps=100000 train.eval_every=100000 "
                          "train.checkpoint_every=100000 train.out_dir=" + out;
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string c = "exec " + bt_binary() + " train" + cmd.substr(bt_binary().size()) + " > " + path("bg.log") + " 2>&1";
    ::execl("/bin/sh", "sh", "-c", c.c_str(), (char*)nullptr);
    ::_exit(127);
  }
  // The holder writes its host and pid into the lock file once it holds the lock.
  const std::string lockfile = out + "/.bt-train.lock";
  for (int i = 0; i < 600 && !(fs::exists(out + "/metrics.jsonl") && fs::file_size(lockfile) > 0); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_TRUE(fs::exists(out + "/metrics.jsonl")) << std::ifstream(path("bg.log")).rdbuf();
  Result second = run_bt("train" + config() + kTiny + data + "train.steps=3 train.out_dir=" + out);
  EXPECT_EQ(second.rc, 1) << second.out;
  EXPECT_HAS(error_line(second), "is in use by another `bt train`");
  EXPECT_HAS(error_line(second), "pid " + std::to_string(pid));
  ::kill(pid, SIGTERM);
  int st = 0;
  ::waitpid(pid, &st, 0);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << std::ifstream(path("bg.log")).rdbuf();

  // The stopped run left a checkpoint: a fresh run into its out_dir is refused ...
  ASSERT_FALSE(list_checkpoints(out + "/checkpoints").empty());
  Result fresh = run_bt("train" + config() + kTiny + data + "train.steps=2 train.out_dir=" + out);
  EXPECT_EQ(fresh.rc, 1) << fresh.out;
  EXPECT_HAS(error_line(fresh), "holds the checkpoints of an earlier run");
  EXPECT_HAS(error_line(fresh), "--overwrite");
  // ... unless asked to replace it, which deletes the old checkpoints and metrics first.
  fs::create_directories(out + "/checkpoints/step_00000099.tmp-1");  // a leftover of a live pid
  Result over = run_bt("train" + config() + kTiny + data + "train.steps=1 train.out_dir=" + out + " --overwrite");
  EXPECT_EQ(over.rc, 0) << over.out;
  const auto cks = list_checkpoints(out + "/checkpoints");
  ASSERT_EQ(cks.size(), 1u);
  EXPECT_EQ(cks[0].first, 1);
  EXPECT_FALSE(fs::exists(out + "/checkpoints/step_00000099.tmp-1"));
  std::ifstream m(out + "/metrics.jsonl");
  int lines = 0;
  for (std::string l; std::getline(m, l);) lines += l.find("\"loss\"") != std::string::npos;
  EXPECT_EQ(lines, 1);
}

TEST_F(ReliabilityCli, LeftoversAreCleanedWhenARunStarts) {
  const std::string out = path("run");
  fs::create_directories(out + "/checkpoints/step_00000005.tmp-1");  // pid 1 is alive, yet not a bt writer here
  fs::create_directories(out + "/checkpoints/step_00000004.del-1");
  // Started on a "full disk" it would die before its first save; the leftovers go first.
  Result r = run_bt("train" + config() + kTiny + "data.train= data.val= data.synthetic=repeat:7:2000 train.steps=1 "
                "train.out_dir=" + out + " --resume auto");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_FALSE(fs::exists(out + "/checkpoints/step_00000005.tmp-1"));
  EXPECT_FALSE(fs::exists(out + "/checkpoints/step_00000004.del-1"));
}

TEST_F(ReliabilityCli, ShardsOfAnotherTokenizer) {
  const std::string data = corpus("c");
  // Shards of another tokenizer with the same vocabulary size.
  fs::create_directories(path("other"));
  std::vector<int32_t> toks;
  for (int i = 0; i < 400; ++i) toks.push_back(i % 50 == 49 ? 256 : 65 + i % 26);
  toks.back() = 256;
  write_shard(path("other/val-00000.h5"), {257, 256, "spm:0123"}, toks, {0});
  Result r = run_bt("train" + config() + kTiny + data + " data.val=" + path("other/val-*.h5") +
                " train.steps=1 train.out_dir=" + path("run"));
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_HAS(error_line(r), "data.val '" + path("other/val-*.h5") + "' was made with tokenizer spm:0123");
  const std::string run = trained(data);
  r = run_bt("eval --ckpt " + run + " --data '" + path("other/val-*.h5") + "'");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_HAS(error_line(r), "were made with tokenizer spm:0123 but the checkpoint");
  r = run_bt("eval --ckpt " + run);  // its own data.val
  EXPECT_EQ(r.rc, 0) << r.out;
}

TEST_F(ReliabilityCli, DamagedCheckpoints) {
  const std::string run = trained(corpus("c"));
  const std::string ck = find_latest_checkpoint(run + "/checkpoints");
  // One flipped byte in the weights: eval, generate and resume all refuse it.
  fs::copy(run, path("flip"), fs::copy_options::recursive | fs::copy_options::copy_symlinks);
  const std::string model = path("flip/checkpoints/") + fs::path(ck).filename().string() + "/model.safetensors";
  {
    std::fstream f(model, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(std::streamoff(fs::file_size(model) - 64));
    f.put('\x7f');
  }
  for (const std::string& cmd : {"eval --ckpt " + path("flip"), "generate --ckpt " + path("flip") + " --prompt In",
                                 "train --resume " + path("flip/checkpoints/latest") + " train.steps=3"}) {
    Result r = run_bt(cmd);
    EXPECT_EQ(r.rc, 1) << cmd << "\n" << r.out;
    EXPECT_HAS(error_line(r), "model.safetensors does not match the checksum");
  }
  // Non-finite weights in a checkpoint without checksums (an older one): refused by name.
  fs::copy(run, path("nan"), fs::copy_options::recursive | fs::copy_options::copy_symlinks);
  const std::string dir = path("nan/checkpoints/") + fs::path(ck).filename().string();
  fs::remove(dir + "/checksums.json");
  {
    SafetensorsReader rd(dir + "/model.safetensors");
    const SafetensorInfo& t = rd.info("token_decoder.embed_out.weight");
    const uint64_t data_start = fs::file_size(dir + "/model.safetensors") - rd.tensors().back().end;
    std::fstream f(dir + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(std::streamoff(data_start + t.begin + 8));
    const float nan = std::nanf("");
    f.write(reinterpret_cast<const char*>(&nan), 4);
  }
  Result r = run_bt("eval --ckpt " + path("nan"));
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_HAS(r.out, "has no checksums.json");
  EXPECT_HAS(error_line(r), "tensor 'token_decoder.embed_out.weight' holds 1 non-finite values");
  // An empty directory is not blamed on an interrupted write.
  fs::create_directories(path("empty"));
  r = run_bt("eval --ckpt " + path("empty"));
  EXPECT_HAS(error_line(r), "is not a checkpoint: the directory is empty");
}

TEST_F(ReliabilityCli, ADivergedRunSavesNoCheckpointOfTheBadStep) {
  const std::string data = corpus("c");
  const std::string out = path("run");
  Result r = run_bt("train" + config() + kTiny + data + "train.steps=2 train.checkpoint_every=1 train.out_dir=" + out);
  ASSERT_EQ(r.rc, 0) << r.out;
  // A huge lr: step 3's update makes the weights useless, the validation loss at step 3 is NaN.
  r = run_bt("train" + config() + kTiny + data + "train.steps=5 train.checkpoint_every=1 train.eval_every=1 "
         "optim.lr=1e37 optim.warmup_steps=0 optim.schedule=constant train.out_dir=" + out + " --resume auto");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_HAS(error_line(r), "step 3: the validation loss is not finite");
  EXPECT_HAS(error_line(r), "latest stays at");
  EXPECT_EQ(list_checkpoints(out + "/checkpoints").back().first, 2);
  EXPECT_EQ(fs::path(find_latest_checkpoint(out + "/checkpoints")).filename(), "step_00000002");
  // An overflow straight to inf in the weights is caught when saving, even without validation.
  r = run_bt("train" + config() + kTiny + data + "train.steps=5 train.checkpoint_every=1 train.eval_every=100 "
         "optim.lr=1e39 optim.warmup_steps=0 optim.schedule=constant train.out_dir=" + out + " --resume auto");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_HAS(error_line(r), "holds a non-finite value");
  EXPECT_EQ(list_checkpoints(out + "/checkpoints").back().first, 2);
}

TEST_F(ReliabilityCli, ResumeAtOrPastTrainSteps) {
  const std::string run = trained(corpus("c"));
  Result r = run_bt("train --resume " + run + "/checkpoints/latest");  // at train.steps = 2
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_HAS(r.out, "already at train.steps = 2: nothing to train");
  r = run_bt("train --resume " + run + "/checkpoints/latest train.steps=1");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_HAS(error_line(r), "the checkpoint is at step 2, past train.steps = 1");
  // --init-from takes a checkpoint directory.
  r = run_bt("train" + config() + kTiny + "data.train= data.val= data.synthetic=repeat:7:2000 train.steps=1 train.out_dir=" +
         path("ft") + " --init-from " + run + "/checkpoints/latest");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_HAS(r.out, "init-from");
}

TEST_F(ReliabilityCli, GenerateEvalAndBenchOptions) {
  const std::string run = trained(corpus("c"));
  const std::string g = "generate --ckpt " + run + " --max-new-tokens 2 --greedy ";
  // An override after --prompt is an override, not a second prompt.
  Result r = run_bt(g + "--prompt 'In the' train.seed=3");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_HAS(r.out, "=== sample 1");
  EXPECT_EQ(r.out.find("=== sample 2"), std::string::npos) << r.out;
  r = run_bt(g + "--prompt 'In the' children");
  EXPECT_EQ(r.rc, 1);
  EXPECT_HAS(error_line(r), "'children' is neither an option nor a section.key=value override");
  r = run_bt(g + "--prompt a --temperature nan");
  EXPECT_EQ(r.rc, 1);
  EXPECT_HAS(error_line(r), "--temperature must be a finite number");
  r = run_bt("generate --ckpt " + run + " --prompt a --max-new-tokens -5");
  EXPECT_EQ(r.rc, 1);
  EXPECT_EQ(r.out.find("warning"), std::string::npos) << r.out;
  EXPECT_HAS(error_line(r), "--max-new-tokens must be >= 0 (got -5)");
  r = run_bt(g + "--prompt a --top-p 0");
  EXPECT_HAS(error_line(r), "--top-p must be in (0, 1]");

  for (const std::string bad : {"--batch-size 0", "--batch-size -4", "--batches -1"}) {
    r = run_bt("eval --ckpt " + run + " " + bad);
    EXPECT_EQ(r.rc, 1) << bad << "\n" << r.out;
    EXPECT_HAS(error_line(r), bad.substr(0, bad.find(' ')) + " must be");
  }
  // A prompt longer than the context: refused at once.
  r = run_bt("bench infer" + config() + "--prefill-heavy 300:10 --settings prefill --batch 1");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_HAS(error_line(r), "the prompt of 300 tokens exceeds model.context_length 256");
  r = run_bt("bench infer" + config() + "--decode-heavy 4:300 --settings decode --batch 1");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_HAS(error_line(r), "300 generated tokens exceed model.context_length 256");
}

TEST(DecodeContinuation, SentencePieceSpaceBetweenPromptAndContinuation) {
  // A small SentencePiece model, where "children" alone decodes without its word-initial space.
  std::vector<std::string> lines;
  for (int i = 0; i < 400; ++i)
    lines.push_back(std::string(i % 2 ? "In the children of the land" : "the children said unto them") +
                    " and the people " + std::to_string(i % 13));
  SpmTrainOptions o;
  o.vocab_size = 300;
  auto tok = train_spm_tokenizer(lines, o);
  const auto all = tok->encode("In the children");
  const auto prompt = tok->encode("In the");
  ASSERT_LT(prompt.size(), all.size());
  ASSERT_TRUE(std::equal(prompt.begin(), prompt.end(), all.begin()));
  const std::vector<int32_t> cont(all.begin() + int64_t(prompt.size()), all.end());
  EXPECT_EQ(tok->decode(cont), "children");  // decoded apart: the space is lost
  EXPECT_EQ("In the" + decode_continuation(*tok, prompt, cont), "In the children");
  // The byte tokenizer joins nothing.
  auto byte = make_byte_tokenizer();
  EXPECT_EQ(decode_continuation(*byte, byte->encode("ab"), byte->encode(" c")), " c");
}

// Crash safety of checkpoints (docs/design.md §6): `bt train` (BT_BINARY) writing a checkpoint after every
// step is killed with SIGKILL at random moments, again and again (each run resumes with
// --resume auto); after every kill `latest` must point at a complete checkpoint that loads
// (weights, optimizer state, trainer state), and the step it holds never goes backwards. Then a
// SIGTERM makes the run save a checkpoint and exit 0.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "core/error.h"
#include "core/rng.h"
#include "model/checkpoint.h"
#include "tests/test_util.h"

extern char** environ;

using namespace bt;
namespace fs = std::filesystem;

namespace {

using bt::test::env_or;

using bt::test::bt_binary;

std::vector<std::string> train_args(const std::string& out_dir) {
  return {bt_binary(),
          "train",
          "--config",
          env_or("BT_SOURCE_DIR", ".") + "/configs/tiny/block_b4.yaml",
          "--resume",
          "auto",
          "model.vocab_size=128",
          "model.context_length=32",
          "model.embedder.dim=8",
          "model.block_decoder.dim=32",
          "model.block_decoder.heads=2",
          "model.block_decoder.ffn_dim=64",
          "model.token_decoder.dim=32",
          "model.token_decoder.heads=2",
          "model.token_decoder.ffn_dim=64",
          "data.train=",
          "data.val=",
          "data.synthetic=repeat:37:20000",
          "train.micro_batch=4",
          "train.global_batch=4",
          "train.steps=1000000",
          "train.checkpoint_every=1",
          "train.keep_checkpoints=2",
          "train.log_every=1000",
          "train.eval_every=100000",
          "train.device=cpu",
          "train.precision=fp32",
          "train.out_dir=" + out_dir};
}

pid_t spawn(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  EXPECT_EQ(rc, 0) << "cannot start " << args[0] << " (set BT_BINARY)";
  return pid;
}

// Checks that `latest` resolves to a complete, loadable checkpoint; returns its step (-1: none yet).
int64_t check_latest(const std::string& root) {
  std::error_code ec;
  if (!fs::is_symlink(fs::path(root) / "latest", ec) && !fs::exists(fs::path(root) / "latest", ec)) return -1;
  const std::string dir = resolve_checkpoint(root + "/latest");  // throws when incomplete
  EXPECT_TRUE(fs::exists(fs::path(dir) / "COMPLETE"));
  const Config cfg = load_checkpoint_config(dir);
  ParamTable table(cfg.model);
  std::vector<float> flat(table.total());
  EXPECT_TRUE(load_weights(dir + "/model.safetensors", table, flat.data()).empty());
  SafetensorsReader opt(dir + "/optimizer.safetensors");
  std::vector<float> m(table.total());
  EXPECT_TRUE(load_flat_by_suffix(opt, table, ".exp_avg", m.data()));
  EXPECT_TRUE(load_flat_by_suffix(opt, table, ".exp_avg_sq", m.data()));
  const nlohmann::json st = load_trainer_state(dir);
  const int64_t step = st["step"].get<int64_t>();
  EXPECT_EQ(fs::path(dir).filename().string(), checkpoint_dir_name(step));
  return step;
}

}  // namespace

TEST(Crash, SigkillWhileCheckpointingLeavesLatestComplete) {
  const fs::path tmp = fs::temp_directory_path() / ("bt_crash_" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  const std::string root = (tmp / "checkpoints").string();
  const auto args = train_args(tmp.string());
  Rng rng(2024);
  int64_t last_step = -1;
  int kills_with_checkpoint = 0;
  ::setenv("OMP_NUM_THREADS", "1", 1);  // the children's speed does not matter, only their files
  // Polls until `latest` holds a step beyond `after` (the child resumed and saved); false on timeout.
  auto wait_for_progress = [&](int64_t after, int timeout_ms) {
    for (int waited = 0; waited < timeout_ms; waited += 10) {
      try {
        if (check_latest(root) > after) return true;
      } catch (const std::exception&) {
        // `latest` is replaced by rename(2), so a reader never sees it half-written; a failure
        // here would be caught by the checks after the kill.
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  };
  for (int round = 0; round < 10; ++round) {
    const pid_t pid = spawn(args);
    ASSERT_GT(pid, 0);
    // Once this run has saved at least one checkpoint of its own, kill it at a random moment: it
    // writes a checkpoint after every step, so most kills land inside a save.
    const bool progressed = wait_for_progress(last_step, 30000);
    const int ms = static_cast<int>(rng.below(150));
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(progressed) << "bt train made no checkpoint within 30 s; run it by hand: " << args[0] << " train ...";
    ASSERT_TRUE(WIFSIGNALED(status)) << "bt train exited before it was killed (status " << status << ")";
    int64_t step = -1;
    ASSERT_NO_THROW(step = check_latest(root)) << "round " << round;
    EXPECT_GT(step, last_step) << "latest went backwards";
    ++kills_with_checkpoint;
    last_step = std::max(last_step, step);
    std::error_code ec;
    int leftovers = 0;
    for (const auto& e : fs::directory_iterator(root, ec))
      leftovers += e.path().filename().string().find(".tmp-") != std::string::npos;
    std::printf("round %d: killed %d ms after its first save, latest = step %lld%s\n", round, ms,
                static_cast<long long>(step), leftovers ? " (a checkpoint was being written)" : "");
  }
  EXPECT_EQ(kills_with_checkpoint, 10);
  EXPECT_GT(last_step, 0);

  // SIGTERM: save and exit 0.
  const pid_t pid = spawn(args);
  // Wait for this run to make progress past the previous checkpoint, then ask it to stop.
  ASSERT_TRUE(wait_for_progress(last_step, 30000));
  std::this_thread::sleep_for(std::chrono::milliseconds(rng.below(100)));
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << "bt train did not exit normally on SIGTERM (status " << status << ")";
  EXPECT_EQ(WEXITSTATUS(status), 0);
  const int64_t final_step = check_latest(root);
  EXPECT_GT(final_step, last_step);
  // The checkpoint of a clean stop is the step it stopped at, and no leftovers remain.
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string n = e.path().filename().string();
    EXPECT_EQ(n.find(".tmp-"), std::string::npos) << n;
    EXPECT_EQ(n.find(".del-"), std::string::npos) << n;
  }
  EXPECT_LE(list_checkpoints(root).size(), 2u);  // keep_checkpoints
  fs::remove_all(tmp);
}

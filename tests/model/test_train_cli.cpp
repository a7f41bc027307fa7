// `bt train` end to end on the tiny block config: 200 steps on a synthetic stream with
// structure (a random 37-token pattern repeated) must cut the loss by at least 2 nats, and the
// run directory must hold metrics.jsonl with the documented fields.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace {
using bt::test::env_or;
}  // namespace

TEST(TrainCli, TinyBlockLearnsARepeatingPattern) {
  const std::string bt = env_or("BT_BINARY", "bt");
  const std::string src = env_or("BT_SOURCE_DIR", ".");
  const fs::path out = fs::temp_directory_path() / ("bt_train_cli_" + std::to_string(::getpid()));
  fs::remove_all(out);
  // Micro batch 4 keeps this under a minute on 2 cores; the model is the tiny config as is.
  const std::string cmd = bt + " train --config " + src + "/configs/tiny/block_b4.yaml train.steps=200 " +
                          "train.global_batch=4 train.micro_batch=4 train.log_every=10 train.device=cpu " +
                          "train.checkpoint_every=100000 data.train= data.val= data.synthetic=repeat:37 " +
                          "train.out_dir=" + out.string() + " > " + (out.string() + ".log") + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd << "\n" << std::ifstream(out.string() + ".log").rdbuf();
  std::ifstream in(out / "metrics.jsonl");
  ASSERT_TRUE(in) << "no metrics.jsonl in " << out;
  double first = -1, last = -1;
  int lines = 0;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (!j.contains("loss")) continue;
    for (const char* k : {"step", "loss", "lr", "grad_norm", "tokens_per_s"}) ASSERT_TRUE(j.contains(k)) << k;
    if (first < 0) first = j["loss"].get<double>();
    last = j["loss"].get<double>();
    ++lines;
  }
  EXPECT_GE(lines, 20);
  std::printf("loss %.4f -> %.4f\n", first, last);
  EXPECT_GE(first - last, 2.0);
  fs::remove_all(out);
  fs::remove(out.string() + ".log");
}

// train.stop_step (the official stop_steps) and train.keep_every on the CPU: a run stopped at
// step S of an N-step schedule has at S exactly the lr, losses and weights of the full run at S
// (not those of an S-step schedule), writes a checkpoint there, does nothing when started again
// with the same config, continues bit for bit to N when the stop is lifted, and refuses a
// checkpoint past its stop. keep_every keeps every checkpoint at its multiples besides the last K.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "../test_util.h"
#include "model/checkpoint.h"
#include "optim/lr_schedule.h"
#include "train/comm.h"
#include "train/trainer.h"

using namespace bt;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kSteps = 40, kStop = 15;

Config block_config(const std::string& out_dir, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> ov = {
      "model.vocab_size=128", "model.context_length=32", "model.embedder.dim=8", "model.block_decoder.layers=1",
      "model.block_decoder.dim=32", "model.block_decoder.heads=2", "model.block_decoder.ffn_dim=64",
      "model.token_decoder.layers=1", "model.token_decoder.dim=32", "model.token_decoder.heads=2",
      "model.token_decoder.ffn_dim=64", "data.train=", "data.val=", "data.synthetic=repeat:37:20000",
      "train.micro_batch=4", "train.global_batch=8", "train.steps=" + std::to_string(kSteps),
      "train.checkpoint_every=1000", "train.out_dir=" + out_dir, "train.device=cpu", "train.precision=fp32",
      "optim.warmup_steps=5", "train.eval_every=1000", "train.log_every=1"};
  ov.insert(ov.end(), extra.begin(), extra.end());
  return load_config(test::env_or("BT_SOURCE_DIR", ".") + "/configs/tiny/block_b4.yaml", ov);
}

// step -> lr of metrics.jsonl's training rows.
std::map<int64_t, double> logged_lrs(const std::string& out_dir) {
  std::map<int64_t, double> lrs;
  std::ifstream in(fs::path(out_dir) / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("lr")) lrs[j["step"].get<int64_t>()] = j["lr"].get<double>();
  }
  return lrs;
}

std::vector<float> weights(Trainer& t) {
  std::vector<float> w(t.model().table().total());
  t.model().get_params(w.data(), DType::f32);
  return w;
}

class StopStep : public ::testing::Test {
 protected:
  void SetUp() override { omp_set_num_threads(std::min(2, omp_get_max_threads())); }
  test::TempDir tmp_{"stop_step"};
  std::unique_ptr<Communicator> comm_ = make_single_communicator();
  TrainOptions quiet_ = [] {
    TrainOptions o;
    o.quiet = true;
    return o;
  }();
};

TEST_F(StopStep, LrAtTheStopIsTheFullSchedulesAndTheRunContinuesBitForBit) {
  // The whole schedule in one run.
  Trainer full(block_config(tmp_ / "full"), *comm_, quiet_);
  full.run();
  ASSERT_EQ(full.step(), kSteps);
  const std::vector<double> full_losses = full.losses();
  const std::map<int64_t, double> full_lr = logged_lrs(tmp_ / "full");

  // Stopped at step 15 of the same 40-step schedule.
  const std::string out = tmp_ / "stopped";
  {
    Trainer t(block_config(out, {"train.stop_step=" + std::to_string(kStop)}), *comm_, quiet_);
    t.run();
    EXPECT_EQ(t.step(), kStop);
    EXPECT_FALSE(t.stopped_early());  // the planned end, not a preemption
    ASSERT_EQ(t.losses().size(), size_t(kStop));
    for (int64_t s = 0; s < kStop; ++s)
      EXPECT_EQ(std::memcmp(&t.losses()[s], &full_losses[s], sizeof(double)), 0) << "loss of step " << s + 1;
  }
  const std::map<int64_t, double> lr = logged_lrs(out);
  ASSERT_EQ(lr.size(), size_t(kStop));
  EXPECT_EQ(lr.rbegin()->first, kStop);
  const Config cfg = block_config(out);
  // The lr of the last step taken (step 15, 0-based 14) is the 40-step schedule's, bit for bit,
  // and not that of a schedule shortened to 15 steps (what train.steps=15 would give).
  EXPECT_EQ(lr.at(kStop), lr_at(cfg.optim, kStop - 1, kSteps));
  EXPECT_EQ(lr.at(kStop), full_lr.at(kStop));
  EXPECT_GT(std::abs(lr.at(kStop) - lr_at(cfg.optim, kStop - 1, kStop)), 1e-5);
  for (const auto& [s, v] : lr) EXPECT_EQ(v, full_lr.at(s)) << "lr of step " << s;
  // A checkpoint at the stop, recording that lr.
  const std::string ck = find_latest_checkpoint(tmp_ / "stopped/checkpoints");
  ASSERT_EQ(fs::path(ck).filename(), "step_00000015");
  EXPECT_EQ(load_trainer_state(ck)["lr"].get<double>(), lr_at(cfg.optim, kStop - 1, kSteps));

  // Started again with the same config: already at the stop, nothing trained, no new checkpoint.
  {
    TrainOptions o = quiet_;
    o.resume = "auto";
    Trainer t(block_config(out, {"train.stop_step=" + std::to_string(kStop)}), *comm_, o);
    t.run();
    EXPECT_EQ(t.step(), kStop);
    EXPECT_TRUE(t.losses().empty());
    EXPECT_EQ(list_checkpoints(tmp_ / "stopped/checkpoints").size(), 1u);
  }
  // A stop before the checkpoint: refused, naming the key.
  {
    TrainOptions o = quiet_;
    o.resume = "auto";
    Trainer t(block_config(out, {"train.stop_step=10"}), *comm_, o);
    EXPECT_NE(test::error_of([&] { t.run(); }).find("past train.stop_step = 10: raise train.stop_step"),
              std::string::npos);
  }
  // The stop lifted: it continues on the same schedule and ends where the full run ended.
  TrainOptions o = quiet_;
  o.resume = "auto";
  Trainer rest(block_config(out), *comm_, o);
  EXPECT_EQ(rest.step(), kStop);
  rest.run();
  EXPECT_EQ(rest.step(), kSteps);
  ASSERT_EQ(rest.losses().size(), size_t(kSteps - kStop));
  for (int64_t s = kStop; s < kSteps; ++s)
    EXPECT_EQ(std::memcmp(&rest.losses()[s - kStop], &full_losses[s], sizeof(double)), 0) << "loss of step " << s + 1;
  const std::vector<float> a = weights(full), b = weights(rest);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << "final weights differ";
  const std::map<int64_t, double> after = logged_lrs(out);
  for (const auto& [s, v] : full_lr) EXPECT_EQ(after.at(s), v) << "lr of step " << s;
}

TEST_F(StopStep, KeepEveryKeepsItsMultiplesBesidesTheLastK) {
  // Checkpoints at 4, 8, .., 24; the last 2 (20, 24) and the multiples of 8 (8, 16) stay.
  Trainer t(block_config(tmp_ / "keep", {"train.steps=24", "train.checkpoint_every=4", "train.keep_checkpoints=2",
                                         "train.keep_every=8"}),
            *comm_, quiet_);
  t.run();
  std::vector<int64_t> steps;
  for (const auto& [s, dir] : list_checkpoints(tmp_ / "keep/checkpoints")) steps.push_back(s);
  EXPECT_EQ(steps, (std::vector<int64_t>{8, 16, 20, 24}));
}

}  // namespace

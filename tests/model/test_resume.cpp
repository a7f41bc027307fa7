// Exact resume on the CPU (docs/design.md §6, 9.5): 40 steps straight equal 20 steps, a checkpoint, a new
// trainer resuming from it, and 20 more steps: every logged loss, every final weight and every
// AdamW moment identical bit for bit. Block (with the padding options, gradient accumulation) and
// vanilla, on the tiny configs shrunk to run in seconds.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <filesystem>

#include "model/checkpoint.h"
#include "train/comm.h"
#include "train/trainer.h"

using namespace bt;
namespace fs = std::filesystem;

namespace {

std::string source_dir() {
  const char* s = std::getenv("BT_SOURCE_DIR");
  return s ? s : ".";
}

Config tiny(const std::string& kind, const std::string& out_dir) {
  std::vector<std::string> ov = {"model.vocab_size=128", "model.context_length=32", "data.train=", "data.val=",
                                 "data.synthetic=repeat:37:20000", "train.micro_batch=4", "train.global_batch=8",
                                 "train.steps=40", "train.checkpoint_every=1000", "train.keep_checkpoints=3",
                                 "train.out_dir=" + out_dir, "train.device=cpu", "train.precision=fp32",
                                 "optim.warmup_steps=5", "train.eval_every=1000", "train.log_every=1000"};
  std::string file;
  if (kind == "block") {
    file = source_dir() + "/configs/tiny/block_b4.yaml";
    for (std::string s : {"model.embedder.dim=8", "model.block_decoder.layers=2", "model.block_decoder.dim=32",
                          "model.block_decoder.heads=2", "model.block_decoder.ffn_dim=64",
                          "model.token_decoder.layers=1", "model.token_decoder.dim=32", "model.token_decoder.heads=2",
                          "model.token_decoder.ffn_dim=64", "data.random_pad_first_block=true",
                          "data.pad_to_block_boundary=true"})
      ov.push_back(s);
  } else {
    file = source_dir() + "/configs/tiny/vanilla.yaml";
    for (std::string s : {"model.decoder.layers=2", "model.decoder.dim=32", "model.decoder.heads=2",
                          "model.decoder.ffn_dim=64"})
      ov.push_back(s);
  }
  return load_config(file, ov);
}

struct RunResult {
  std::vector<double> losses;
  std::vector<float> params, m, v;
  int64_t step = 0;
};

RunResult snapshot(Trainer& t, std::vector<double> losses) {
  RunResult r;
  r.losses = std::move(losses);
  const size_t n = t.model().table().total();
  r.params.resize(n);
  t.model().get_params(r.params.data(), DType::f32);
  r.m.resize(n);
  r.v.resize(n);
  t.optimizer().get_state(r.m.data(), r.v.data(), nullptr);
  r.step = t.step();
  return r;
}

void check_resume(const std::string& kind) {
  // At most 2 threads (what ctest asks for): an OpenMP reduction over more threads combines its
  // partial sums in arrival order, which would make even two straight runs differ in the last bit.
  omp_set_num_threads(std::min(2, omp_get_max_threads()));
  const fs::path tmp = fs::temp_directory_path() / ("bt_resume_" + kind + "_" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  auto comm = make_single_communicator();
  TrainOptions quiet;
  quiet.quiet = true;

  // 40 steps straight.
  Trainer straight(tiny(kind, (tmp / "straight").string()), *comm, quiet);
  straight.run();
  RunResult a = snapshot(straight, straight.losses());
  ASSERT_EQ(a.losses.size(), 40u);

  // 20 steps, stop (as if preempted: a checkpoint is written), then a new process-like trainer.
  std::vector<double> losses;
  {
    TrainOptions o = quiet;
    o.stop_after = 20;
    Trainer first(tiny(kind, (tmp / "split").string()), *comm, o);
    first.run();
    EXPECT_TRUE(first.stopped_early());
    losses = first.losses();
    ASSERT_EQ(losses.size(), 20u);
  }
  const std::string ck = find_latest_checkpoint((tmp / "split" / "checkpoints").string());
  ASSERT_FALSE(ck.empty());
  EXPECT_EQ(fs::path(ck).filename().string(), "step_00000020");
  {
    TrainOptions o = quiet;
    o.resume = "auto";
    Trainer second(tiny(kind, (tmp / "split").string()), *comm, o);
    EXPECT_EQ(second.step(), 20);
    second.run();
    EXPECT_FALSE(second.stopped_early());
    for (double l : second.losses()) losses.push_back(l);
    RunResult b = snapshot(second, losses);
    EXPECT_EQ(b.step, 40);
    ASSERT_EQ(b.losses.size(), a.losses.size());
    for (size_t i = 0; i < a.losses.size(); ++i)
      EXPECT_EQ(std::memcmp(&a.losses[i], &b.losses[i], sizeof(double)), 0)
          << kind << ": loss of step " << i + 1 << ": " << a.losses[i] << " straight vs " << b.losses[i] << " resumed";
    EXPECT_EQ(std::memcmp(a.params.data(), b.params.data(), a.params.size() * 4), 0) << kind << ": final weights differ";
    EXPECT_EQ(std::memcmp(a.m.data(), b.m.data(), a.m.size() * 4), 0) << kind << ": Adam first moments differ";
    EXPECT_EQ(std::memcmp(a.v.data(), b.v.data(), a.v.size() * 4), 0) << kind << ": Adam second moments differ";
  }
  // Both runs end with a final checkpoint at step 40 holding the same weights.
  const std::string fa = find_latest_checkpoint((tmp / "straight" / "checkpoints").string());
  const std::string fb = find_latest_checkpoint((tmp / "split" / "checkpoints").string());
  EXPECT_EQ(fs::path(fa).filename().string(), "step_00000040");
  EXPECT_EQ(fs::path(fb).filename().string(), "step_00000040");
  const nlohmann::json sa = load_trainer_state(fa), sb = load_trainer_state(fb);
  EXPECT_EQ(sa["loader"], sb["loader"]);
  EXPECT_EQ(sa["tokens_seen"], sb["tokens_seen"]);
  EXPECT_EQ(sa["rng"], sb["rng"]);
  fs::remove_all(tmp);
}

}  // namespace

TEST(Resume, BlockIsBitExact) { check_resume("block"); }
TEST(Resume, VanillaIsBitExact) { check_resume("vanilla"); }

TEST(Resume, RejectsAnotherModel) {
  const fs::path tmp = fs::temp_directory_path() / ("bt_resume_other_" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  auto comm = make_single_communicator();
  TrainOptions o;
  o.quiet = true;
  o.stop_after = 1;
  {
    Trainer t(tiny("vanilla", tmp.string()), *comm, o);
    t.run();
  }
  Config other = tiny("vanilla", tmp.string());
  other.model.decoder.layers = 3;
  TrainOptions r;
  r.quiet = true;
  r.resume = "auto";
  try {
    Trainer t(other, *comm, r);
    FAIL() << "resuming a 2-layer checkpoint into a 3-layer model must fail";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("model.decoder.layers"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
  fs::remove_all(tmp);
}

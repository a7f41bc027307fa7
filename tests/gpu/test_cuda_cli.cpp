// The command line on the CUDA backend, end to end: `bt train` with train.device=cuda in bf16
// (gradient accumulation, checkpoints with master weights and moments), resuming on the device
// from a mid-run checkpoint (bit-exact), and the inference tools reading a checkpoint written
// from the device: `bt eval` and cached greedy `bt generate` on cuda (fp32) agree with the CPU.
// BT_BINARY is `bt` (GPU builds) or `bt-simt` (the SIMT emulator build of these tests).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "model/backend.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace {

using bt::test::env_or;

// A block model small enough for the emulator: D = 32, two layers each, V = 64, L = 32.
const char* kModel =
    " model.vocab_size=64 model.context_length=32 model.block_length=4 model.embedder.dim=8"
    " model.block_decoder.dim=32 model.block_decoder.heads=2 model.block_decoder.ffn_dim=64"
    " model.token_decoder.dim=32 model.token_decoder.heads=2 model.token_decoder.ffn_dim=64";

class CudaCli : public testing::Test {
 protected:
  void SetUp() override {
    if (!bt::cuda_available()) GTEST_SKIP() << "no GPU";
    bt_ = env_or("BT_BINARY", "bt");
    src_ = env_or("BT_SOURCE_DIR", ".");
    dir_ = fs::temp_directory_path() / ("bt_cuda_cli_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (!dir_.empty() && !HasFailure()) fs::remove_all(dir_);
  }
  // Runs bt with `args`; returns stdout, fails the test (with the output) on a non-zero exit.
  std::string run(const std::string& args) {
    const std::string log = (dir_ / "log.txt").string();
    const std::string cmd = bt_ + " " + args + " > " + log + " 2>&1";
    const int rc = std::system(cmd.c_str());
    std::ifstream in(log);
    std::stringstream ss;
    ss << in.rdbuf();
    EXPECT_EQ(rc, 0) << cmd << "\n" << ss.str();
    return ss.str();
  }
  std::string train_args(const fs::path& out, int steps) const {
    return "train --config " + src_ + "/configs/tiny/block_b4.yaml" + kModel +
           " data.train= data.val= data.synthetic=repeat:13 train.device=cuda train.precision=bf16"
           " train.global_batch=4 train.micro_batch=2 train.log_every=1 train.checkpoint_every=4 train.eval_every=1000"
           " optim.warmup_steps=2 train.steps=" +
           std::to_string(steps) + " train.out_dir=" + out.string();
  }
  static std::vector<double> losses(const fs::path& metrics) {
    std::vector<double> r;
    std::ifstream in(metrics);
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      if (j.contains("loss")) r.push_back(j["loss"].get<double>());
    }
    return r;
  }
  static std::string bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  std::string bt_, src_;
  fs::path dir_;
};

TEST_F(CudaCli, TrainResumeEvalAndGenerateOnTheDevice) {
  // 8 steps straight; then steps 5..8 again from the straight run's step-4 checkpoint.
  const fs::path a = dir_ / "a", b = dir_ / "b";
  run(train_args(a, 8));
  const fs::path ck4 = a / "checkpoints" / "step_00000004", ck8 = a / "checkpoints" / "step_00000008";
  ASSERT_TRUE(fs::exists(ck4 / "COMPLETE")) << "no step-4 checkpoint in " << a;
  ASSERT_TRUE(fs::exists(ck8 / "COMPLETE"));
  run(train_args(b, 8) + " --resume " + ck4.string());
  const auto la = losses(a / "metrics.jsonl"), lb = losses(b / "metrics.jsonl");
  ASSERT_EQ(la.size(), 8u);
  ASSERT_EQ(lb.size(), 4u) << "the resumed run should log steps 5..8 only";
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(la[4 + i], lb[i]) << "loss of step " << i + 5 << " after resuming";
  EXPECT_LT(la.back(), la.front()) << "the loss did not fall";
  const fs::path bk8 = b / "checkpoints" / "step_00000008";
  EXPECT_EQ(bytes(ck8 / "model.safetensors"), bytes(bk8 / "model.safetensors")) << "weights differ after resuming";
  EXPECT_EQ(bytes(ck8 / "optimizer.safetensors"), bytes(bk8 / "optimizer.safetensors"))
      << "optimizer state differs after resuming";

  // The device-written checkpoint in the inference tools, fp32 on both devices.
  std::vector<int32_t> toks(4 * 32);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = int32_t((i * 7 + 3) % 64);
  const fs::path tf = dir_ / "tokens.bin";
  std::ofstream(tf, std::ios::binary).write(reinterpret_cast<const char*>(toks.data()), 4 * toks.size());
  auto eval = [&](const char* device) {
    const std::string out = run("eval --ckpt " + ck8.string() + " --tokens-file " + tf.string() +
                                " --json --device " + device + " train.precision=fp32");
    const auto j = nlohmann::json::parse(out.substr(out.find('{')));
    return j["loss"].get<double>();
  };
  const double ec = eval("cpu"), eg = eval("cuda");
  EXPECT_NEAR(eg, ec, 1e-5 * ec) << "bt eval: cuda " << eg << " vs cpu " << ec;
  auto generate = [&](const char* device, const char* extra) {
    const std::string out = run("generate --ckpt " + ck8.string() +
                                " --prompt-ids '1 2 3 4 5' --prompt-ids '9' --max-new-tokens 10 --greedy"
                                " --print-ids --eos-id -1 --device " + device + " train.precision=fp32" + extra);
    std::string ids;
    std::istringstream in(out);
    for (std::string line; std::getline(in, line);)
      if (line.find("ids") != std::string::npos) ids += line + "\n";
    return ids;
  };
  const std::string gc = generate("cpu", ""), gg = generate("cuda", ""), gn = generate("cuda", " --naive");
  EXPECT_FALSE(gc.empty()) << "no ids printed";
  EXPECT_EQ(gg, gc) << "greedy generation, cuda (KV caches) vs cpu";
  EXPECT_EQ(gg, gn) << "greedy generation on cuda, KV caches vs naive";
  std::printf("losses %.4f -> %.4f; eval cpu %.6f cuda %.6f\n%s", la.front(), la.back(), ec, eg, gg.c_str());
}

}  // namespace

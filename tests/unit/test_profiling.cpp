// The profiling decorator changes no result and accounts every op of a training step.
#include <gtest/gtest.h>

#include "model/cpu/cpu_backend.h"
#include "model/model.h"
#include "model/profiling_backend.h"

using namespace bt;

TEST(ProfilingBackend, SameLossAndGradientsAndEveryGroupTimed) {
  ModelConfig m;
  m.kind = "block";
  m.vocab_size = 19;
  m.context_length = 16;
  m.block_length = 4;
  m.embedder_dim = 4;
  m.block_decoder = {1, 16, 2, 32, 0};
  m.token_decoder = {1, 16, 2, 32, 2};
  std::vector<int32_t> tokens(2 * 16);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t((i * 7 + 3) % 19);

  auto plain = make_cpu_backend(DType::f64);
  auto inner = make_cpu_backend(DType::f64);
  auto prof = make_profiling_backend(*inner);
  Model a(m, *plain, 2), b(m, *prof, 2);
  a.init(1);
  b.init(1);
  a.zero_grads();
  b.zero_grads();
  const double la = a.forward(tokens.data(), nullptr, 2, true, 0.1).loss_sum;
  const double lb = b.forward(tokens.data(), nullptr, 2, true, 0.1).loss_sum;
  a.backward();
  b.backward();
  EXPECT_EQ(la, lb);
  const double* ga = a.grads().ptr<double>();
  const double* gb = b.grads().ptr<double>();
  for (size_t i = 0; i < a.table().total(); ++i) ASSERT_EQ(ga[i], gb[i]) << i;

  auto t = profile_times(*prof);
  for (const char* g : {"gemm", "attention", "layernorm", "embedding", "pointwise", "rotary", "block glue", "classifier"})
    EXPECT_GT(t[g].calls, 0) << g;
  EXPECT_TRUE(profile_times(*plain).empty());
  reset_profile(*prof);
  EXPECT_TRUE(profile_times(*prof).empty());
}

// The two write modes of backward ops (model/backend.h, Grad), checked on any backend: each op
// with Grad::overwrite on an output full of NaN gives exactly the bits that Grad::add gives on
// zeros (so overwrite never reads the old contents and adds nothing else). Used by the CPU op
// tests and the CUDA op tests (GPU and SIMT emulator).
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/rng.h"
#include "model/backend.h"

namespace bt::testing_grad_modes {

inline void check_overwrite_equals_add_to_zeros(Backend& be, DType t, const std::string& tag) {
  uint64_t seed = 100;
  auto random = [&](Shape s) {
    Tensor x = be.alloc(s, t);
    Rng r(seed++);
    std::vector<float> h(s.numel());
    for (auto& v : h) v = float(r.normal());
    be.upload(x, h.data(), DType::f32);
    return x;
  };
  auto filled = [&](Shape s, float value) {
    Tensor x = be.alloc(s, t);
    std::vector<float> h(s.numel(), value);
    be.upload(x, h.data(), DType::f32);
    return x;
  };
  auto values = [&](Tensor x) {
    std::vector<double> h(x.numel());
    be.download(h.data(), DType::f64, x);
    return h;
  };
  auto same = [&](Tensor overwritten, Tensor added, const std::string& what) {
    const std::vector<double> a = values(overwritten), b = values(added);
    size_t bad = 0;
    for (size_t i = 0; i < a.size(); ++i) bad += !(a[i] == b[i]);  // NaN never equals
    EXPECT_EQ(bad, 0u) << what << " [" << tag << "]: overwrite differs from adding to zeros in " << bad << " of "
                       << a.size();
  };
  // matmul_backward: dinp only (dW is a parameter gradient and always accumulates).
  {
    const int64_t n = 37, IC = 24, OC = 40;
    Tensor dout = random({n, OC}), inp = random({n, IC}), W = random({OC, IC});
    Tensor over = filled({n, IC}, NAN), add = filled({n, IC}, 0.f);
    be.matmul_backward(over, Tensor(), Tensor(), dout, inp, W, Grad::overwrite);
    be.matmul_backward(add, Tensor(), Tensor(), dout, inp, W, Grad::add);
    same(over, add, "matmul_backward dinp");
  }
  // gelu_backward
  {
    Tensor dout = random({1000}), x = random({1000});
    Tensor over = filled({1000}, NAN), add = filled({1000}, 0.f);
    be.gelu_backward(over, dout, x, Grad::overwrite);
    be.gelu_backward(add, dout, x, Grad::add);
    same(over, add, "gelu_backward");
  }
  // qkv_rotary_backward, with all of dq, dk, dv and without dk (its part is 0).
  {
    const int64_t B = 2, T = 9, H = 2, hd = 16;
    const RotaryParams rope{4, 10000.0};
    Tensor dq = random({B, H, T, hd}), dk = random({B, H, T, hd}), dv = random({B, H, T, hd});
    for (bool with_dk : {true, false}) {
      Tensor over = filled({B, T, 3 * H * hd}, NAN), add = filled({B, T, 3 * H * hd}, 0.f);
      be.qkv_rotary_backward(over, dq, with_dk ? dk : Tensor(), dv, rope, Grad::overwrite);
      be.qkv_rotary_backward(add, dq, with_dk ? dk : Tensor(), dv, rope, Grad::add);
      same(over, add, with_dk ? "qkv_rotary_backward" : "qkv_rotary_backward without dk");
    }
  }
  // attention_backward: short rows and long rows (the CUDA backend's two kernel families).
  for (int64_t T : {9, 70}) {
    const int64_t B = 1, H = 2, hd = 32;
    Tensor q = random({B, H, T, hd}), k = random({B, H, T, hd}), v = random({B, H, T, hd});
    Tensor out = be.alloc({B, T, H * hd}, t);
    Tensor stats = be.alloc(be.attention_stats_shape(B, H, T), be.attention_stats_dtype());
    be.attention_forward(out, stats, q, k, v);
    Tensor dout = random({B, T, H * hd});
    Tensor over[3], add[3];
    for (int i = 0; i < 3; ++i) {
      over[i] = filled({B, H, T, hd}, NAN);
      add[i] = filled({B, H, T, hd}, 0.f);
    }
    be.attention_backward(over[0], over[1], over[2], dout, out, stats, q, k, v, Grad::overwrite);
    be.attention_backward(add[0], add[1], add[2], dout, out, stats, q, k, v, Grad::add);
    const char* names[3] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; ++i)
      same(over[i], add[i], std::string("attention_backward ") + names[i] + " T=" + std::to_string(T));
  }
}

}  // namespace bt::testing_grad_modes

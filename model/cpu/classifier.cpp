// Softmax cross-entropy with integer targets: per-row losses and, optionally, dlogits.
//
// Each row's log-softmax is computed in double (max-subtracted). dlogits is overwritten with
// dscale * (softmax - onehot) (dscale is typically 1 / number of counted targets); ignored rows
// (target -1) get loss 0 and an all-zero dlogits row. The exponentials are computed once: they
// are parked in the dlogits row and scaled in place.
#include <cmath>

#include "core/error.h"
#include "model/cpu/ops.h"

namespace bt::cpu {

template <class T>
void cross_entropy(T* losses, T* dlogits, const T* logits, const int32_t* targets, size_t n, int V, double dscale) {
  // losses [n]; dlogits [n, V] or null; logits [n, V]; targets [n]
  // Checked before the parallel loop: an exception must not leave an OpenMP region.
  for (size_t i = 0; i < n; ++i) {
    BT_CHECK(targets[i] >= -1 && targets[i] < V, "cross_entropy: target ", targets[i], " at row ", i,
             " is outside the vocabulary [0, ", V, ") (and is not -1 = ignore); check the tokenizer's vocab size "
             "against model.vocab_size");
  }
#pragma omp parallel for schedule(static) if (n * static_cast<size_t>(V) >= (1u << 14))
  for (size_t i = 0; i < n; ++i) {
    const T* l = logits + i * V;
    T* d = dlogits ? dlogits + i * V : nullptr;
    const int32_t tgt = targets[i];
    if (tgt < 0) {
      losses[i] = T(0);
      if (d)
        for (int j = 0; j < V; ++j) d[j] = T(0);
      continue;
    }
    double mx = -INFINITY;
    for (int j = 0; j < V; ++j) mx = l[j] > mx ? static_cast<double>(l[j]) : mx;
    double sum = 0;
    if (d) {
      for (int j = 0; j < V; ++j) {
        const double e = std::exp(static_cast<double>(l[j]) - mx);
        d[j] = static_cast<T>(e);
        sum += e;
      }
    } else {
      for (int j = 0; j < V; ++j) sum += std::exp(static_cast<double>(l[j]) - mx);
    }
    const double lse = mx + std::log(sum);
    losses[i] = static_cast<T>(lse - static_cast<double>(l[tgt]));
    if (d) {
      const double f = dscale / sum;
      for (int j = 0; j < V; ++j) d[j] = static_cast<T>(static_cast<double>(d[j]) * f);
      d[tgt] = static_cast<T>(dscale * (std::exp(static_cast<double>(l[tgt]) - lse) - 1.0));
    }
  }
}

template void cross_entropy<float>(float*, float*, const float*, const int32_t*, size_t, int, double);
template void cross_entropy<double>(double*, double*, const double*, const int32_t*, size_t, int, double);

}  // namespace bt::cpu

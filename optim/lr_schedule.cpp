// Linear warmup + cosine / constant schedule.
#include "optim/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace bt {

double lr_at(const OptimConfig& o, int64_t step, int64_t total_steps) {
  if (o.warmup_steps > 0 && step < o.warmup_steps)
    return o.lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup_steps);
  if (o.schedule == "constant") return o.lr;
  const double min_lr = o.lr * o.min_lr_ratio;
  const int64_t decay_steps = std::max<int64_t>(1, total_steps - o.warmup_steps - 1);
  const double progress = std::clamp(static_cast<double>(step - o.warmup_steps) / decay_steps, 0.0, 1.0);
  return min_lr + (o.lr - min_lr) * 0.5 * (1.0 + std::cos(M_PI * progress));
}

}  // namespace bt

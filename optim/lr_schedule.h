// Learning-rate schedules: linear warmup, then cosine decay to min_lr_ratio x peak at the last
// step (the paper's recipe), or constant.
#pragma once
#include <cstdint>

#include "model/config.h"

namespace bt {

// lr for optimizer step `step` (0-based) of a run of `total_steps` steps.
double lr_at(const OptimConfig& o, int64_t step, int64_t total_steps);

}  // namespace bt

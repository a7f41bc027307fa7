// A Backend decorator that times every op of the backend it wraps, grouped by kind (GEMM,
// attention, LayerNorm, ...), for `bt bench train --profile`. Each op is bracketed by
// synchronize() so that asynchronous backends (CUDA) are timed too; that serializes the
// stream, so the total is a little above an unprofiled step.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "model/backend.h"

namespace bt {

struct OpGroupTime {
  double seconds = 0;
  long calls = 0;
};

// Wraps `inner` (not owned; must outlive the wrapper).
std::unique_ptr<Backend> make_profiling_backend(Backend& inner);
// Times per group of the wrapper made by make_profiling_backend (empty for other backends).
std::map<std::string, OpGroupTime> profile_times(const Backend& be);
void reset_profile(Backend& be);

}  // namespace bt

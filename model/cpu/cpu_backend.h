// The CPU backend: the reference implementation of model/backend.h over host memory, in
// float (training on machines without a GPU) or double (finite-difference gradient checks).
#pragma once
#include <memory>

#include "model/backend.h"

namespace bt {

std::unique_ptr<Backend> make_cpu_backend(DType dtype);  // f32 or f64

}  // namespace bt

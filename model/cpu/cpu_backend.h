// The CPU backend: the reference implementation of model/backend.h over host memory, in
// float (training on machines without a GPU) or double (finite-difference gradient checks).
#pragma once
#include <cstdint>
#include <memory>

#include "model/backend.h"

namespace bt {

std::unique_ptr<Backend> make_cpu_backend(DType dtype);  // f32 or f64

// The smallest batch of at least n rows whose GEMMs (matmul_forward, model/cpu/matmul.cpp) cut
// the rows into tiles of one height: n up to 32 (one tile), a power of two up to 256, else a
// multiple of 256. A step that always runs this many rows puts every row through BLAS calls of
// the same shape wherever it sits, so a row's results do not depend on the other rows (bt serve:
// a request gives the same bits alone or beside others; docs/serving.md).
int64_t cpu_uniform_batch(int64_t n);

}  // namespace bt

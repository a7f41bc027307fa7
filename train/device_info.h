// Facts about the device a run uses, for the progress line: the dense bf16 peak (for MFU) and
// the memory in use.
#pragma once
#include <cstddef>
#include <string>

#include "model/backend.h"

namespace bt {

// Dense bf16 tensor-core peak in FLOP/s of the GPU behind `be` (H100/H200: 989e12, A100: 312e12,
// ...), or 0 when unknown (CPU, unlisted GPU): MFU is then not printed.
double device_peak_flops(Backend& be, int device);
// Bytes in use: the device's used memory on CUDA, the process's resident set on the CPU.
size_t memory_in_use(Backend& be);
// Peak table lookup by device name (exposed for tests).
double peak_flops_for_name(const std::string& name);

}  // namespace bt

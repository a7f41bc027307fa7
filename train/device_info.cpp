// Device peak table and memory probes.
#include "train/device_info.h"

#include <unistd.h>

#include <cstdio>

#include "model/cuda/cuda_backend.h"

namespace bt {

double peak_flops_for_name(const std::string& name) {
  struct Row {
    const char* key;
    double flops;
  };
  // Dense bf16 peaks from the vendors' data sheets (SXM parts).
  static const Row table[] = {{"H200", 989e12}, {"H100", 989e12}, {"GH200", 989e12}, {"A100", 312e12},
                              {"L40S", 362e12}, {"A10", 125e12},  {"L4", 121e12},     {"B200", 2250e12}};
  for (const Row& r : table)
    if (name.find(r.key) != std::string::npos) return r.flops;
  return 0;
}

double device_peak_flops(Backend& be, int device) {
  if (be.device() == Device::cuda) return peak_flops_for_name(cuda_device_name(device));
  return 0;
}

size_t memory_in_use(Backend& be) {
  if (be.device() == Device::cuda) return cuda_memory_stats(be).device_used;
  long pages = 0, resident = 0;
  if (std::FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<size_t>(resident) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

}  // namespace bt

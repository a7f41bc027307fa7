// `bt bench comm`: all-reduce bandwidth over the communicator the trainer would use (MPI on
// the CPU, NCCL on GPUs) for bucket sizes from 1 MiB to 256 MiB. Run under mpirun.
#pragma once
#include <string>

namespace bt {

struct BenchCommOptions {
  std::string device = "auto";  // auto | cpu | cuda
  int min_mb = 1, max_mb = 256;
  int iters = 5;
};
void bench_comm(const BenchCommOptions& o);

}  // namespace bt

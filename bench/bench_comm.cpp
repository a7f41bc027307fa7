// All-reduce bandwidth: algorithm bandwidth (bytes / time) and bus bandwidth
// (2 (n-1)/n x bytes / time, the figure NCCL's own tests print) per bucket size.
#include "bench/bench_comm.h"

#include <fmt/core.h>

#include <algorithm>
#include <vector>

#include "core/log.h"
#include "core/timer.h"
#include "model/backend.h"
#include "train/comm.h"

namespace bt {

void bench_comm(const BenchCommOptions& o) {
  const Device dev = resolve_device(o.device);
  auto comm = make_communicator(dev);
  BackendOptions bo;
  bo.device = dev == Device::cuda ? "cuda" : "cpu";
  bo.precision = "fp32";
  bo.cuda_device = comm->local_rank();
  auto be = make_backend(bo);
  const int n = comm->world();
  log_info("bench comm: {} communicator, {} ranks, f32 all-reduce (sum), median of {} after 1 warmup", comm->name(),
           n, o.iters);
  log_info("{:>10} | {:>10} | {:>12} | {:>12}", "size", "time", "alg GB/s", "bus GB/s");
  for (int mb = o.min_mb; mb <= o.max_mb; mb *= 2) {
    const size_t bytes = size_t(mb) << 20;
    Tensor t = be->alloc({static_cast<int64_t>(bytes / 4)}, DType::f32);
    be->zero(t);
    std::vector<double> times;
    for (int i = 0; i <= o.iters; ++i) {
      comm->barrier();
      Timer timer;
      comm->all_reduce(t, ReduceOp::sum);
      be->synchronize();
      if (i > 0) times.push_back(timer.seconds());
    }
    std::sort(times.begin(), times.end());
    const double s = times[times.size() / 2];
    const double alg = double(bytes) / s / 1e9;
    log_info("{:>7} MiB | {:>7.2f} ms | {:>12.2f} | {:>12.2f}", mb, s * 1e3, alg, alg * 2.0 * (n - 1) / std::max(n, 1));
  }
}

}  // namespace bt

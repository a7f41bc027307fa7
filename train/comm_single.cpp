// The single-process communicator: every collective is the identity.
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "train/comm.h"

namespace bt {
namespace {

class SingleComm final : public Communicator {
 public:
  std::string name() const override { return "single"; }
  int rank() const override { return 0; }
  int world() const override { return 1; }
  int local_rank() const override { return 0; }
  void all_reduce(Tensor, ReduceOp) override {}
  void reduce_scatter(Tensor out, Tensor in, ReduceOp) override {
    BT_CHECK(out.bytes() == in.bytes(), "reduce_scatter: sizes differ on one rank");
    if (out.data != in.data) std::memcpy(out.data, in.data, in.bytes());
  }
  void all_gather(Tensor out, Tensor in) override {
    BT_CHECK(out.bytes() == in.bytes(), "all_gather: sizes differ on one rank");
    if (out.data != in.data) std::memcpy(out.data, in.data, in.bytes());
  }
  void broadcast(Tensor, int) override {}
  void barrier() override {}
  void all_reduce_host(double*, size_t, ReduceOp) override {}
  void broadcast_host(void*, size_t, int) override {}
  void all_gather_host_u64(uint64_t x, uint64_t* out) override { out[0] = x; }
  void all_gather_host(void* out, const void* in, size_t bytes) override {
    if (out != in) std::memcpy(out, in, bytes);
  }
};

}  // namespace

std::unique_ptr<Communicator> make_single_communicator() { return std::make_unique<SingleComm>(); }

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS"}) {
    const char* s = std::getenv(v);
    if (s && std::atoi(s) > 1) {
      // SLURM_NTASKS alone (sbatch without srun) does not mean this process is one of many.
      if (std::strcmp(v, "SLURM_NTASKS") == 0 && !std::getenv("SLURM_PROCID")) continue;
      return true;
    }
  }
  return false;
}

#ifndef BT_HAVE_MPI
void abort_job_after_error() {}

std::unique_ptr<Communicator> make_communicator(Device) {
  BT_CHECK(!launched_by_mpi(), "started by an MPI launcher but this bt was built without MPI (install Open MPI and rebuild)");
  return make_single_communicator();
}
#endif

}  // namespace bt

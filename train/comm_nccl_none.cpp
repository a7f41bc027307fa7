// make_nccl_communicator for builds without NCCL: data parallelism on CUDA is refused with a
// message (on the CPU, MPI does it).
#include "core/error.h"
#include "train/comm.h"

namespace bt {

std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<Communicator>) {
  BT_FAIL("data parallel training on CUDA needs NCCL, and this bt was built without it (install NCCL, rebuild "
          "with -DBT_NCCL=ON, or use train.device=cpu)");
}

}  // namespace bt

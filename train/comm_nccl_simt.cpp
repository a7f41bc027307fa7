// make_nccl_communicator for executables built on the SIMT emulator (bt-simt, the simt tests):
// NCCL needs real GPUs, so data parallelism on the emulated CUDA backend is refused.
#include "core/error.h"
#include "train/comm.h"

namespace bt {

std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<Communicator>) {
  BT_FAIL("NCCL does not run on the SIMT emulator: run bt-simt as a single process (without mpirun), or use "
          "train.device=cpu for data parallelism");
}

}  // namespace bt

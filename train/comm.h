// Communicators for data parallelism (docs/design.md §5) behind one small interface: a single process
// (no launcher), MPI (CPU buffers), and NCCL (device buffers). make_communicator picks MPI when
// the process was started by mpirun/srun with more than one rank.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

#include "core/tensor.h"

namespace bt {

enum class ReduceOp { sum, avg };

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual std::string name() const = 0;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  virtual int local_rank() const = 0;
  // In place over a tensor on the communicator's device (f32, f64 or bf16).
  virtual void all_reduce(Tensor t, ReduceOp op) = 0;
  // in [world * n] -> out [n]: rank r receives the reduced chunk r. In place when out is in's
  // chunk r (in's other chunks are then left in any state).
  virtual void reduce_scatter(Tensor out, Tensor in, ReduceOp op) = 0;
  // in [n] -> out [world * n]. In place when in is out's chunk r.
  virtual void all_gather(Tensor out, Tensor in) = 0;
  virtual void broadcast(Tensor t, int root) = 0;
  virtual void barrier() = 0;
  // Starts an in-place all-reduce that may overlap with work issued after it (the rest of the
  // backward pass); every started operation is complete after wait_all(). The default is
  // synchronous.
  virtual void all_reduce_start(Tensor t, ReduceOp op) { all_reduce(t, op); }
  virtual void wait_all() {}
  // CUDA: the stream whose work produces the buffers handed to collectives (NCCL orders its
  // stream after it). Ignored by host communicators.
  virtual void set_compute_stream(void* stream) {}
  // Small host-side collectives (losses, counts, config hashes).
  virtual void all_reduce_host(double* x, size_t n, ReduceOp op) = 0;
  virtual void broadcast_host(void* p, size_t bytes, int root) = 0;
  // Gathers one u64 from every rank (rank order) into out[world].
  virtual void all_gather_host_u64(uint64_t x, uint64_t* out) = 0;
  // in [bytes] from every rank -> out [world * bytes] in rank order (host memory).
  virtual void all_gather_host(void* out, const void* in, size_t bytes) = 0;
};

// Whether this process was started by an MPI launcher (mpirun, srun) with world size > 1.
bool launched_by_mpi();
// After a fatal error on this rank (the message already printed): ends the whole MPI job
// (MPI_Abort) so that the other ranks, which may be waiting for this one in a collective, do
// not hang; finalizes MPI for a job of one. No-op when MPI was never started.
void abort_job_after_error();
// device: where the buffers given to the collectives live (cpu -> MPI, cuda -> NCCL).
std::unique_ptr<Communicator> make_communicator(Device device);
std::unique_ptr<Communicator> make_single_communicator();
// NCCL over device buffers, bootstrapped (unique id, host collectives) through `host` (MPI).
std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<Communicator> host);

}  // namespace bt

// The NCCL communicator: collectives over device buffers on its own CUDA stream. Rank 0 makes
// the unique id and broadcasts it over MPI (which also carries the host-side collectives).
// Every collective is followed by a watchdog wait: if it has not finished after NCCL_TIMEOUT_S
// seconds (default 600), or NCCL reports an asynchronous error (a peer died), the communicator
// is aborted and a one-line error names this rank, so no rank hangs forever.
#if defined(BT_HAVE_NCCL) && defined(BT_HAVE_MPI)
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <chrono>
#include <cstdlib>
#include <exception>
#include <thread>

#include "core/error.h"
#include "train/comm.h"

namespace bt {

#define BT_NCCL_CHECK(call)                                                                      \
  do {                                                                                           \
    ncclResult_t r_ = (call);                                                                    \
    if (r_ != ncclSuccess) BT_FAIL("NCCL call ", #call, " failed: ", ncclGetErrorString(r_),     \
                                   " (set NCCL_DEBUG=INFO for details)");                        \
  } while (0)
#define BT_CUDA_RT_CHECK(call)                                                                   \
  do {                                                                                           \
    cudaError_t e_ = (call);                                                                     \
    if (e_ != cudaSuccess) BT_FAIL("CUDA call ", #call, " failed: ", cudaGetErrorString(e_));    \
  } while (0)

namespace {

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::bf16: return ncclBfloat16;
    case DType::i32: return ncclInt32;
    case DType::u8: return ncclUint8;
    default: BT_FAIL("NCCL communicator: unsupported dtype ", dtype_name(t));
  }
}

class NcclComm final : public Communicator {
 public:
  explicit NcclComm(std::unique_ptr<Communicator> host) : host_(std::move(host)) {
    const char* t = std::getenv("NCCL_TIMEOUT_S");
    timeout_s_ = t ? std::atof(t) : 600.0;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
    BT_CHECK(host_->local_rank() < devices, "rank ", host_->rank(), ": local rank ", host_->local_rank(),
             " has no GPU of its own (", devices, " visible on this node): start at most ", devices,
             " ranks per node (mpirun -np / --map-by, srun --ntasks-per-node) or check CUDA_VISIBLE_DEVICES");
    BT_CUDA_RT_CHECK(cudaSetDevice(host_->local_rank()));
    ncclUniqueId id;
    if (host_->rank() == 0) BT_NCCL_CHECK(ncclGetUniqueId(&id));
    host_->broadcast_host(&id, sizeof(id), 0);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;  // non-blocking: init and collectives can be aborted by the watchdog
    BT_NCCL_CHECK(ncclCommInitRankConfig(&comm_, host_->world(), id, host_->rank(), &cfg));
    wait_init();
    BT_CUDA_RT_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    BT_CUDA_RT_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
  }
  ~NcclComm() override {
    if (std::uncaught_exceptions() > 0) {  // an error on this rank: the job is about to be aborted
      if (comm_) ncclCommAbort(comm_);
      return;
    }
    if (comm_) ncclCommDestroy(comm_);
    if (stream_) cudaStreamDestroy(stream_);
  }
  std::string name() const override { return "nccl"; }
  int rank() const override { return host_->rank(); }
  int world() const override { return host_->world(); }
  int local_rank() const override { return host_->local_rank(); }

  void set_compute_stream(void* s) override { compute_ = static_cast<cudaStream_t>(s); }
  // Orders the communication stream after everything issued so far on the compute stream.
  void after_compute() {
    BT_CUDA_RT_CHECK(cudaEventRecord(ready_, compute_));
    BT_CUDA_RT_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
  }
  void all_reduce_start(Tensor t, ReduceOp op) override {
    after_compute();
    BT_NCCL_CHECK(ncclAllReduce(t.data, t.data, t.numel(), nccl_type(t.dtype), op == ReduceOp::avg ? ncclAvg : ncclSum,
                                comm_, stream_));
  }
  void wait_all() override { wait("all_reduce (bucketed)"); }
  void all_gather_host(void* out, const void* in, size_t bytes) override { host_->all_gather_host(out, in, bytes); }
  void all_reduce(Tensor t, ReduceOp op) override {
    BT_CUDA_RT_CHECK(cudaDeviceSynchronize());  // gradients written on the compute stream
    BT_NCCL_CHECK(ncclAllReduce(t.data, t.data, t.numel(), nccl_type(t.dtype), op == ReduceOp::avg ? ncclAvg : ncclSum,
                                comm_, stream_));
    wait("all_reduce");
  }
  void reduce_scatter(Tensor out, Tensor in, ReduceOp op) override {
    BT_CUDA_RT_CHECK(cudaDeviceSynchronize());
    BT_NCCL_CHECK(ncclReduceScatter(in.data, out.data, out.numel(), nccl_type(in.dtype),
                                    op == ReduceOp::avg ? ncclAvg : ncclSum, comm_, stream_));
    wait("reduce_scatter");
  }
  void all_gather(Tensor out, Tensor in) override {
    BT_CUDA_RT_CHECK(cudaDeviceSynchronize());
    BT_NCCL_CHECK(ncclAllGather(in.data, out.data, in.numel(), nccl_type(in.dtype), comm_, stream_));
    wait("all_gather");
  }
  void broadcast(Tensor t, int root) override {
    BT_CUDA_RT_CHECK(cudaDeviceSynchronize());
    BT_NCCL_CHECK(ncclBroadcast(t.data, t.data, t.numel(), nccl_type(t.dtype), root, comm_, stream_));
    wait("broadcast");
  }
  void barrier() override { host_->barrier(); }
  void all_reduce_host(double* x, size_t n, ReduceOp op) override { host_->all_reduce_host(x, n, op); }
  void broadcast_host(void* p, size_t bytes, int root) override { host_->broadcast_host(p, bytes, root); }
  void all_gather_host_u64(uint64_t x, uint64_t* out) override { host_->all_gather_host_u64(x, out); }

 private:
  void wait_init() {
    const auto t0 = std::chrono::steady_clock::now();
    ncclResult_t st = ncclInProgress;
    while (st == ncclInProgress) {
      BT_NCCL_CHECK(ncclCommGetAsyncError(comm_, &st));
      if (elapsed(t0) > timeout_s_) abort("communicator init");
      std::this_thread::yield();
    }
    if (st != ncclSuccess) BT_FAIL("rank ", rank(), ": NCCL init failed: ", ncclGetErrorString(st));
  }
  void wait(const char* what) {
    const auto t0 = std::chrono::steady_clock::now();
    while (true) {
      cudaError_t q = cudaStreamQuery(stream_);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) BT_FAIL("rank ", rank(), ": CUDA error during NCCL ", what, ": ", cudaGetErrorString(q));
      ncclResult_t st;
      BT_NCCL_CHECK(ncclCommGetAsyncError(comm_, &st));
      if (st != ncclSuccess && st != ncclInProgress) abort(what);
      if (elapsed(t0) > timeout_s_) abort(what);
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  [[noreturn]] void abort(const char* what) {
    ncclCommAbort(comm_);
    comm_ = nullptr;
    BT_FAIL("rank ", rank(), ": NCCL ", what, " did not complete within ", timeout_s_,
            " s or a peer failed; another rank probably died (see its log). Aborted the communicator.");
  }
  static double elapsed(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  std::unique_ptr<Communicator> host_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaStream_t compute_ = nullptr;  // the backend's stream (null: the legacy default stream)
  cudaEvent_t ready_ = nullptr;
  double timeout_s_ = 600;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<Communicator> host) {
  return std::make_unique<NcclComm>(std::move(host));
}

}  // namespace bt
#endif

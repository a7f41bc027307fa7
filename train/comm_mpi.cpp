// The MPI communicator: collectives over host buffers (the CPU backend's data parallelism, and
// the bootstrap channel for NCCL). MPI errors are returned, not fatal inside MPI, so that a
// failed collective becomes a one-line message naming the rank; mpirun then ends the others.
// A rank that stops without dying (SIGSTOP, a hung file system, a deadlock) raises no MPI error:
// the others would spin in their collective forever. A watchdog thread therefore ends the job
// when a blocking MPI call of this rank has not returned after BT_MPI_TIMEOUT_S seconds
// (default 600; 0 turns it off), as the NCCL communicator's watchdog does for NCCL_TIMEOUT_S.
#ifdef BT_HAVE_MPI
#include <mpi.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/log.h"
#include "train/comm.h"

namespace bt {
namespace {

#define BT_MPI_CHECK(call)                                                                        \
  do {                                                                                            \
    int rc_ = (call);                                                                             \
    if (rc_ != MPI_SUCCESS) {                                                                     \
      char msg_[MPI_MAX_ERROR_STRING];                                                            \
      int len_ = 0;                                                                               \
      MPI_Error_string(rc_, msg_, &len_);                                                         \
      BT_FAIL("MPI call ", #call, " failed: ", std::string(msg_, len_),                           \
              " (another rank probably died; see its log)");                                      \
    }                                                                                             \
  } while (0)

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: return MPI_INT32_T;
    case DType::u16: return MPI_UINT16_T;
    case DType::u8: return MPI_UINT8_T;
    default: BT_FAIL("MPI communicator: no reduction for dtype ", dtype_name(t));
  }
}

template <class T>
void divide(void* p, size_t n, int w) {
  T* x = static_cast<T*>(p);
  for (size_t i = 0; i < n; ++i) x[i] /= static_cast<T>(w);
}

void divide_any(Tensor t, int w) {
  if (t.dtype == DType::f32) divide<float>(t.data, t.numel(), w);
  else if (t.dtype == DType::f64) divide<double>(t.data, t.numel(), w);
  else BT_FAIL("MPI communicator: average of dtype ", dtype_name(t.dtype));
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Ends the job when one blocking MPI call of this rank lasts longer than the timeout. The thread
// wakes a few times per timeout; begin/end are two atomic stores, so collectives cost nothing more.
class MpiWatchdog {
 public:
  MpiWatchdog() {
    if (const char* e = std::getenv("BT_MPI_TIMEOUT_S"); e && *e) {
      // A typo must not turn the watchdog off silently.
      char* end = nullptr;
      timeout_s_ = std::strtod(e, &end);
      BT_CHECK(end != e && *end == '\0' && std::isfinite(timeout_s_) && timeout_s_ >= 0, "BT_MPI_TIMEOUT_S='", e,
               "': expected a number of seconds >= 0 (0 turns the MPI watchdog off)");
    }
    if (timeout_s_ == 0) return;  // off
    const double poll = std::min(1.0, std::max(0.02, timeout_s_ / 10));
    thread_ = std::thread([this, poll] { loop(poll); });
  }
  ~MpiWatchdog() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void set_rank(int r) { rank_ = r; }
  void begin(const char* what) {
    what_.store(what, std::memory_order_relaxed);
    since_ns_.store(now_ns(), std::memory_order_release);
  }
  void end() { since_ns_.store(0, std::memory_order_release); }

  struct Scope {
    Scope(MpiWatchdog& w, const char* what) : w_(w) { w_.begin(what); }
    ~Scope() { w_.end(); }
    MpiWatchdog& w_;
  };

 private:
  void loop(double poll) {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      cv_.wait_for(lock, std::chrono::duration<double>(poll));
      const int64_t since = since_ns_.load(std::memory_order_acquire);
      if (stop_ || since == 0 || double(now_ns() - since) * 1e-9 <= timeout_s_) continue;
      std::fflush(stdout);
      std::fprintf(stderr,
                   "error: rank %d: MPI %s did not complete within %g s: another rank stopped or hangs (SIGSTOP, a "
                   "hung file system, a deadlock; see its log) and would keep this job waiting forever; ending the "
                   "job (BT_MPI_TIMEOUT_S sets the limit)\n",
                   rank_, what_.load(), timeout_s_);
      std::fflush(stderr);
      // Called from this thread while the main one waits inside MPI: Open MPI's abort only signals
      // the launcher, which ends every rank (the stopped one too). Should it return, exit anyway.
      MPI_Abort(MPI_COMM_WORLD, 1);
      std::_Exit(1);
    }
  }
  double timeout_s_ = 600;
  int rank_ = -1;
  std::atomic<const char*> what_{""};
  std::atomic<int64_t> since_ns_{0};
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
};

class MpiComm final : public Communicator {
 public:
  MpiComm() {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      int provided = 0;
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &world_);
    // The node-local rank (a rank's GPU) is its index among the ranks of its node in world-rank
    // order: MPI's shared-memory split, whatever the launcher. No environment variable is read;
    // under mpirun and srun (block or cyclic distribution) this equals OMPI_COMM_WORLD_LOCAL_RANK
    // and SLURM_LOCALID, which also number a node's tasks in world-rank order.
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &local_rank_);
    MPI_Comm_free(&local);
    set_log_rank(rank_);
    watchdog_.set_rank(rank_);
  }
  ~MpiComm() override {
    // Unwinding from an error on this rank: MPI_Finalize would wait for ranks that wait for this
    // one in a collective; main ends the job with abort_job_after_error instead.
    if (std::uncaught_exceptions() > 0) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) {
      MpiWatchdog::Scope w(watchdog_, "MPI_Finalize");  // it waits for the other ranks too
      MPI_Finalize();
    }
  }
  std::string name() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int world() const override { return world_; }
  int local_rank() const override { return local_rank_; }

  void all_reduce(Tensor t, ReduceOp op) override {
    check_host(t);
    MpiWatchdog::Scope w(watchdog_, "all_reduce");
    BT_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, t.data, static_cast<int>(t.numel()), mpi_type(t.dtype), MPI_SUM,
                               MPI_COMM_WORLD));
    if (op == ReduceOp::avg) divide_any(t, world_);
  }
  void reduce_scatter(Tensor out, Tensor in, ReduceOp op) override {
    check_host(out);
    check_host(in);
    BT_CHECK(in.numel() == out.numel() * static_cast<size_t>(world_), "reduce_scatter: in must be world x out");
    MpiWatchdog::Scope w(watchdog_, "reduce_scatter");
    if (out.data == static_cast<char*>(in.data) + size_t(rank_) * out.bytes()) {
      // In place: MPI's in-place form leaves the result at the start of the buffer.
      BT_MPI_CHECK(MPI_Reduce_scatter_block(MPI_IN_PLACE, in.data, static_cast<int>(out.numel()),
                                            mpi_type(in.dtype), MPI_SUM, MPI_COMM_WORLD));
      if (rank_ != 0) std::memmove(out.data, in.data, out.bytes());
    } else {
      BT_MPI_CHECK(MPI_Reduce_scatter_block(in.data, out.data, static_cast<int>(out.numel()), mpi_type(in.dtype),
                                            MPI_SUM, MPI_COMM_WORLD));
    }
    if (op == ReduceOp::avg) divide_any(out, world_);
  }
  void all_gather(Tensor out, Tensor in) override {
    check_host(out);
    check_host(in);
    BT_CHECK(out.numel() == in.numel() * static_cast<size_t>(world_), "all_gather: out must be world x in");
    const bool in_place = in.data == static_cast<char*>(out.data) + size_t(rank_) * in.bytes();
    MpiWatchdog::Scope w(watchdog_, "all_gather");
    BT_MPI_CHECK(MPI_Allgather(in_place ? MPI_IN_PLACE : in.data, static_cast<int>(in.bytes()), MPI_BYTE, out.data,
                               static_cast<int>(in.bytes()), MPI_BYTE, MPI_COMM_WORLD));
  }
  void broadcast(Tensor t, int root) override {
    check_host(t);
    broadcast_host(t.data, t.bytes(), root);
  }
  void barrier() override {
    MpiWatchdog::Scope w(watchdog_, "barrier");
    BT_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
  }
  void all_reduce_host(double* x, size_t n, ReduceOp op) override {
    MpiWatchdog::Scope w(watchdog_, "all_reduce (host)");
    BT_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, x, static_cast<int>(n), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
    if (op == ReduceOp::avg)
      for (size_t i = 0; i < n; ++i) x[i] /= world_;
  }
  void broadcast_host(void* p, size_t bytes, int root) override {
    char* c = static_cast<char*>(p);
    const size_t chunk = size_t(1) << 30;
    MpiWatchdog::Scope w(watchdog_, "broadcast");
    for (size_t off = 0; off < bytes; off += chunk) {
      const int n = static_cast<int>(std::min(chunk, bytes - off));
      BT_MPI_CHECK(MPI_Bcast(c + off, n, MPI_BYTE, root, MPI_COMM_WORLD));
    }
  }
  void all_gather_host_u64(uint64_t x, uint64_t* out) override {
    MpiWatchdog::Scope w(watchdog_, "all_gather (host)");
    BT_MPI_CHECK(MPI_Allgather(&x, 1, MPI_UINT64_T, out, 1, MPI_UINT64_T, MPI_COMM_WORLD));
  }
  void all_gather_host(void* out, const void* in, size_t bytes) override {
    BT_CHECK(bytes < (size_t(1) << 31), "all_gather_host: ", bytes, " bytes per rank is too large for one MPI call");
    MpiWatchdog::Scope w(watchdog_, "all_gather (host)");
    BT_MPI_CHECK(MPI_Allgather(in, static_cast<int>(bytes), MPI_BYTE, out, static_cast<int>(bytes), MPI_BYTE,
                               MPI_COMM_WORLD));
  }
  void all_reduce_start(Tensor t, ReduceOp op) override {
    check_host(t);
    MPI_Request req;
    BT_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, t.data, static_cast<int>(t.numel()), mpi_type(t.dtype), MPI_SUM,
                                MPI_COMM_WORLD, &req));
    pending_.push_back({req, t, op});
  }
  void wait_all() override {
    MpiWatchdog::Scope w(watchdog_, "all_reduce (bucketed)");
    for (Pending& p : pending_) {
      BT_MPI_CHECK(MPI_Wait(&p.req, MPI_STATUS_IGNORE));
      if (p.op == ReduceOp::avg) divide_any(p.t, world_);
    }
    pending_.clear();
  }

 private:
  static void check_host(const Tensor& t) {
    BT_CHECK(t.device == Device::cpu, "the MPI communicator reduces host buffers; use NCCL for device buffers");
  }
  int rank_ = 0, world_ = 1, local_rank_ = 0;
  MpiWatchdog watchdog_;
  struct Pending {
    MPI_Request req;
    Tensor t;
    ReduceOp op;
  };
  std::vector<Pending> pending_;
};

}  // namespace

std::unique_ptr<Communicator> make_communicator(Device device) {
  if (!launched_by_mpi()) return make_single_communicator();
  auto mpi = std::make_unique<MpiComm>();
  if (device == Device::cpu) return mpi;
  return make_nccl_communicator(std::move(mpi));  // comm_nccl_none.cpp in builds without NCCL
}

void abort_job_after_error() {
  int inited = 0, finalized = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  if (!inited || finalized) return;
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (world > 1) {
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
}

}  // namespace bt
#endif

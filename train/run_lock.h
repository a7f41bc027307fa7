// The out_dir lock: one `bt train` at a time per train.out_dir. An advisory flock(2) on
// OUT_DIR/.bt-train.lock, taken by rank 0 before anything in out_dir is touched and held for the
// whole run; the kernel releases it when the process ends in any way (exit, error, SIGKILL), so a
// crashed run never leaves a stale lock. The file records the holder (host, pid, start time) for
// the error a second run gets. flock is honoured across the hosts of NFS (v4, or v3 with lockd)
// and Lustre/GPFS mounted with locking; on a file system without locks the run warns and goes on.
#pragma once
#include <string>

namespace bt {

class RunLock {
 public:
  // Creates out_dir if needed and takes the lock, or fails with one line naming the holder.
  explicit RunLock(const std::string& out_dir);
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

// "host pid 1234, started 2026-12-01 18:00:00" for this process.
std::string lock_holder_description();

}  // namespace bt

// The out_dir lock: see run_lock.h.
#include "train/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "core/error.h"
#include "core/log.h"

namespace bt {

namespace fs = std::filesystem;

std::string lock_holder_description() {
  char host[256] = "?";
  ::gethostname(host, sizeof host - 1);
  const std::time_t now = std::time(nullptr);
  char when[64] = "";
  std::tm tm{};
  ::localtime_r(&now, &tm);
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
  return std::string("host ") + host + " pid " + std::to_string(::getpid()) + ", started " + when;
}

RunLock::RunLock(const std::string& out_dir) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  BT_CHECK(!ec, "train.out_dir '", out_dir, "': cannot create it (", ec.message(), ")");
  path_ = (fs::path(out_dir) / ".bt-train.lock").string();
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  BT_CHECK(fd_ >= 0, path_, ": cannot create the out_dir lock file (", std::strerror(errno), ")");
  int rc;
  do rc = ::flock(fd_, LOCK_EX | LOCK_NB);
  while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    const int err = errno;
    if (err == EWOULDBLOCK) {
      char buf[512] = {};
      const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
      std::string holder = n > 0 ? std::string(buf, size_t(n)) : std::string("unknown");
      while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
      ::close(fd_);
      fd_ = -1;
      BT_FAIL("train.out_dir '", out_dir, "' is in use by another `bt train` (", holder,
              "): wait for it to finish or stop it, or set another train.out_dir");
    }
    // ENOLCK / EOPNOTSUPP: a file system without locks. Run, but say what is not protected.
    log_warn("{}: cannot lock ({}); a second run into this out_dir would not be detected", path_,
             std::strerror(err));
    ::close(fd_);
    fd_ = -1;
    return;
  }
  const std::string me = lock_holder_description() + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, me.data(), me.size(), 0) != ssize_t(me.size()))
    log_warn("{}: cannot record the lock holder ({})", path_, std::strerror(errno));
}

RunLock::~RunLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the lock; the file stays (removing it would race a new holder)
}

}  // namespace bt

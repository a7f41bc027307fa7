// ProgressBar (progress.h).
#include "core/progress.h"

#include <fmt/format.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/format.h"

namespace bt {

ProgressBar::ProgressBar(std::string label, std::string unit, uint64_t total, ProgressOptions o)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), o_(o), tty_(::isatty(2) != 0) {
  winsize ws{};
  if (tty_ && ::ioctl(2, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 40) width_ = ws.ws_col;
}

ProgressBar::~ProgressBar() {
  if (!drawn_) return;
  std::fprintf(stderr, "\r\033[K");
  std::fflush(stderr);
}

std::string ProgressBar::line(uint64_t done, bool tty, std::string_view note) const {
  const double t = timer_.seconds();
  const double rate = done > o_.done_before && t > 0 ? double(done - o_.done_before) / t : 0.0;
  std::string count = format_count(double(done));
  if (total_ > 0) count = fmt::format("{}/{}", count, format_count(double(total_)));
  count = note.empty() ? fmt::format("{} {}", count, unit_) : fmt::format("{} {} ({})", count, unit_, note);
  const std::string speed = fmt::format("{} {}/s", format_count(rate), unit_);
  if (total_ == 0) return fmt::format("{}: {}, {}, {}", label_, count, speed, format_duration(t));
  const double frac = std::min(1.0, double(done) / double(total_));
  const double eta = rate > 0 ? double(total_ > done ? total_ - done : 0) / rate : NAN;
  const std::string tail = fmt::format("{:5.1f}% {}, {}, {}", 100.0 * frac, count, speed,
                                       fmt::format("{} {}", done >= total_ ? "took" : "ETA", format_duration(done >= total_ ? t : eta)));
  if (!tty) return fmt::format("{}: {}", label_, tail);
  const int bar = std::max(10, std::min(40, width_ - int(label_.size() + tail.size()) - 6));
  const int fill = int(frac * bar + 0.5);
  return fmt::format("{} [{}{}] {}", label_, std::string(size_t(fill), '#'), std::string(size_t(bar - fill), '.'), tail);
}

void ProgressBar::update(uint64_t done, std::string_view note) {
  if (!o_.enabled || (!tty_ && o_.log_every <= 0)) return;
  const double t = timer_.seconds();
  if (t - last_ < (tty_ ? 0.25 : o_.log_every)) return;
  last_ = t;
  const std::string l = line(done, tty_, note);
  if (tty_) {
    std::fprintf(stderr, "\r%s\033[K", l.c_str());
    drawn_ = true;
  } else {
    std::fprintf(stderr, "%s\n", l.c_str());
  }
  std::fflush(stderr);
}

void ProgressBar::finish(uint64_t done, std::string_view note) {
  if (!o_.enabled) return;
  if (o_.clear_on_finish || (!tty_ && o_.log_every <= 0)) {
    if (drawn_) std::fprintf(stderr, "\r\033[K");
  } else {
    const std::string l = line(done, tty_, note);
    std::fprintf(stderr, tty_ ? "\r%s\033[K\n" : "%s\n", l.c_str());
  }
  drawn_ = false;
  std::fflush(stderr);
}

}  // namespace bt

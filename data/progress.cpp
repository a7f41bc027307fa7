// ProgressBar (progress.h).
#include "data/progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace bt {

std::string human_count(double v) {
  char b[32];
  if (v >= 1e12) std::snprintf(b, sizeof b, "%.2fT", v / 1e12);
  else if (v >= 1e9) std::snprintf(b, sizeof b, "%.2fG", v / 1e9);
  else if (v >= 1e6) std::snprintf(b, sizeof b, "%.2fM", v / 1e6);
  else if (v >= 1e3) std::snprintf(b, sizeof b, "%.1fk", v / 1e3);
  else std::snprintf(b, sizeof b, "%.0f", v);
  return b;
}

std::string human_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const uint64_t t = uint64_t(s + 0.5);
  char b[32];
  if (t >= 3600) std::snprintf(b, sizeof b, "%llu:%02llu:%02llu", (unsigned long long)(t / 3600),
                               (unsigned long long)(t / 60 % 60), (unsigned long long)(t % 60));
  else std::snprintf(b, sizeof b, "%llu:%02llu", (unsigned long long)(t / 60), (unsigned long long)(t % 60));
  return b;
}

ProgressBar::ProgressBar(std::string label, std::string unit, uint64_t total, bool enabled, uint64_t done_before,
                         double log_every)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), before_(done_before), on_(enabled),
      tty_(::isatty(2) != 0), every_(log_every) {
  winsize ws{};
  if (tty_ && ::ioctl(2, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 40) width_ = ws.ws_col;
}

std::string ProgressBar::line(uint64_t done, bool tty) const {
  const double t = timer_.seconds();
  const double frac = total_ > 0 ? std::min(1.0, double(done) / double(total_)) : 1.0;
  const double rate = done > before_ && t > 0 ? double(done - before_) / t : 0.0;
  const double eta = rate > 0 ? double(total_ > done ? total_ - done : 0) / rate : NAN;
  char pct[16];
  std::snprintf(pct, sizeof pct, "%5.1f%%", 100.0 * frac);
  std::string tail = std::string(pct) + " " + human_count(double(done)) + "/" + human_count(double(total_)) + " " +
                     unit_ + ", " + human_count(rate) + " " + unit_ + "/s, " +
                     (done >= total_ ? "took " + human_duration(t) : "ETA " + human_duration(eta));
  if (!tty) return label_ + ": " + tail;
  const int bar = std::max(10, std::min(40, width_ - int(label_.size() + tail.size()) - 6));
  const int fill = int(frac * bar + 0.5);
  return label_ + " [" + std::string(size_t(fill), '#') + std::string(size_t(bar - fill), '.') + "] " + tail;
}

void ProgressBar::update(uint64_t done) {
  if (!on_) return;
  const double t = timer_.seconds();
  if (t - last_ < (tty_ ? 0.25 : every_)) return;
  last_ = t;
  const std::string l = line(done, tty_);
  if (tty_)
    std::fprintf(stderr, "\r%s\033[K", l.c_str());
  else
    std::fprintf(stderr, "%s\n", l.c_str());
  std::fflush(stderr);
}

void ProgressBar::finish(uint64_t done) {
  if (!on_) return;
  const std::string l = line(done, tty_);
  std::fprintf(stderr, tty_ ? "\r%s\033[K\n" : "%s\n", l.c_str());
  std::fflush(stderr);
}

}  // namespace bt

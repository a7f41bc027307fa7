// Terminal progress bar: see progress.h.
#include "infer/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace bt {

ProgressBar::ProgressBar(std::string label, std::string unit, bool enabled)
    : label_(std::move(label)), unit_(std::move(unit)), on_(enabled && ::isatty(2)) {}

ProgressBar::~ProgressBar() { finish(); }

std::string ProgressBar::clock(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const long t = std::lround(s);
  char b[32];
  if (t >= 3600)
    std::snprintf(b, sizeof b, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else
    std::snprintf(b, sizeof b, "%ld:%02ld", t / 60, t % 60);
  return b;
}

void ProgressBar::update(int64_t done, int64_t total) {
  if (!on_) return;
  const double t = timer_.seconds();
  if (done < total && t - last_ < 0.2) return;
  last_ = t;
  const double frac = total > 0 ? std::min(1.0, double(done) / double(total)) : 1.0;
  const int width = 30, full = static_cast<int>(frac * width);
  std::string bar(size_t(full), '#');
  bar.resize(width, '.');
  const double rate = t > 0 ? double(done) / t : 0;
  const std::string eta = done > 0 && rate > 0 ? clock(double(total - done) / rate) : "?";
  std::fprintf(stderr, "\r%s [%s] %3.0f%% %lld/%lld %s | %.1f %s/s | %s elapsed | ETA %s   ", label_.c_str(),
               bar.c_str(), 100 * frac, static_cast<long long>(done), static_cast<long long>(total), unit_.c_str(),
               rate, unit_.c_str(), clock(t).c_str(), eta.c_str());
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressBar::finish() {
  if (!drawn_) return;
  std::fprintf(stderr, "\r\033[K");
  std::fflush(stderr);
  drawn_ = false;
}

}  // namespace bt

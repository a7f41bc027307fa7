// A progress display on stderr for long data jobs (token-file import): on a terminal, one line
// redrawn in place about 4 times a second with a bar, the fraction done, the count, the rate and
// the ETA; otherwise (logs, CI) a plain line every `log_every` seconds. Call update() from one
// thread (the other threads publish their counts through an atomic).
#pragma once
#include <cstdint>
#include <string>

#include "core/timer.h"

namespace bt {

// 1234 -> "1.2k", 1.5e9 -> "1.50G".
std::string human_count(double v);
// 75 -> "1:15", 3725 -> "1:02:05".
std::string human_duration(double seconds);

class ProgressBar {
 public:
  // `done_before`: work finished by an earlier run (resume); it counts as done but not in the rate.
  ProgressBar(std::string label, std::string unit, uint64_t total, bool enabled, uint64_t done_before = 0,
              double log_every = 10.0);
  void update(uint64_t done);        // prints when due
  void finish(uint64_t done);        // prints the final line
  // The line as it would be printed now (tests).
  std::string line(uint64_t done, bool tty) const;

 private:
  std::string label_, unit_;
  uint64_t total_, before_;
  bool on_, tty_;
  int width_ = 80;
  double every_, last_ = -1e9;
  Timer timer_;
};

}  // namespace bt

// The progress display on stderr of long jobs (bt prepare, token-file import, bt eval --task).
// On a terminal: one line redrawn in place at most 4 times a second, with a bar, the fraction
// done, the count, the rate and the ETA:
//   prepare [########..........]  42.0% 1.05G/2.50G tokens, 312.0M tokens/s, ETA 0:04
// Off a terminal (logs, CI): the same without the bar, a line every `log_every` seconds (never
// when it is 0). Without a known total (0) the line shows the count, the rate and the time so far.
// update() is called from one thread (others publish their counts through an atomic).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

#include "core/timer.h"

namespace bt {

struct ProgressOptions {
  bool enabled = true;
  uint64_t done_before = 0;  // work finished by an earlier run (resume): done, but not in the rate
  double log_every = 10.0;   // seconds between lines off a terminal; 0: silent there
  // finish(): erase the line (the caller prints its own summary) instead of printing the last one.
  bool clear_on_finish = false;
};

class ProgressBar {
 public:
  ProgressBar(std::string label, std::string unit, uint64_t total, ProgressOptions o = {});
  ~ProgressBar();  // erases a line left drawn on the terminal (an exception, a missing finish)
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  void set_total(uint64_t total) { total_ = total; }
  // Prints when due. `note`: more counts, shown after the main count ("1.2k docs, 5.1MB read").
  void update(uint64_t done, std::string_view note = {});
  void finish(uint64_t done, std::string_view note = {});  // the final line (or erases it)
  // The line as it would be printed now (tests).
  std::string line(uint64_t done, bool tty, std::string_view note = {}) const;

 private:
  std::string label_, unit_;
  uint64_t total_;
  ProgressOptions o_;
  bool tty_;
  int width_ = 80;
  double last_ = -1e9;
  bool drawn_ = false;  // a line is on the terminal without its newline
  Timer timer_;
};

}  // namespace bt

// A progress bar with rate and ETA on stderr, redrawn in place when stderr is a terminal (at
// most 5 times a second); silent otherwise (logs get the summary lines of the caller instead).
#pragma once
#include <cstdint>
#include <string>

#include "core/timer.h"

namespace bt {

class ProgressBar {
 public:
  ProgressBar(std::string label, std::string unit, bool enabled);
  ~ProgressBar();
  void update(int64_t done, int64_t total);
  void finish();  // clears the bar's line
  // "1:02:03" / "2:03"
  static std::string clock(double seconds);

 private:
  std::string label_, unit_;
  bool on_;
  Timer timer_;
  double last_ = -1;
  bool drawn_ = false;
};

}  // namespace bt

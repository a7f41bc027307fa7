// Process-wide log rank.
#include "core/log.h"

namespace bt {
int& log_rank() {
  static int r = 0;
  return r;
}
}  // namespace bt

// Console logging. Only rank 0 prints unless told otherwise (set_log_rank).
#pragma once
#include <fmt/core.h>

#include <cstdio>

namespace bt {

int& log_rank();  // this process's rank; set once by the communicator
inline void set_log_rank(int r) { log_rank() = r; }

template <class... A>
void log_info(fmt::format_string<A...> f, A&&... a) {
  if (log_rank() != 0) return;
  fmt::print(stdout, f, std::forward<A>(a)...);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

template <class... A>
void log_warn(fmt::format_string<A...> f, A&&... a) {
  fmt::print(stderr, "warning: ");
  fmt::print(stderr, f, std::forward<A>(a)...);
  std::fputc('\n', stderr);
}

}  // namespace bt

// Human-readable counts and durations for progress lines and logs (one set for every command).
#pragma once
#include <string>

namespace bt {

// SI prefixes: 999 -> "999", 1234 -> "1.2k", 1.5e6 -> "1.50M", 1.5e9 -> "1.50G", 2e12 -> "2.00T".
// A fractional value below 1000 (a rate) keeps one decimal: 2.5 -> "2.5", 312.04 -> "312.0".
std::string format_count(double v);
// A clock: 75 -> "1:15", 3725 -> "1:02:05", 0.4 -> "0:00"; negative, not finite or beyond 1e8 s
// (a meaningless ETA) -> "?".
std::string format_duration(double seconds);

}  // namespace bt

// metrics.jsonl writer and small formatting helpers for the progress line.
#include "train/metrics.h"

#include <fmt/core.h>

#include "core/error.h"

namespace bt {

MetricsWriter::MetricsWriter(const std::string& path) {
  if (path.empty()) return;
  f_ = std::fopen(path.c_str(), "a");
  BT_CHECK(f_ != nullptr, "cannot open metrics file '", path, "' for writing (check train.out_dir)");
}

MetricsWriter::~MetricsWriter() {
  if (f_) std::fclose(f_);
}

void MetricsWriter::write(const nlohmann::json& j) {
  if (!f_) return;
  const std::string line = j.dump() + "\n";
  std::fwrite(line.data(), 1, line.size(), f_);
  std::fflush(f_);
}

std::string format_duration(double s) {
  if (!(s >= 0) || s > 1e8) return "?";
  const long t = static_cast<long>(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, static_cast<int>((t % 3600) / 60));
  if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, static_cast<int>(t % 60));
  return fmt::format("{}s", t);
}

std::string format_count(double n) {
  if (n >= 1e9) return fmt::format("{:.2f}B", n / 1e9);
  if (n >= 1e6) return fmt::format("{:.2f}M", n / 1e6);
  if (n >= 1e3) return fmt::format("{:.1f}k", n / 1e3);
  return fmt::format("{:.0f}", n);
}

}  // namespace bt

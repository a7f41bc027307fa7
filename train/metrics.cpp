// metrics.jsonl writer (metrics.h).
#include "train/metrics.h"

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

}  // namespace bt

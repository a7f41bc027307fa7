// metrics.jsonl: one JSON object per line in the run directory (docs/design.md §8). Each line is written
// whole and flushed, so a crash loses at most the line being written.
#pragma once
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

namespace bt {

class MetricsWriter {
 public:
  MetricsWriter() = default;
  // Opens path for appending (resume keeps earlier lines); an empty path writes nothing.
  explicit MetricsWriter(const std::string& path);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  void write(const nlohmann::json& j);

 private:
  std::FILE* f_ = nullptr;
};

}  // namespace bt

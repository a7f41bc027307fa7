// TensorBoard event files without TensorFlow (docs/design.md §8: "metrics.jsonl in the run directory ...
// and TensorBoard event files"). Scalars only. The file is a sequence of TFRecords
//   uint64 length (LE) | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)
// whose data are serialized tensorflow.Event protobufs, encoded here by hand:
//   Event        { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//   Summary      { repeated Value value = 1; }
//   Summary.Value{ string tag = 1; float simple_value = 2; }
// The first record carries file_version "brain.Event:2". Every add_scalar is flushed, so a run
// that dies loses nothing already written.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

namespace bt {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord uses it.
uint32_t crc32c(const void* data, size_t n);
// TFRecord's masked CRC: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t masked_crc32c(const void* data, size_t n);

class TensorBoardWriter {
 public:
  // Creates log_dir (and parents) and the file
  // events.out.tfevents.<unix_time>.<hostname>.<pid>.<n> (n = 0, or the next free number), and
  // writes the file_version record. Throws bt::Error naming the path on any failure.
  explicit TensorBoardWriter(const std::string& log_dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One Event with one simple_value (stored as float, as TensorBoard does). wall_time < 0: now
  // (seconds since the Unix epoch). Flushed before returning.
  void add_scalar(const std::string& tag, double value, int64_t step, double wall_time = -1);
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& data);

  std::string path_;
  std::FILE* f_ = nullptr;
};

}  // namespace bt

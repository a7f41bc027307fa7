// safetensors files (https://github.com/huggingface/safetensors format): an 8-byte little-endian
// header length, a JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__":
// {str: str}}, then the raw little-endian tensor bytes. PyTorch's safetensors.torch.load_file
// reads what write_safetensors writes (F32, or F64), and SafetensorsReader reads F32, F64, F16 and
// BF16 tensors (converted to float on read), so official checkpoints saved in bf16 load too.
// Every offset and size is checked against the file size before any read, and the tensors must
// tile the data section exactly (no overlaps, holes or trailing bytes, as the format requires): a
// truncated or corrupt file is a one-line error naming the file and the tensor.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace bt {

struct SafetensorInfo {
  std::string name;
  std::string dtype;            // "F32", "BF16", ...
  std::vector<int64_t> shape;   // [] for a scalar
  uint64_t begin = 0, end = 0;  // byte range inside the data section
  size_t numel() const;
};

// "[3, 4]"
std::string shape_str(const std::vector<int64_t>& s);

class SafetensorsReader {
 public:
  // Opens and validates the header; throws bt::Error with one line on any problem.
  explicit SafetensorsReader(const std::string& path);
  ~SafetensorsReader();
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<SafetensorInfo>& tensors() const { return tensors_; }  // in file order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const;
  const SafetensorInfo& info(const std::string& name) const;  // throws naming the tensor
  // Reads a tensor converted to float into dst[numel].
  void read_f32(const std::string& name, float* dst) const;
  std::vector<float> read_f32(const std::string& name) const;

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t data_start_ = 0;  // file offset of the data section
  std::vector<SafetensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// One tensor to write: F32 from data, or F64 from data_f64 when that is set (numel(shape) values
// owned by the caller).
struct SafetensorOut {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;
  const double* data_f64 = nullptr;
};

// Writes a safetensors file at `path` (not atomically: callers write into a temporary
// directory) and fsyncs it. Tensors are laid out in the given order, 8-byte aligned header.
// `checksum`, when given, receives the XXH3-64 (core/checksum.h) of the bytes written.
void write_safetensors(const std::string& path, const std::vector<SafetensorOut>& tensors,
                       const std::map<std::string, std::string>& metadata = {}, std::string* checksum = nullptr);

}  // namespace bt

// libFuzzer target: the safetensors reader (model/safetensors.cpp) that loads checkpoints and
// official weights. Input: the file. Every tensor the header accepts is read as float; beyond
// the common oracle (fuzz_common.h), an accepted header must describe byte ranges that lie in
// the file and match shape x dtype exactly (computed here without overflow).
#include <set>
#include <string>
#include <vector>

#include "fuzz_common.h"
#include "model/safetensors.h"

namespace {
uint64_t dtype_bytes(const std::string& t) {
  if (t == "F64" || t == "I64" || t == "U64") return 8;
  if (t == "F32" || t == "I32" || t == "U32") return 4;
  if (t == "F16" || t == "BF16" || t == "I16" || t == "U16") return 2;
  return 1;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = bt::fuzz::scratch_file("fuzz.safetensors", data, size);
  bt::fuzz::accepts([&] {
    bt::SafetensorsReader r(path);
    std::set<std::string> names;
    for (const bt::SafetensorInfo& t : r.tensors()) {
      if (!names.insert(t.name).second) bt::fuzz::fail("tensor '" + t.name + "' listed twice");
      if (!(t.begin <= t.end && t.end <= size)) bt::fuzz::fail("tensor '" + t.name + "' lies outside the file");
      unsigned __int128 bytes = dtype_bytes(t.dtype);
      for (int64_t d : t.shape) {
        if (d < 0) bt::fuzz::fail("tensor '" + t.name + "' has a negative dimension");
        bytes *= static_cast<uint64_t>(d);
        if (bytes > size) bytes = size + 1;  // saturate: already wrong
      }
      if (bytes != t.end - t.begin)
        bt::fuzz::fail("tensor '" + t.name + "' of shape " + bt::shape_str(t.shape) + " " + t.dtype +
                       " accepted with a data range of another size");
      if (&r.info(t.name) != &t) bt::fuzz::fail("info('" + t.name + "') finds another tensor");
      const bool loadable = t.dtype == "F32" || t.dtype == "F64" || t.dtype == "F16" || t.dtype == "BF16";
      const bool read = bt::fuzz::accepts([&] {
        std::vector<float> v = r.read_f32(t.name);
        if (v.size() != t.numel()) bt::fuzz::fail("read_f32 returned the wrong number of values");
      });
      if (read != loadable) bt::fuzz::fail("read_f32 of dtype " + t.dtype + (read ? " succeeded" : " failed"));
    }
    if (!names.count("no such tensor") && bt::fuzz::accepts([&] { r.info("no such tensor"); }))
      bt::fuzz::fail("info() of a missing tensor did not throw");
  });
  return 0;
}

// libFuzzer target: the tokenizer.json of a prepared data directory (data/tokenizer.cpp,
// load_tokenizer_from_dir), which `bt generate`, `bt eval` and the shards' tokenizer check
// read. Input: tokenizer.json; the directory also holds a valid tokenizer.model (the seed of
// fuzz_spm_model). Hook for the HF tokenizer.json reader: once it lands, its loader gets a
// target of its own (fuzz_hf_tokenizer.cpp, the same pattern with the file as the input).
#include <filesystem>
#include <string>

#include "data/tokenizer.h"
#include "fuzz_common.h"

namespace fs = std::filesystem;


extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = bt::fuzz::scratch_dir();
  static const bool model_copied = [&] {
    fs::copy_file(BT_FUZZ_CORPUS "/spm_model/byte_fallback_300.model", fs::path(dir) / "tokenizer.model");
    return true;
  }();
  (void)model_copied;
  bt::fuzz::scratch_file("tokenizer.json", data, size);
  std::unique_ptr<bt::Tokenizer> tok;
  if (!bt::fuzz::accepts([&] { tok = bt::load_tokenizer_from_dir(dir); })) return 0;
  if (tok->vocab_size() <= 0 || tok->eos_id() < 0 || tok->eos_id() >= tok->vocab_size())
    bt::fuzz::fail("a loaded tokenizer has a bad vocab_size or eos_id");
  bt::fuzz::accepts([&] { tok->decode(tok->encode("And God said")); });
  return 0;
}

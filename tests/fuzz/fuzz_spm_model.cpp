// libFuzzer target: loading a SentencePiece model file (data/tokenizer.cpp, `--tokenizer
// spm:PATH` and a prepared directory's tokenizer.model), then encoding and decoding with it.
// Input: the .model file (a serialized sentencepiece ModelProto). Beyond the common oracle
// (fuzz_common.h): a model that loads has an EOS inside its vocabulary and encodes to ids
// inside it.
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using bt::fuzz::fail;
  const std::string path = bt::fuzz::scratch_file("fuzz.model", data, size);
  std::unique_ptr<bt::Tokenizer> tok;
  if (!bt::fuzz::accepts([&] { tok = bt::load_spm_tokenizer(path); })) return 0;
  const int v = tok->vocab_size();
  if (v <= 0 || tok->eos_id() < 0 || tok->eos_id() >= v) fail("a loaded model has a bad vocab_size or eos_id");
  static const char* const texts[] = {"In the beginning God created the heaven and the earth.",
                                      "  two  spaces\tand a tab\n", "caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 123456",
                                      "\xff\xfe invalid \xc3 UTF-8 \x80", ""};
  for (const char* text : texts)
    bt::fuzz::accepts([&] {
      std::vector<int32_t> ids = tok->encode(text);
      for (int32_t id : ids)
        if (id < 0 || id >= v) fail("encode returned id " + std::to_string(id) + " outside the vocabulary");
      tok->decode(ids);
    });
  bt::fuzz::accepts([&] { tok->decode({-1, 0, 1, 2, 3, v - 1, v, v + 1000, tok->eos_id()}); });
  return 0;
}

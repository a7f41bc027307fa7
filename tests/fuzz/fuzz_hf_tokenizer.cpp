// libFuzzer target: the Hugging Face tokenizer.json reader and its byte-level BPE
// (data/bpe_tokenizer.cpp, `--tokenizer hf:PATH`): normalizers, pre-tokenizer regexes (PCRE2),
// added tokens, merges. Input: the tokenizer.json, then optionally a NUL byte and a text to
// encode (besides the fixed texts below). Beyond the common oracle (fuzz_common.h): a tokenizer
// that loads has its EOS inside its vocabulary, encodes every text to ids inside it, and decodes
// any ids.
#include <string>
#include <vector>

#include "data/bpe_tokenizer.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using bt::fuzz::fail;
  const std::string in(reinterpret_cast<const char*>(data), size);
  const size_t nul = in.find('\0');
  const std::string json = in.substr(0, nul);
  const std::string path = bt::fuzz::scratch_file("tokenizer.json", reinterpret_cast<const uint8_t*>(json.data()),
                                                  json.size());
  std::unique_ptr<bt::Tokenizer> tok;
  if (!bt::fuzz::accepts([&] { tok = bt::load_hf_tokenizer(path); })) return 0;
  const int v = tok->vocab_size();
  if (v <= 0 || tok->eos_id() < 0 || tok->eos_id() >= v) fail("a loaded tokenizer has a bad vocab_size or eos_id");
  std::vector<std::string> texts = {"In the beginning God created the heaven and the earth.",
                                    "  two  spaces\tand a tab\nit's CAF\xc3\x89 na\xc3\xafve 12345 <|endoftext|>x",
                                    "\xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 e\xcc\x81", "\xff\xfe invalid \xc3 UTF-8 \x80",
                                    ""};
  if (nul != std::string::npos) texts.push_back(in.substr(nul + 1));
  for (const std::string& text : texts)
    bt::fuzz::accepts([&] {
      std::vector<int32_t> ids = tok->encode(text);
      for (int32_t id : ids)
        if (id < 0 || id >= v) fail("encode returned id " + std::to_string(id) + " outside the vocabulary");
      tok->decode(ids);
    });
  bt::fuzz::accepts([&] { tok->decode({-1, 0, 1, 2, 255, 256, v - 1, v, v + 1000, tok->eos_id()}); });
  return 0;
}

// libFuzzer target: the document reader of `bt prepare` (data/documents.cpp): JSONL (one object
// with a string "text" per line) and the two text splits, plus --format auto's sniffing.
// Input: one byte choosing the reader, then the input file. Beyond the common oracle
// (fuzz_common.h): no document is empty, and the text readers lose or invent no line.
#include <sstream>
#include <string>
#include <vector>

#include "data/documents.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using bt::fuzz::fail;
  if (size == 0) return 0;
  const int mode = data[0] % 3;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  bt::fuzz::accepts([&] { bt::parse_input_format("auto", "corpus", text.substr(0, 4096)); });

  const bt::InputFormat format = mode == 0 ? bt::InputFormat::Jsonl : bt::InputFormat::Text;
  const bt::DocSplit split = mode == 2 ? bt::DocSplit::Line : bt::DocSplit::Blank;
  std::istringstream in(text);
  bt::DocumentReader reader(in, "corpus.jsonl", format, split);
  std::vector<std::string> docs;
  bt::fuzz::accepts([&] {
    std::string doc;
    while (reader.next(doc)) {
      if (doc.empty()) fail("an empty document");
      docs.push_back(doc);
    }
  });
  if (format == bt::InputFormat::Text) {
    // Every line that is not blank is in exactly one document, in order.
    std::string joined, expect;
    for (const std::string& d : docs) joined += d + "\n";
    std::istringstream again(text);
    std::string line;
    while (std::getline(again, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t\r\f\v") != std::string::npos) expect += line + "\n";
    }
    // (A blank-split document is its group's lines joined with "\n", so the same holds.)
    if (joined != expect) fail("the text reader lost, changed or invented lines");
  }
  return 0;
}

// Splits raw input into documents for `bt prepare`:
//   text,  --doc-split blank  documents are groups of lines separated by blank lines
//   text,  --doc-split line   every non-blank line is a document
//   jsonl                     one JSON object per line, the document is its string field "text"
// Line ends ("\n" or "\r\n") inside a document are kept as "\n"; a document has no trailing
// newline. Empty documents are skipped.
#pragma once
#include <cstdint>
#include <istream>
#include <string>
#include <string_view>

namespace bt {

enum class InputFormat { Text, Jsonl };
enum class DocSplit { Blank, Line };

InputFormat parse_input_format(const std::string& s, const std::string& path, std::string_view head);
DocSplit parse_doc_split(const std::string& s);

class DocumentReader {
 public:
  // `name` names the input in errors ("corpus.jsonl", "<stdin>").
  DocumentReader(std::istream& in, std::string name, InputFormat format, DocSplit split);
  // The next document; false at the end of the input.
  bool next(std::string& doc);
  uint64_t line() const { return line_; }

 private:
  bool read_line(std::string& s);
  std::istream& in_;
  std::string name_;
  InputFormat format_;
  DocSplit split_;
  uint64_t line_ = 0;
  std::string buf_;
};

}  // namespace bt

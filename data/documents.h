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

// What DocumentReader does with lines that are not valid UTF-8 (data/utf8.h), and what it saw.
struct Utf8Policy {
  enum class Mode { keep, replace, error } mode = Mode::keep;
  uint64_t bytes = 0;  // ill-formed bytes seen (kept or replaced by U+FFFD)
  uint64_t lines = 0;  // lines that held any
  std::string first;   // "file:line" of the first one
};
enum class DocSplit { Blank, Line };

InputFormat parse_input_format(const std::string& s, const std::string& path, std::string_view head);
DocSplit parse_doc_split(const std::string& s);

class DocumentReader {
 public:
  // `name` names the input in errors ("corpus.jsonl", "<stdin>"). `utf8`, when given, is applied to
  // every line read: ill-formed UTF-8 is kept, replaced by U+FFFD (data/utf8.h), or an error naming
  // file:line; it counts what it saw.
  DocumentReader(std::istream& in, std::string name, InputFormat format, DocSplit split,
                 Utf8Policy* utf8 = nullptr);
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
  Utf8Policy* utf8_ = nullptr;
};

}  // namespace bt

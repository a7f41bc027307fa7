// Document splitting for text and JSONL inputs.
#include "data/documents.h"

#include <fmt/core.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/utf8.h"

namespace bt {

namespace {
bool is_blank(const std::string& s) {
  for (char c : s)
    if (c != ' ' && c != '\t' && c != '\r' && c != '\f' && c != '\v') return false;
  return true;
}
bool ends_with(const std::string& s, const char* suffix) {
  const std::string t(suffix);
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}
}  // namespace

InputFormat parse_input_format(const std::string& s, const std::string& path, std::string_view head) {
  if (s == "text") return InputFormat::Text;
  if (s == "jsonl") return InputFormat::Jsonl;
  BT_CHECK(s == "auto", "unknown --format '", s, "': use text, jsonl or auto");
  if (ends_with(path, ".jsonl") || ends_with(path, ".ndjson") || ends_with(path, ".json"))
    return InputFormat::Jsonl;
  for (char c : head) {
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') continue;
    return c == '{' ? InputFormat::Jsonl : InputFormat::Text;
  }
  return InputFormat::Text;
}

DocSplit parse_doc_split(const std::string& s) {
  if (s == "blank") return DocSplit::Blank;
  if (s == "line") return DocSplit::Line;
  BT_FAIL("unknown --doc-split '", s, "': use blank or line");
}

DocumentReader::DocumentReader(std::istream& in, std::string name, InputFormat format, DocSplit split,
                               Utf8Policy* utf8)
    : in_(in), name_(std::move(name)), format_(format), split_(split), utf8_(utf8) {}

bool DocumentReader::read_line(std::string& s) {
  if (!std::getline(in_, s)) {
    BT_CHECK(!in_.bad(), "input '", name_, "': read error after line ", line_);
    return false;
  }
  ++line_;
  if (!s.empty() && s.back() == '\r') s.pop_back();
  if (utf8_) {
    const size_t bad = utf8_first_invalid(s);
    if (bad != std::string_view::npos) {
      BT_CHECK(utf8_->mode != Utf8Policy::Mode::error, name_, ":", line_, ": not valid UTF-8 (byte 0x",
               fmt::format("{:02x}", unsigned(static_cast<unsigned char>(s[bad]))), " at column ", bad + 1,
               "); fix the input, or pass --on-invalid-utf8 replace to replace such bytes by U+FFFD");
      if (utf8_->first.empty()) utf8_->first = name_ + ":" + std::to_string(line_);
      ++utf8_->lines;
      utf8_->bytes += utf8_invalid_bytes(s);
      if (utf8_->mode == Utf8Policy::Mode::replace) s = utf8_repair(s);
    }
  }
  return true;
}

bool DocumentReader::next(std::string& doc) {
  doc.clear();
  if (format_ == InputFormat::Jsonl) {
    while (read_line(buf_)) {
      if (is_blank(buf_)) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(buf_);
      } catch (const nlohmann::json::exception& e) {
        std::string msg = e.what();
        BT_FAIL(name_, ":", line_, ": not valid JSON (", msg, ")");
      }
      BT_CHECK(j.is_object() && j.contains("text") && j["text"].is_string(), name_, ":", line_,
               ": expected a JSON object with a string field \"text\"");
      doc = j["text"].get<std::string>();
      if (!doc.empty()) return true;
    }
    return false;
  }
  if (split_ == DocSplit::Line) {
    while (read_line(buf_))
      if (!is_blank(buf_)) {
        doc = buf_;
        return true;
      }
    return false;
  }
  // Blank-line separated paragraph groups.
  bool any = false;
  while (read_line(buf_)) {
    if (is_blank(buf_)) {
      if (any) return true;
      continue;
    }
    if (any) doc.push_back('\n');
    doc += buf_;
    any = true;
  }
  return any;
}

}  // namespace bt

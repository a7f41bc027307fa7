// Byte and SentencePiece tokenizers, the spec parser, and loading from a prepared directory.
#include "data/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "core/error.h"
#include "data/bpe_tokenizer.h"
#include "data/sha256.h"
#include "data/shard.h"
#include "data/token_stream.h"

namespace bt {
namespace fs = std::filesystem;

namespace {


std::string read_file(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  BT_CHECK(in, what, ": cannot open '", path, "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  BT_CHECK(!in.bad(), what, ": read error on '", path, "'");
  return ss.str();
}

nlohmann::json tokenizer_json(const Tokenizer& t, const std::string& model) {
  nlohmann::json j = {{"kind", t.kind()},
                      {"name", t.name()},
                      {"vocab_size", t.vocab_size()},
                      {"eos_id", t.eos_id()}};
  if (!model.empty()) j["model"] = model;
  return j;
}

// ---- byte --------------------------------------------------------------------------------------

class ByteTokenizer final : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    s.reserve(ids.size());
    for (int32_t id : ids)
      if (id >= 0 && id < 256) s.push_back(static_cast<char>(id));
    return s;
  }
  int vocab_size() const override { return 257; }
  int eos_id() const override { return 256; }
  std::string name() const override { return "byte"; }
  std::string kind() const override { return "byte"; }
  void save_to_dir(const std::string& dir) const override {
    write_file_atomic((fs::path(dir) / kTokenizerJsonFile).string(), tokenizer_json(*this, "").dump(2) + "\n");
  }
};

// ---- SentencePiece -----------------------------------------------------------------------------

class SpmTokenizer final : public Tokenizer {
 public:
  // `model` is the serialized ModelProto (the .model file's bytes); `origin` names it in errors.
  SpmTokenizer(std::string model, const std::string& origin) : model_(std::move(model)) {
    auto st = sp_.LoadFromSerializedProto(model_);
    BT_CHECK(st.ok(), "SentencePiece model ", origin, ": cannot load (", one_line(st.ToString()), ")");
    BT_CHECK(sp_.eos_id() >= 0, "SentencePiece model ", origin,
             " has no EOS piece (train it with eos_id >= 0)");
    hash_ = sha256_hex(model_);
  }
  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int> ids;
    auto st = sp_.Encode(text, &ids);
    BT_CHECK(st.ok(), "SentencePiece encode failed: ", one_line(st.ToString()));
    return std::vector<int32_t>(ids.begin(), ids.end());
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::vector<int> keep;
    keep.reserve(ids.size());
    const int v = vocab_size(), eos = eos_id();
    for (int32_t id : ids)
      if (id >= 0 && id < v && id != eos) keep.push_back(id);
    std::string out;
    auto st = sp_.Decode(keep, &out);
    BT_CHECK(st.ok(), "SentencePiece decode failed: ", one_line(st.ToString()));
    return out;
  }
  int vocab_size() const override { return sp_.GetPieceSize(); }
  int eos_id() const override { return sp_.eos_id(); }
  std::string name() const override { return "spm:" + hash_; }
  std::string kind() const override { return "spm"; }
  void save_to_dir(const std::string& dir) const override {
    write_file_atomic((fs::path(dir) / kSpmModelFile).string(), model_);
    write_file_atomic((fs::path(dir) / kTokenizerJsonFile).string(),
                      tokenizer_json(*this, kSpmModelFile).dump(2) + "\n");
  }
  const std::string& hash() const { return hash_; }

 private:
  std::string model_;
  std::string hash_;
  sentencepiece::SentencePieceProcessor sp_;
};

class VectorSentences final : public sentencepiece::SentenceIterator {
 public:
  explicit VectorSentences(const std::vector<std::string>& v) : v_(v) {}
  bool done() const override { return i_ >= v_.size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return v_[i_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& v_;
  size_t i_ = 0;
};

// SentencePiece skips sentences longer than max_sentence_length; cut long lines at spaces.
constexpr size_t kMaxSentenceBytes = 8192;
void split_long(const std::string& s, std::vector<std::string>& out) {
  size_t at = 0;
  while (s.size() - at > kMaxSentenceBytes / 2) {
    size_t cut = s.rfind(' ', at + kMaxSentenceBytes / 2);
    if (cut == std::string::npos || cut <= at) cut = at + kMaxSentenceBytes / 2;
    // Never cut inside a UTF-8 sequence.
    while (cut > at + 1 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
    out.push_back(s.substr(at, cut - at));
    at = cut;
  }
  if (at < s.size()) out.push_back(s.substr(at));
}

}  // namespace

TokenizerSpec parse_tokenizer_spec(const std::string& spec) {
  TokenizerSpec t;
  if (spec == "byte") return t;
  if (spec.rfind("spm:", 0) == 0) {
    t.kind = TokenizerSpec::Kind::Spm;
    t.model_path = spec.substr(4);
    BT_CHECK(!t.model_path.empty(), "tokenizer 'spm:' needs a model path, e.g. spm:data/m.model");
    return t;
  }
  if (spec.rfind("hf:", 0) == 0) {
    t.kind = TokenizerSpec::Kind::Hf;
    t.model_path = spec.substr(3);
    BT_CHECK(!t.model_path.empty(), "tokenizer 'hf:' needs a path, e.g. hf:20B_tokenizer.json");
    return t;
  }
  if (spec.rfind("train-spm:", 0) == 0) {
    t.kind = TokenizerSpec::Kind::TrainSpm;
    const std::string n = spec.substr(10);
    size_t used = 0;
    long v = 0;
    try {
      v = std::stol(n, &used);
    } catch (...) {
      used = 0;
    }
    BT_CHECK(used == n.size() && !n.empty(), "tokenizer '", spec,
             "': expected train-spm:<vocab size>, e.g. train-spm:8192");
    BT_CHECK(v >= 300 && v <= 1000000, "tokenizer '", spec,
             "': vocab size must be in [300, 1000000] (byte fallback alone needs 259 pieces)");
    t.train_vocab = int(v);
    return t;
  }
  BT_FAIL("unknown tokenizer '", spec, "': use byte, spm:PATH.model, train-spm:VOCAB or hf:PATH/tokenizer.json");
}

std::unique_ptr<Tokenizer> make_byte_tokenizer() { return std::make_unique<ByteTokenizer>(); }

std::unique_ptr<Tokenizer> load_spm_tokenizer(const std::string& model_path) {
  BT_CHECK(fs::is_regular_file(model_path), "SentencePiece model '", model_path, "': no such file");
  return std::make_unique<SpmTokenizer>(read_file(model_path, "SentencePiece model"),
                                        "'" + model_path + "'");
}

std::unique_ptr<Tokenizer> train_spm_tokenizer(const std::vector<std::string>& sentences,
                                               const SpmTrainOptions& opt) {
  std::vector<std::string> input;
  input.reserve(sentences.size());
  for (const auto& s : sentences)
    if (!s.empty()) split_long(s, input);
  BT_CHECK(!input.empty(), "train-spm: the input has no text to train a tokenizer on");
  int threads = opt.threads > 0 ? opt.threads
                                : int(std::min(8u, std::max(1u, std::thread::hardware_concurrency())));
  std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(opt.vocab_size)},
      {"byte_fallback", "true"},
      // Keep the text as it is (no NFKC, keep repeated spaces) so decode inverts encode.
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"split_digits", "true"},
      {"hard_vocab_limit", "false"},
      {"character_coverage", "0.9995"},
      {"num_threads", std::to_string(threads)},
      {"input_sentence_size", std::to_string(opt.max_sentences)},
      {"shuffle_input_sentence", "true"},
      {"max_sentence_length", std::to_string(kMaxSentenceBytes)},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"minloglevel", "2"},  // the trainer's progress logs are thousands of lines
  };
  sentencepiece::SetRandomGeneratorSeed(static_cast<unsigned>(opt.seed));
  VectorSentences it(input);
  std::string model;
  auto st = sentencepiece::SentencePieceTrainer::Train(args, &it, &model);
  BT_CHECK(st.ok(), "train-spm:", opt.vocab_size, ": SentencePiece training failed (", one_line(st.ToString()), ")");
  return std::make_unique<SpmTokenizer>(std::move(model), "trained in memory");
}

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& spec) {
  TokenizerSpec t = parse_tokenizer_spec(spec);
  switch (t.kind) {
    case TokenizerSpec::Kind::Byte:
      return make_byte_tokenizer();
    case TokenizerSpec::Kind::Spm:
      return load_spm_tokenizer(t.model_path);
    case TokenizerSpec::Kind::Hf:
      return load_hf_tokenizer(t.model_path);
    case TokenizerSpec::Kind::TrainSpm:
      break;
  }
  BT_FAIL("tokenizer '", spec, "' is trained from text; use train_spm_tokenizer");
}

std::string tokenizer_name_in_dir(const std::string& dir) {
  const fs::path p = fs::path(dir) / kTokenizerJsonFile;
  std::error_code ec;
  if (dir.empty() || !fs::exists(p, ec)) return "";
  try {
    return nlohmann::json::parse(read_file(p.string(), "tokenizer")).value("name", std::string());
  } catch (const nlohmann::json::exception& e) {
    BT_FAIL("'", p.string(), "': not valid JSON (", e.what(), ")");
  }
}

std::unique_ptr<Tokenizer> load_tokenizer_from_dir(const std::string& dir) {
  const std::string path = (fs::path(dir) / kTokenizerJsonFile).string();
  BT_CHECK(fs::is_regular_file(path), "data directory '", dir, "': no ", kTokenizerJsonFile,
           " (not written by `bt prepare`?)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path, "tokenizer"));
  } catch (const nlohmann::json::exception& e) {
    BT_FAIL("'", path, "': not valid JSON (", e.what(), ")");
  }
  BT_CHECK(j.is_object() && j.contains("kind") && j["kind"].is_string(), "'", path,
           "': missing the string field 'kind'");
  const std::string kind = j["kind"];
  if (kind == "byte") return make_byte_tokenizer();
  if (kind == "ids") return nullptr;  // imported token ids without a tokenizer
  BT_CHECK(kind == "spm" || kind == "hf", "'", path, "': unknown tokenizer kind '", kind, "'");
  const std::string model = j.value("model", std::string(kind == "hf" ? kHfTokenizerFile : kSpmModelFile));
  auto tok = kind == "hf" ? load_hf_tokenizer((fs::path(dir) / model).string())
                          : load_spm_tokenizer((fs::path(dir) / model).string());
  if (j.contains("name") && j["name"].is_string())
    BT_CHECK(j["name"].get<std::string>() == tok->name(), "'", path, "' names tokenizer ",
             j["name"].get<std::string>(), " but ", model, " is ", tok->name(),
             " (the model file was replaced; prepare the data again)");
  return tok;
}

std::unique_ptr<Tokenizer> load_tokenizer_for_shard(const std::string& tokenizer_attr,
                                                    const std::string& dir) {
  if (tokenizer_attr == "byte") return make_byte_tokenizer();
  if (tokenizer_attr.rfind("ids:", 0) == 0) return nullptr;  // token ids without a tokenizer
  if (tokenizer_attr.rfind("hf:", 0) == 0) {
    const std::string file = (fs::path(dir) / kHfTokenizerFile).string();
    BT_CHECK(fs::is_regular_file(file), "the shards use tokenizer ", tokenizer_attr, " but '", file,
             "' is missing; keep the hf_tokenizer.json that `bt prepare` wrote next to the shards");
    auto tok = load_hf_tokenizer(file);
    BT_CHECK(tok->name() == tokenizer_attr, "the shards use tokenizer ", tokenizer_attr, " but '", file, "' is ",
             tok->name());
    return tok;
  }
  BT_CHECK(tokenizer_attr.rfind("spm:", 0) == 0, "unknown tokenizer '", tokenizer_attr,
           "' in the shards' attributes");
  const std::string model = (fs::path(dir) / kSpmModelFile).string();
  BT_CHECK(fs::is_regular_file(model), "the shards use tokenizer ", tokenizer_attr, " but '", model,
           "' is missing; keep the tokenizer.model that `bt prepare` wrote next to the shards");
  auto tok = load_spm_tokenizer(model);
  BT_CHECK(tok->name() == tokenizer_attr, "the shards use tokenizer ", tokenizer_attr, " but '",
           model, "' is ", tok->name());
  return tok;
}

std::unique_ptr<Tokenizer> load_tokenizer_for_shard_file(const std::string& shard_path) {
  ShardInfo info = read_shard_info(shard_path);
  fs::path dir = fs::path(shard_path).parent_path();
  return load_tokenizer_for_shard(info.tokenizer, dir.empty() ? "." : dir.string());
}

std::unique_ptr<Tokenizer> load_tokenizer_for_shards(const std::string& glob_or_list) {
  return load_tokenizer_for_shard_file(expand_shard_list(glob_or_list).front());
}

std::string decode_continuation(const Tokenizer& tok, const std::vector<int32_t>& prompt,
                                const std::vector<int32_t>& continuation) {
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), continuation.begin(), continuation.end());
  const std::string head = tok.decode(prompt), whole = tok.decode(all);
  if (whole.compare(0, head.size(), head) == 0) return whole.substr(head.size());
  return tok.decode(continuation);
}

}  // namespace bt

// Tokenizers for `bt prepare`, `bt generate` and `bt eval`:
//   "byte"          bytes 0..255, EOS = 256, vocab 257; no model file
//   "spm:PATH"      an existing SentencePiece model
//   "train-spm:N"   a BPE SentencePiece model of N pieces trained on the input text
//   "hf:PATH"       a Hugging Face byte-level BPE tokenizer.json (GPT-2, GPT-NeoX / Pythia;
//                   bpe_tokenizer.h)
// Each tokenizer has a name recorded in every shard and in manifest.json: "byte",
// "spm:<sha256 of the model file>" or "hf:<sha256 of tokenizer.json>", so shards made with
// different models are never mixed. A prepared directory holds tokenizer.json ({"kind", "name",
// "model"}) and the model file itself (tokenizer.model for SentencePiece, hf_tokenizer.json for
// hf), so the directory alone can decode its shards. Imported token files without a tokenizer
// (data/import.h, "ids:VOCAB") have kind "ids" and no model: loading one gives nullptr.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace bt {

// The files of a tokenizer in a prepared directory and in a checkpoint.
inline constexpr const char* kTokenizerJsonFile = "tokenizer.json";   // {"kind", "name", "model"}
inline constexpr const char* kSpmModelFile = "tokenizer.model";       // SentencePiece
inline constexpr const char* kHfTokenizerFile = "hf_tokenizer.json";  // Hugging Face (bpe_tokenizer.h)
inline constexpr std::array<const char*, 3> kTokenizerFiles = {kTokenizerJsonFile, kSpmModelFile, kHfTokenizerFile};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;  // no EOS appended
  // Text of the ids; EOS and ids outside the vocabulary produce nothing.
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual int vocab_size() const = 0;
  virtual int eos_id() const = 0;
  virtual std::string name() const = 0;  // "byte" | "spm:<sha256>" | "hf:<sha256>"
  virtual std::string kind() const = 0;  // "byte" | "spm" | "hf"
  // Writes tokenizer.json (and tokenizer.model for SentencePiece) into `dir`, atomically.
  virtual void save_to_dir(const std::string& dir) const = 0;
};

// The text that `continuation` adds after `prompt`: the two are decoded together and the prompt's
// own decoding is cut off, so a tokenizer that joins them (SentencePiece's word-initial space:
// "In the" + "children" is "In the children") is honoured. Falls back to decoding the
// continuation alone when the joint text does not start with the prompt's.
std::string decode_continuation(const Tokenizer& tok, const std::vector<int32_t>& prompt,
                                const std::vector<int32_t>& continuation);

// A parsed --tokenizer spec.
struct TokenizerSpec {
  enum class Kind { Byte, Spm, TrainSpm, Hf } kind = Kind::Byte;
  std::string model_path;  // Spm, Hf
  int train_vocab = 0;     // TrainSpm
};
TokenizerSpec parse_tokenizer_spec(const std::string& spec);  // throws on a malformed spec

std::unique_ptr<Tokenizer> make_byte_tokenizer();
std::unique_ptr<Tokenizer> load_spm_tokenizer(const std::string& model_path);

struct SpmTrainOptions {
  int vocab_size = 8192;
  int threads = 0;                    // 0: min(hardware threads, 8)
  uint64_t max_sentences = 1000000;   // sentences beyond this are subsampled by the trainer
  uint64_t seed = 1;
};
// Trains a BPE SentencePiece model on `sentences` (lines of text, no newlines). The model
// uses byte fallback (every UTF-8 string encodes, nothing is <unk>) and identity normalization,
// so decode(encode(text)) == text for text whose lines don't start or end with spaces.
std::unique_ptr<Tokenizer> train_spm_tokenizer(const std::vector<std::string>& sentences,
                                               const SpmTrainOptions& opt);

// "byte", "spm:PATH" or "hf:PATH". A "train-spm:N" spec needs text: use train_spm_tokenizer.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& spec);

// The name in DIR/tokenizer.json (a prepared directory or a checkpoint); "" without one. Throws
// when the file is not valid JSON.
std::string tokenizer_name_in_dir(const std::string& dir);
// The tokenizer of a prepared directory (its tokenizer.json); nullptr for kind "ids".
std::unique_ptr<Tokenizer> load_tokenizer_from_dir(const std::string& dir);
// The tokenizer named by a shard's `tokenizer` attribute: "byte" needs nothing; "spm:<hash>"
// loads `dir`/tokenizer.model and "hf:<hash>" `dir`/hf_tokenizer.json and checks its hash;
// "ids:V" gives nullptr. Fails with a one-line hint otherwise.
std::unique_ptr<Tokenizer> load_tokenizer_for_shard(const std::string& tokenizer_attr,
                                                    const std::string& dir);
// Same, from a shard file: reads its attribute and looks in the shard's directory.
std::unique_ptr<Tokenizer> load_tokenizer_for_shard_file(const std::string& shard_path);
// Same, for the first shard of a glob or comma-separated list (e.g. config data.train).
std::unique_ptr<Tokenizer> load_tokenizer_for_shards(const std::string& glob_or_list);

}  // namespace bt

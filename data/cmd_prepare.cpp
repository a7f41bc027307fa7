// `bt prepare`: the command line of the tokenization pipeline in prepare.h, and of the token-file
// import in import.h (--format megatron|nanogpt|npy|llmc, or auto-detected token files).
#include <CLI/CLI.hpp>
#include <filesystem>
#include <memory>
#include <optional>

#include "core/error.h"
#include "core/log.h"
#include "data/commands.h"
#include "data/import.h"
#include "data/prepare.h"

namespace bt {

namespace {
struct ImportArgs {
  int64_t eos_id = -1;
  bool split_on_eos = false;
  std::string doc_eos = "append";
  uint64_t max_tokens = 0;
};

// The token format of the inputs (explicit, or auto-detected when every input is a token file).
std::optional<TokenFileFormat> token_format_of(const PrepareOptions& o) {
  if (auto f = parse_token_format(o.format)) return f;
  if (o.format != "auto") return std::nullopt;
  std::optional<TokenFileFormat> found;
  size_t n = 0;
  for (const auto& p : o.inputs)
    if (auto f = p == "-" ? std::nullopt : detect_token_format(p)) {
      BT_CHECK(!found || *found == *f, "inputs of different token formats ('", o.inputs.front(), "' and '", p,
               "'); import them separately or give --format");
      found = f;
      ++n;
    }
  BT_CHECK(n == 0 || n == o.inputs.size(), "some inputs are token files (", token_format_name(*found),
           ") and some are text; prepare them separately");
  return found;
}
}  // namespace

void add_prepare_command(CLI::App& app) {
  auto o = std::make_shared<PrepareOptions>();
  auto im = std::make_shared<ImportArgs>();
  CLI::App* cmd = app.add_subcommand(
      "prepare",
      "tokenize text or JSONL, or import token files (Megatron/Pythia .idx/.bin, nanoGPT .bin, .npy, llm.c "
      ".bin), into HDF5 shards (train-*.h5, val-*.h5) with manifest.json\n"
      "example: bt prepare --input corpus.txt --tokenizer train-spm:8192 --out data/mycorpus\n"
      "example: bt prepare --format megatron --input pile_0.87_deduped_text_document --tokenizer "
      "hf:20B_tokenizer.json --out data/pile");
  cmd->add_option("-i,--input", o->inputs, "input files; - reads stdin; megatron: path prefixes of .idx/.bin pairs")
      ->required()
      ->expected(1, -1);
  cmd->add_option("--format", o->format,
                  "text | jsonl (field \"text\") | megatron | nanogpt | npy | llmc | auto (by extension, a "
                  "sibling .idx, an llm.c magic, or a leading '{')")
      ->check(CLI::IsMember({"text", "jsonl", "auto", "megatron", "nanogpt", "npy", "llmc"}))
      ->capture_default_str();
  CLI::Option* tok = cmd->add_option("--tokenizer", o->tokenizer,
                                     "byte (vocab 257) | spm:PATH.model | train-spm:VOCAB (BPE trained on the input) | "
                                     "hf:PATH (a Hugging Face byte-level BPE tokenizer.json) | ids:VOCAB (token "
                                     "files only: ids without a tokenizer)")
                         ->capture_default_str();
  cmd->add_option("-o,--out", o->out, "output directory")->required();
  cmd->add_option("--val-fraction", o->val_fraction, "fraction of documents held out for validation")
      ->capture_default_str();
  cmd->add_option("--shard-tokens", o->shard_tokens, "tokens per shard (documents are never split)")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "seed of the train/val split and of tokenizer training")
      ->capture_default_str();
  cmd->add_option("--doc-split", o->doc_split, "text inputs: blank (blank-line separated) | line")
      ->check(CLI::IsMember({"blank", "line"}))
      ->capture_default_str();
  cmd->add_option("--threads", o->threads, "worker threads (0: all cores, at most 8)")->capture_default_str();
  cmd->add_option("--spm-max-sentences", o->spm_max_sentences,
                  "train-spm: lines sampled from the input for training")
      ->capture_default_str();
  CLI::Option* eos = cmd->add_option("--eos-id", im->eos_id, "token files: the EOS id (default: the tokenizer's)");
  CLI::Option* split = cmd->add_flag("--split-on-eos", im->split_on_eos,
                                     "nanogpt / npy / llmc: documents end at each EOS (default: one document per file)");
  CLI::Option* doc_eos = cmd->add_option("--doc-eos", im->doc_eos,
                                         "megatron: append (EOS after every sequence; the Pythia files hold none) | "
                                         "present (the sequences already end with EOS)")
                             ->check(CLI::IsMember({"append", "present"}))
                             ->capture_default_str();
  CLI::Option* maxt =
      cmd->add_option("--max-tokens", im->max_tokens, "token files: import only the first N tokens (0: all)");
  CLI::Option* utf8 = cmd->add_option("--on-invalid-utf8", o->on_invalid_utf8,
                  "input that is not valid UTF-8: replace (each bad sequence by U+FFFD, counted; the byte tokenizer "
                  "keeps the bytes) | error (stop at the first, naming file:line)")
      ->check(CLI::IsMember({"error", "replace"}))
      ->capture_default_str();
  cmd->add_flag("--force", o->force, "replace a corpus already prepared in --out");
  auto no_progress = std::make_shared<bool>(false);
  cmd->add_flag("--no-progress", *no_progress, "no progress display on stderr");
  cmd->callback([o, im, no_progress, tok, eos, split, doc_eos, maxt, utf8] {
    o->progress = !*no_progress;
    const std::string manifest = (std::filesystem::path(o->out) / "manifest.json").string();
    if (auto fmt = token_format_of(*o)) {
      BT_CHECK(utf8->count() == 0, "--on-invalid-utf8 applies to text and JSONL inputs, not to token files");
      ImportOptions io;
      io.inputs = o->inputs;
      io.format = *fmt;
      io.out = o->out;
      io.tokenizer = tok->count() > 0 ? o->tokenizer : "";
      io.eos_id = im->eos_id;
      io.split_on_eos = im->split_on_eos;
      io.doc_eos = im->doc_eos;
      io.val_fraction = o->val_fraction;
      io.shard_tokens = o->shard_tokens;
      io.seed = o->seed;
      io.max_tokens = im->max_tokens;
      io.threads = o->threads;
      io.force = o->force;
      io.progress = o->progress;
      ImportSummary s = run_import(io);
      log_info("prepared {}: train {} tokens / {} documents / {} shards, val {} tokens / {} documents / {} "
               "shards; tokenizer {} (vocab {}); {} source tokens in {:.1f} s ({:.0f} tokens/s{})",
               manifest, s.train_tokens, s.train_documents, s.train_shards, s.val_tokens, s.val_documents,
               s.val_shards, s.tokenizer, s.vocab_size, s.source_tokens, s.seconds, s.tokens_per_second,
               s.units_resumed ? ", resumed" : "");
      return;
    }
    for (CLI::Option* x : {eos, split, doc_eos, maxt})
      BT_CHECK(x->count() == 0, x->get_name(), " applies to token files (--format megatron|nanogpt|npy|llmc)");
    PrepareSummary s = run_prepare(*o);
    log_info("prepared {}: train {} tokens / {} documents / {} shards, val {} tokens / {} documents / {} "
             "shards; tokenizer {} (vocab {}); {:.0f} tokens/s",
             manifest, s.train_tokens, s.train_documents, s.train_shards, s.val_tokens, s.val_documents,
             s.val_shards, s.tokenizer, s.vocab_size, s.tokens_per_second);
    if (s.invalid_utf8_bytes > 0)
      log_warn("{} bytes of the input are not valid UTF-8 ({} lines, the first at {}); {}", s.invalid_utf8_bytes,
               s.invalid_utf8_lines, s.invalid_utf8_first,
               s.invalid_utf8_replaced ? "they were replaced by U+FFFD (--on-invalid-utf8 error stops instead)"
                                       : "the byte tokenizer kept them as bytes");
  });
}

}  // namespace bt

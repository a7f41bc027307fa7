// `bt prepare`: the command line of the tokenization pipeline in prepare.h.
#include <CLI/CLI.hpp>
#include <filesystem>
#include <memory>

#include "core/commands.h"
#include "core/log.h"
#include "data/prepare.h"

namespace bt {

void add_prepare_command(CLI::App& app) {
  auto o = std::make_shared<PrepareOptions>();
  CLI::App* cmd = app.add_subcommand(
      "prepare",
      "tokenize text or JSONL into HDF5 shards (train-*.h5, val-*.h5) with manifest.json\n"
      "example: bt prepare --input corpus.txt --tokenizer train-spm:8192 --out data/mycorpus");
  cmd->add_option("-i,--input", o->inputs, "input files; - reads stdin")->required()->expected(1, -1);
  cmd->add_option("--format", o->format, "text | jsonl (field \"text\") | auto (by extension or a leading '{')")
      ->check(CLI::IsMember({"text", "jsonl", "auto"}))
      ->capture_default_str();
  cmd->add_option("--tokenizer", o->tokenizer,
                  "byte (vocab 257) | spm:PATH.model | train-spm:VOCAB (BPE trained on the input)")
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
  cmd->add_option("--threads", o->threads, "tokenizer threads (0: all cores, at most 8)")
      ->capture_default_str();
  cmd->add_option("--spm-max-sentences", o->spm_max_sentences,
                  "train-spm: lines sampled from the input for training")
      ->capture_default_str();
  cmd->add_flag("--force", o->force, "replace a corpus already prepared in --out");
  auto no_progress = std::make_shared<bool>(false);
  cmd->add_flag("--no-progress", *no_progress, "no progress line on stderr");
  cmd->callback([o, no_progress] {
    o->progress = !*no_progress;
    PrepareSummary s = run_prepare(*o);
    log_info("prepared {}: train {} tokens / {} documents / {} shards, val {} tokens / {} documents / {} "
             "shards; tokenizer {} (vocab {}); {:.0f} tokens/s",
             (std::filesystem::path(o->out) / "manifest.json").string(), s.train_tokens,
             s.train_documents, s.train_shards, s.val_tokens, s.val_documents, s.val_shards,
             s.tokenizer, s.vocab_size, s.tokens_per_second);
  });
}

}  // namespace bt

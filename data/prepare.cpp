// `bt prepare` pipeline: read documents, (train a tokenizer), tokenize in parallel, route each
// document to train or val, write shards, then the tokenizer files and manifest.json last.
#include "data/prepare.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "core/checksum.h"
#include "core/error.h"
#include "core/log.h"
#include "core/rng.h"
#include "core/format.h"
#include "core/progress.h"
#include "core/timer.h"
#include "data/documents.h"
#include "data/manifest.h"
#include "data/output_dir.h"
#include "data/sha256.h"
#include "data/shard.h"
#include "data/tokenizer.h"

namespace bt {
namespace fs = std::filesystem;

namespace {

struct Input {
  std::string path;       // "-" for stdin
  bool buffered = false;  // stdin read into `text` (needed for two passes)
  std::string text;
  std::string name() const { return path == "-" ? "<stdin>" : path; }
};

// Calls f(doc) for every document of every input, in order.
template <class F>
void for_each_document(const std::vector<Input>& inputs, const PrepareOptions& opt, DocSplit split,
                       Utf8Policy* utf8, F&& f) {
  for (const Input& in : inputs) {
    std::ifstream file;
    std::istringstream mem;
    std::istream* is = nullptr;
    std::string head;
    std::vector<char> iobuf;
    if (in.path == "-") {
      if (in.buffered) {
        mem.str(in.text);
        is = &mem;
        head = in.text.substr(0, 4096);
      } else {
        is = &std::cin;
        int c = std::cin.peek();
        if (c != EOF) head.push_back(char(c));
      }
    } else {
      {
        std::ifstream probe(in.path, std::ios::binary);
        BT_CHECK(probe, "input '", in.path, "': cannot open (", std::strerror(errno), ")");
        head.resize(4096);
        probe.read(head.data(), std::streamsize(head.size()));
        head.resize(size_t(probe.gcount()));
      }
      iobuf.resize(1 << 20);
      file.rdbuf()->pubsetbuf(iobuf.data(), std::streamsize(iobuf.size()));
      file.open(in.path, std::ios::binary);
      BT_CHECK(file, "input '", in.path, "': cannot open (", std::strerror(errno), ")");
      is = &file;
    }
    const InputFormat fmt = parse_input_format(opt.format, in.path == "-" ? "" : in.path, head);
    DocumentReader reader(*is, in.name(), fmt, split, utf8);
    std::string doc;
    while (reader.next(doc)) f(doc);
  }
}

// True when the document is held out: a hash of (seed, text) below val_fraction.
bool goes_to_val(const std::string& doc, uint64_t seed, double val_fraction) {
  if (val_fraction <= 0) return false;
  uint64_t x = hash_name(doc) ^ (seed * 0xd1b54a32d192ed03ull) ^ hash_name("val_split");
  const double u = double(splitmix64(x) >> 11) * 0x1.0p-53;
  return u < val_fraction;
}

// Writes one split's shards: prefix-00000.h5, prefix-00001.h5, ...
class SplitWriter {
 public:
  SplitWriter(std::string dir, std::string prefix, ShardMeta meta, uint64_t shard_tokens)
      : dir_(std::move(dir)), prefix_(std::move(prefix)), meta_(std::move(meta)),
        shard_tokens_(shard_tokens) {}

  void add(const std::vector<int32_t>& ids) {
    if (cur_ && cur_->tokens() > 0 && cur_->tokens() + ids.size() + 1 > shard_tokens_) close();
    if (!cur_) {
      char name[64];
      std::snprintf(name, sizeof(name), "%s-%05d.h5", prefix_.c_str(), int(shards_.size()));
      cur_ = std::make_unique<ShardWriter>((fs::path(dir_) / name).string(), meta_);
    }
    cur_->add_document(ids.data(), ids.size());
    tokens_ += ids.size() + 1;
    docs_ += 1;
  }
  void close() {
    if (!cur_) return;
    const uint64_t tokens = cur_->tokens(), documents = cur_->documents();
    cur_->finish();
    const std::string path = cur_->path();
    shards_.push_back({{"file", fs::path(path).filename().string()},
                       {"split", prefix_},
                       {"tokens", tokens},
                       {"documents", documents},
                       {"bytes", uint64_t(fs::file_size(path))},
                       {"sha256", sha256_file(path)},
                       {"xxh3", xxh3_file(path)}});
    cur_.reset();
  }
  uint64_t tokens() const { return tokens_; }
  uint64_t documents() const { return docs_; }
  std::vector<nlohmann::ordered_json>& shards() { return shards_; }

 private:
  std::string dir_, prefix_;
  ShardMeta meta_;
  uint64_t shard_tokens_;
  std::unique_ptr<ShardWriter> cur_;
  std::vector<nlohmann::ordered_json> shards_;
  uint64_t tokens_ = 0, docs_ = 0;
};

}  // namespace

namespace {
PrepareSummary run_prepare_impl(const PrepareOptions& opt);
}  // namespace

PrepareSummary run_prepare(const PrepareOptions& opt) {
  std::error_code ec;
  const bool existed = opt.out.empty() || fs::exists(opt.out, ec);
  try {
    return run_prepare_impl(opt);
  } catch (...) {
    // A directory this run created and left empty (e.g. an empty corpus) goes away again, with
    // the unfinished marker when nothing else was written.
    if (!existed && fs::is_directory(opt.out, ec)) {
      size_t n = 0;
      for (const auto& e : fs::directory_iterator(opt.out, ec)) n += e.path().filename() != kPrepareMarker;
      if (n == 0) fs::remove_all(opt.out, ec);
    }
    throw;
  }
}

namespace {
PrepareSummary run_prepare_impl(const PrepareOptions& opt) {
  // ---- validate everything before touching the output ----
  BT_CHECK(!opt.inputs.empty(), "bt prepare: no --input given (a file, several files, or - for stdin)");
  BT_CHECK(!opt.out.empty(), "bt prepare: --out DIR is required");
  BT_CHECK(opt.val_fraction >= 0 && opt.val_fraction < 1, "--val-fraction must be in [0, 1), got ",
           opt.val_fraction);
  BT_CHECK(opt.shard_tokens >= 1, "--shard-tokens must be >= 1");
  const DocSplit split = parse_doc_split(opt.doc_split);
  BT_CHECK(opt.on_invalid_utf8 == "error" || opt.on_invalid_utf8 == "replace", "--on-invalid-utf8 must be error or "
           "replace, got '", opt.on_invalid_utf8, "'");
  const bool utf8_error = opt.on_invalid_utf8 == "error";
  parse_input_format(opt.format, "", "");  // validates the name
  const TokenizerSpec spec = parse_tokenizer_spec(opt.tokenizer);
  std::vector<Input> inputs;
  int n_stdin = 0;
  for (const auto& p : opt.inputs) {
    if (p == "-") {
      ++n_stdin;
    } else {
      std::error_code ec;
      BT_CHECK(fs::exists(p, ec), "input '", p, "': no such file");
      BT_CHECK(!fs::is_directory(p, ec), "input '", p, "' is a directory; list its files instead");
    }
    Input in;
    in.path = p;
    inputs.push_back(std::move(in));
  }
  BT_CHECK(n_stdin <= 1, "--input - (stdin) can be given only once");
  const int threads = opt.threads > 0
                          ? opt.threads
                          : int(std::min(8u, std::max(1u, std::thread::hardware_concurrency())));

  // ---- tokenizer ----
  PrepareSummary sum;
  std::unique_ptr<Tokenizer> tok;
  if (spec.kind == TokenizerSpec::Kind::TrainSpm) {
    for (auto& in : inputs)
      if (in.path == "-") {  // two passes over stdin: keep it
        std::ostringstream ss;
        ss << std::cin.rdbuf();
        in.text = ss.str();
        in.buffered = true;
      }
    Timer t;
    // Reservoir sample of lines, so memory and training time stay bounded on any corpus.
    std::vector<std::string> sample;
    Rng rng(opt.seed, hash_name("spm_sentence_sample"));
    uint64_t seen = 0;
    const uint64_t cap = std::max<uint64_t>(1, opt.spm_max_sentences);
    Utf8Policy sample_utf8;  // the same treatment as the tokenize pass, counted there
    sample_utf8.mode = utf8_error ? Utf8Policy::Mode::error : Utf8Policy::Mode::replace;
    for_each_document(inputs, opt, split, &sample_utf8, [&](const std::string& doc) {
      size_t at = 0;
      while (at <= doc.size()) {
        size_t nl = doc.find('\n', at);
        if (nl == std::string::npos) nl = doc.size();
        if (nl > at) {
          ++seen;
          if (sample.size() < cap) {
            sample.emplace_back(doc, at, nl - at);
          } else {
            const uint64_t j = rng.below(seen);
            if (j < cap) sample[j].assign(doc, at, nl - at);
          }
        }
        at = nl + 1;
      }
    });
    BT_CHECK(!sample.empty(), "empty corpus: no text in ", opt.inputs.size() == 1 ? "input '" : "inputs '",
             opt.inputs.front(), opt.inputs.size() > 1 ? "', ..." : "'", " to train a tokenizer on");
    if (opt.progress)
      std::fprintf(stderr, "prepare: training a BPE SentencePiece model of %d pieces on %s lines\n",
                   spec.train_vocab, format_count(double(sample.size())).c_str());
    SpmTrainOptions so;
    so.vocab_size = spec.train_vocab;
    so.threads = threads;
    so.max_sentences = cap;
    so.seed = opt.seed;
    tok = train_spm_tokenizer(sample, so);
    sum.tokenizer_train_seconds = t.seconds();
    if (opt.progress)
      std::fprintf(stderr, "prepare: trained %s (%d pieces) in %.1f s\n", tok->name().c_str(),
                   tok->vocab_size(), sum.tokenizer_train_seconds);
  } else {
    tok = make_tokenizer(opt.tokenizer);
  }
  sum.tokenizer = tok->name();
  sum.vocab_size = tok->vocab_size();

  // ---- shards ----
  open_output_dir(opt.out, opt.force);
  mark_output_unfinished(opt.out);
  Utf8Policy utf8;
  utf8.mode = utf8_error ? Utf8Policy::Mode::error
                         : tok->kind() == "byte" ? Utf8Policy::Mode::keep : Utf8Policy::Mode::replace;
  const ShardMeta meta{tok->vocab_size(), tok->eos_id(), tok->name()};
  SplitWriter train(opt.out, "train", meta, opt.shard_tokens);
  SplitWriter val(opt.out, "val", meta, opt.shard_tokens);
  ProgressBar progress("prepare", "tokens", 0, {.enabled = opt.progress});
  auto progress_note = [&] {
    return format_count(double(train.documents() + val.documents())) + " docs, " +
           format_count(double(sum.input_bytes)) + "B read";
  };
  Timer timer;

  std::vector<std::string> batch;
  std::vector<std::vector<int32_t>> ids;
  size_t batch_bytes = 0;
  auto flush = [&] {
    ids.assign(batch.size(), {});
    const size_t nt = std::min<size_t>(size_t(threads), batch.size());
    if (nt <= 1) {
      for (size_t i = 0; i < batch.size(); ++i) ids[i] = tok->encode(batch[i]);
    } else {
      // Contiguous ranges of similar byte size per thread; order is kept by index.
      std::vector<std::thread> pool;
      std::vector<std::exception_ptr> errs(nt);
      std::vector<size_t> bounds{0};
      size_t acc = 0, per = batch_bytes / nt + 1;
      for (size_t i = 0; i < batch.size(); ++i) {
        acc += batch[i].size();
        if (acc >= per * bounds.size() && bounds.size() < nt) bounds.push_back(i + 1);
      }
      bounds.push_back(batch.size());
      for (size_t t = 0; t + 1 < bounds.size(); ++t)
        pool.emplace_back([&, t] {
          try {
            for (size_t i = bounds[t]; i < bounds[t + 1]; ++i) ids[i] = tok->encode(batch[i]);
          } catch (...) {
            errs[t] = std::current_exception();
          }
        });
      for (auto& th : pool) th.join();
      for (auto& e : errs)
        if (e) std::rethrow_exception(e);
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      (goes_to_val(batch[i], opt.seed, opt.val_fraction) ? val : train).add(ids[i]);
      sum.input_bytes += batch[i].size();
    }
    batch.clear();
    batch_bytes = 0;
    progress.update(train.tokens() + val.tokens(), progress_note());
  };
  for_each_document(inputs, opt, split, &utf8, [&](const std::string& doc) {
    batch_bytes += doc.size();
    batch.push_back(doc);
    if (batch_bytes >= (8u << 20) || batch.size() >= 16384) flush();
  });
  flush();
  train.close();
  val.close();
  sum.seconds = timer.seconds();
  progress.finish(train.tokens() + val.tokens(), progress_note());

  BT_CHECK(train.documents() + val.documents() > 0, "empty corpus: ",
           opt.inputs.size() == 1 ? "input '" : "inputs '", opt.inputs.front(),
           opt.inputs.size() > 1 ? "', ... hold" : "' holds", " no documents");
  std::vector<nlohmann::ordered_json> shards = train.shards();
  if (train.documents() == 0) {
    // Every document hashed into val (a tiny corpus): train on them rather than on nothing.
    log_warn("all {} documents fell into the val split; using them for train instead (no val shard)",
             val.documents());
    for (auto& s : val.shards()) {
      const std::string from = s["file"], to = "train" + from.substr(3);
      fs::rename(fs::path(opt.out) / from, fs::path(opt.out) / to);
      s["file"] = to;
      s["split"] = "train";
      shards.push_back(s);
    }
    sum.train_tokens = val.tokens();
    sum.train_documents = val.documents();
  } else {
    for (auto& s : val.shards()) shards.push_back(s);
    sum.train_tokens = train.tokens();
    sum.train_documents = train.documents();
    sum.val_tokens = val.tokens();
    sum.val_documents = val.documents();
    if (opt.val_fraction > 0 && val.documents() == 0)
      log_warn("no document fell into the val split (--val-fraction {} of {} documents); no val shard written",
               opt.val_fraction, train.documents());
  }
  for (const auto& s : shards) (s["split"] == "train" ? sum.train_shards : sum.val_shards) += 1;
  const double total_tokens = double(sum.train_tokens + sum.val_tokens);
  sum.tokens_per_second = total_tokens / std::max(sum.seconds, 1e-9);

  // ---- tokenizer files, then the manifest last ----
  tok->save_to_dir(opt.out);
  const ManifestHeader header{tok->name(), tok->kind(), tok->vocab_size(), tok->eos_id(), opt.inputs,
                              opt.format, opt.val_fraction, opt.seed, opt.shard_tokens};
  write_manifest(opt.out, header,
                 {{"doc_split", opt.doc_split},
                  {"input_bytes", sum.input_bytes},
                  {"on_invalid_utf8", opt.on_invalid_utf8},
                  {"invalid_utf8_bytes", utf8.bytes}},
                 shards);
  sum.invalid_utf8_bytes = utf8.bytes;
  sum.invalid_utf8_lines = utf8.lines;
  sum.invalid_utf8_replaced = utf8.mode == Utf8Policy::Mode::replace;
  sum.invalid_utf8_first = utf8.first;
  return sum;
}
}  // namespace

}  // namespace bt

// `bt tokenize`: encode text with a tokenizer and show the ids (and what they decode to), one
// JSON line per input line; or time the encoder on a file (--bench). Used to inspect a
// tokenizer, by the tests that compare the hf: tokenizer with the Python `tokenizers` package
// (tests/data/test_bpe_tokenizer.py, input lines as hex with --hex), and for docs/benchmarks.md.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/timer.h"
#include "data/commands.h"
#include "data/tokenizer.h"

namespace bt {

namespace {
std::string from_hex(const std::string& h, uint64_t line) {
  BT_CHECK(h.size() % 2 == 0, "--hex input line ", line, ": odd number of hex digits");
  std::string out(h.size() / 2, '\0');
  for (size_t i = 0; i < out.size(); ++i) {
    unsigned v = 0;
    BT_CHECK(std::sscanf(h.c_str() + 2 * i, "%2x", &v) == 1, "--hex input line ", line, ": not hex");
    out[i] = char(v);
  }
  return out;
}
std::string to_hex(const std::string& s) {
  static const char* d = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out.push_back(d[c >> 4]);
    out.push_back(d[c & 15]);
  }
  return out;
}
}  // namespace

void add_tokenize_command(CLI::App& app) {
  struct Args {
    std::string tokenizer, input = "-";
    std::vector<std::string> texts;
    bool hex = false, bench = false;
    int threads = 1;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "tokenize",
      "encode text with a tokenizer: one JSON line {\"ids\", \"text\"} per input line, or time it with --bench\n"
      "example: bt tokenize --tokenizer hf:20B_tokenizer.json --text \"Hello world\"");
  cmd->add_option("--tokenizer", a->tokenizer, "byte | spm:PATH | hf:PATH | a prepared data directory")->required();
  cmd->add_option("--text", a->texts, "text to encode (instead of --input)");
  cmd->add_option("-i,--input", a->input, "file of lines to encode; - reads stdin")->capture_default_str();
  cmd->add_flag("--hex", a->hex, "input lines are hex-encoded bytes, and \"text\" is printed as \"hex\"");
  cmd->add_flag("--bench", a->bench, "encode the whole input (one document) and print tokens/s only");
  cmd->add_option("--threads", a->threads, "--bench: threads encoding slices of the input")->capture_default_str();
  cmd->callback([a] {
    std::unique_ptr<Tokenizer> tok;
    if (std::filesystem::is_directory(a->tokenizer)) {
      tok = load_tokenizer_from_dir(a->tokenizer);
      BT_CHECK(tok, "data directory '", a->tokenizer, "' holds token ids without a tokenizer");
    } else {
      tok = make_tokenizer(a->tokenizer);
    }
    std::ifstream file;
    std::istream* in = &std::cin;
    if (a->texts.empty() && a->input != "-") {
      file.open(a->input, std::ios::binary);
      BT_CHECK(file, "--input '", a->input, "': cannot open");
      in = &file;
    }
    if (a->bench) {
      std::ostringstream ss;
      ss << in->rdbuf();
      const std::string text = ss.str();
      // Slices cut at newlines, one per thread.
      const int nt = std::max(1, a->threads);
      std::vector<size_t> cut{0};
      for (int t = 1; t < nt; ++t) {
        size_t c = text.find('\n', text.size() * size_t(t) / size_t(nt));
        cut.push_back(c == std::string::npos ? text.size() : c + 1);
      }
      cut.push_back(text.size());
      std::vector<size_t> counts(size_t(nt), 0);
      Timer timer;
      const std::clock_t cpu0 = std::clock();
      std::vector<std::thread> pool;
      for (int t = 0; t < nt; ++t)
        pool.emplace_back([&, t] {
          counts[size_t(t)] = tok->encode(std::string_view(text).substr(cut[size_t(t)], cut[size_t(t) + 1] - cut[size_t(t)])).size();
        });
      for (auto& th : pool) th.join();
      const double s = timer.seconds(), cpu = double(std::clock() - cpu0) / CLOCKS_PER_SEC;
      size_t n = 0;
      for (size_t c : counts) n += c;
      // CPU time too: on a shared machine the wall clock mostly measures the other processes.
      std::printf("%s: %zu bytes -> %zu tokens in %.3f s: %.2f M tokens/s, %.1f MB/s (%d threads); "
                  "%.3f CPU s: %.2f M tokens per CPU second\n",
                  tok->name().c_str(), text.size(), n, s, double(n) / s / 1e6, double(text.size()) / s / 1e6, nt,
                  cpu, double(n) / cpu / 1e6);
      return;
    }
    auto show = [&](const std::string& text) {
      const std::vector<int32_t> ids = tok->encode(text);
      nlohmann::json j = {{"ids", ids}};
      const std::string back = tok->decode(ids);
      if (a->hex) j["hex"] = to_hex(back);
      else j["text"] = back;
      std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    };
    if (!a->texts.empty()) {
      for (const auto& t : a->texts) show(t);
      return;
    }
    std::string line;
    uint64_t n = 0;
    while (std::getline(*in, line)) {
      ++n;
      show(a->hex ? from_hex(line, n) : line);
    }
  });
}

}  // namespace bt

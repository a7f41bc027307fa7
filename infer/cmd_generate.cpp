// `bt generate --ckpt DIR --prompt TEXT ... --max-new-tokens N [--temperature --top-k --top-p --seed
// --greedy]`: KV-cached decoding (block or vanilla) of a batch of prompts, decoded back to text
// with the checkpoint's tokenizer.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/log.h"
#include "core/timer.h"
#include "infer/commands.h"
#include "infer/generator.h"
#include "infer/load.h"

namespace bt {

namespace {

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::string tok;
  std::istringstream is(s);
  while (is >> tok) {
    for (char& c : tok)
      if (c == ',') c = ' ';
    std::istringstream inner(tok);
    long long v;
    while (inner >> v) ids.push_back(static_cast<int32_t>(v));
    BT_CHECK(inner.eof(), "--prompt-ids: '", tok, "' is not a list of integers");
  }
  return ids;
}

// The pad id in front of prompts: --pad-id, else the model's pad token (model.pad_token_id, -1
// meaning the EOS of its training data or tokenizer); never the stop token (--eos-id -1 must not
// change the output). It only matters for a block model's prompt of a length that is not a
// multiple of L_B; when it is unknown and does not matter, 0.
int prompt_pad_id(const Model& model, const std::vector<std::vector<int32_t>>& prompts, int flag) {
  const ModelConfig& m = model.config();
  if (flag >= 0) {
    BT_CHECK(flag < m.vocab_size, "--pad-id ", flag, " is not below model.vocab_size ", m.vocab_size);
    return flag;
  }
  if (m.pad_token_id >= 0) return m.pad_token_id;
  bool matters = false;
  for (const auto& p : prompts) matters = matters || (m.is_block() && (p.empty() || p.size() % m.block_length != 0));
  BT_CHECK(!matters, "the pad token is unknown (model.pad_token_id is -1 and neither the checkpoint's trainer "
           "state nor a tokenizer gives an EOS), and a prompt's length is not a multiple of model.block_length (",
           m.block_length, "): pass --pad-id N (the id the model was trained with) or --tokenizer");
  return 0;
}

}  // namespace

void add_generate_command(CLI::App& app) {
  struct Args {
    std::string ckpt, config, tokenizer, device = "auto", prompt_file;
    std::vector<std::string> prompts, prompt_ids, overrides;
    int max_new_tokens = 64;
    double temperature = 1.0, top_p = 1.0;
    int top_k = 0;
    uint64_t seed = 0;
    bool greedy = false, print_ids = false, naive = false;
    int eos_id = -2, pad_id = -1;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("generate", "sample text from a checkpoint (block decoding with KV caches)");
  cmd->add_option("--ckpt", a->ckpt, "checkpoint directory (or runs/NAME/checkpoints/latest, or a .safetensors "
                                     "file with --config)")
      ->required();
  cmd->add_option("--config", a->config, "config describing the weights (default: the checkpoint's config.yaml)");
  // One value per --prompt / --prompt-ids: what follows is an override or another option, never a
  // second prompt.
  cmd->add_option("--prompt", a->prompts, "prompt text; repeat for a batch")
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--prompt-file", a->prompt_file, "file with one prompt per line (added to the batch)");
  cmd->add_option("--prompt-ids", a->prompt_ids, "a prompt as token ids ('1 2 3' or '1,2,3'); repeatable")
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "tokens to generate per prompt");
  cmd->add_option("--temperature", a->temperature, "softmax temperature (<= 0: greedy)");
  cmd->add_option("--top-k", a->top_k, "sample among the k most likely tokens (0: all)");
  cmd->add_option("--top-p", a->top_p, "sample from the smallest set with this much probability (1: all)");
  cmd->add_option("--seed", a->seed, "random seed (each prompt draws from its own stream)");
  cmd->add_flag("--greedy", a->greedy, "always take the most likely token");
  cmd->add_option("--tokenizer", a->tokenizer,
                  "byte | spm:PATH | hf:PATH (tokenizer.json) | a prepared data directory (default: the checkpoint's tokenizer)");
  cmd->add_option("--eos-id", a->eos_id, "stop token (default: the tokenizer's EOS; -1: never stop)");
  cmd->add_option("--pad-id", a->pad_id,
                  "token put in front of a block model's prompt up to a multiple of L_B (default: the model's "
                  "pad token, docs/inference.md)");
  cmd->add_option("--device", a->device, "auto | cpu | cuda");
  cmd->add_flag("--print-ids", a->print_ids, "print the generated token ids too");
  cmd->add_flag("--naive", a->naive, "recompute the full sequence for every token (slow; for checking the caches)");
  cmd->add_option("overrides", a->overrides, "config overrides section.key=value");
  cmd->callback([a] {
    // The options first, before minutes of loading.
    BT_CHECK(a->max_new_tokens >= 0, "--max-new-tokens must be >= 0 (got ", a->max_new_tokens, ")");
    BT_CHECK(std::isfinite(a->temperature), "--temperature must be a finite number (got ", a->temperature,
             "); 0 or less means greedy");
    BT_CHECK(std::isfinite(a->top_p) && a->top_p > 0 && a->top_p <= 1, "--top-p must be in (0, 1] (got ", a->top_p,
             ")");
    BT_CHECK(a->top_k >= 0, "--top-k must be >= 0 (0: no limit; got ", a->top_k, ")");
    BT_CHECK(a->eos_id >= -2, "--eos-id must be a token id, or -1 for none (got ", a->eos_id, ")");
    for (const auto& o : a->overrides)
      BT_CHECK(o.find('=') != std::string::npos, "'", o, "' is neither an option nor a section.key=value override (a "
               "prompt needs --prompt before it)");
    std::vector<std::string> texts = a->prompts;
    if (!a->prompt_file.empty()) {
      std::ifstream f(a->prompt_file);
      BT_CHECK(f.good(), "--prompt-file ", a->prompt_file, ": cannot read");
      for (std::string line; std::getline(f, line);)
        if (!line.empty()) texts.push_back(line);
    }
    BT_CHECK(!texts.empty() || !a->prompt_ids.empty(), "give at least one --prompt, --prompt-file or --prompt-ids");
    InferenceModel im = open_inference_model(a->ckpt, a->config, a->overrides, a->device);
    std::unique_ptr<Tokenizer> tok = find_tokenizer(im, a->tokenizer);
    if (im.eos_id < 0 && tok) im.eos_id = tok->eos_id();  // e.g. official weights with --tokenizer
    load_inference_weights(im, a->naive ? 1 : 0);
    if (!im.ignored.empty())
      log_info("{}: ignored {} tensors this model does not use: {}", im.weights, im.ignored.size(),
               summarize_names(im.ignored));
    BT_CHECK(tok || texts.empty(), "no tokenizer found for ", a->ckpt,
             ": pass --tokenizer byte|spm:PATH|hf:PATH|DATA_DIR, or give token ids with --prompt-ids");
    if (tok)
      BT_CHECK(tok->vocab_size() <= im.config.model.vocab_size, "the tokenizer has ", tok->vocab_size(),
               " tokens but the model only ", im.config.model.vocab_size, ": wrong --tokenizer?");

    std::vector<std::vector<int32_t>> prompts;
    for (const auto& t : texts) prompts.push_back(tok->encode(t));
    for (const auto& s : a->prompt_ids) prompts.push_back(parse_ids(s));

    GenerateOptions o;
    o.max_new_tokens = a->max_new_tokens;
    o.sampling.greedy = a->greedy;
    o.sampling.temperature = a->temperature;
    o.sampling.top_k = a->top_k;
    o.sampling.top_p = a->top_p;
    o.sampling.seed = a->seed;
    o.eos_id = a->eos_id != -2 ? a->eos_id : (tok ? tok->eos_id() : -1);
    o.pad_id = prompt_pad_id(*im.model, prompts, a->pad_id);

    size_t longest = 0;
    for (const auto& p : prompts) longest = std::max(longest, p.size());
    if (longest + size_t(o.max_new_tokens) > size_t(im.config.model.context_length))
      log_warn("the longest prompt ({} tokens) + {} new tokens exceeds model.context_length {}: positions beyond "
               "it were never trained", longest, o.max_new_tokens, im.config.model.context_length);

    std::vector<std::vector<int32_t>> out;
    std::vector<bool> eos(prompts.size(), false);
    double seconds = 0;
    if (a->naive) {
      Timer t;
      out = generate_naive(*im.model, prompts, o);
      seconds = t.seconds();
    } else {
      Generator gen(*im.model);
      GenerateResult r = gen.generate(prompts, o);
      out = r.tokens;
      eos = r.hit_eos;
      seconds = r.prefill_seconds + r.decode_seconds;
    }
    size_t total = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
      total += out[i].size();
      fmt::print("=== sample {} ({} prompt tokens, {} new{}) ===\n", i + 1, prompts[i].size(), out[i].size(),
                 eos[i] ? ", stopped at EOS" : "");
      if (tok) {
        // The continuation is decoded together with the prompt (a tokenizer may join the two, e.g.
        // SentencePiece's word-initial space) and printed after the prompt's own text.
        fmt::print("{}{}\n", i < texts.size() ? texts[i] : tok->decode(prompts[i]),
                   decode_continuation(*tok, prompts[i], out[i]));
      }
      if (a->print_ids || !tok) {
        std::string s;
        for (int32_t id : out[i]) s += (s.empty() ? "" : " ") + std::to_string(id);
        fmt::print("ids: {}\n", s);
      }
    }
    std::fflush(stdout);
    fmt::print(stderr, "generated {} tokens for {} prompts in {:.2f} s ({:.1f} tokens/s, {} model, {})\n", total,
               prompts.size(), seconds, seconds > 0 ? double(total) / seconds : 0.0, im.config.model.kind,
               im.backend->name());
  });
}

}  // namespace bt

// Inference throughput benchmark: see bench_infer.h.
#include "infer/bench_infer.h"

#include <fmt/core.h>

#include <algorithm>
#include <memory>

#include "core/error.h"
#include "core/rng.h"
#include "infer/generator.h"
#include "model/backend.h"
#include "model/config.h"
#include "model/model.h"

namespace bt {

namespace {

struct Setting {
  std::string name;
  int prompt = 0, gen = 0;
};

Setting parse_setting(const std::string& name, const std::string& spec, int def_prompt, int def_gen) {
  Setting s{name, def_prompt, def_gen};
  if (spec.empty()) return s;
  const size_t c = spec.find(':');
  BT_CHECK(c != std::string::npos, "--", name, " '", spec, "': expected PROMPT:GEN, e.g. 240:16");
  try {
    s.prompt = std::stoi(spec.substr(0, c));
    s.gen = std::stoi(spec.substr(c + 1));
  } catch (const std::exception&) {
    BT_FAIL("--", name, " '", spec, "': expected PROMPT:GEN with integers, e.g. 240:16");
  }
  BT_CHECK(s.prompt >= 1 && s.gen >= 1, "--", name, " '", spec, "': prompt and gen must be >= 1");
  return s;
}

struct Bench {
  Config cfg;
  std::unique_ptr<Backend> be;
  std::unique_ptr<Model> model;
  std::unique_ptr<Generator> gen;
};

struct Row {
  std::string setting, model;
  int batch, prompt, gen;
  double prefill_s, decode_s, tokens_per_s;
  size_t kv_per_seq;
};

std::string bytes_str(double b) {
  if (b >= 1 << 30) return fmt::format("{:.2f} GiB", b / (1 << 30));
  if (b >= 1 << 20) return fmt::format("{:.2f} MiB", b / (1 << 20));
  return fmt::format("{:.1f} KiB", b / 1024);
}

}  // namespace

void bench_infer(const BenchInferOptions& o) {
  std::vector<std::unique_ptr<Bench>> models;
  for (const std::string& path : {o.config, o.vs}) {
    if (path.empty()) continue;
    auto b = std::make_unique<Bench>();
    b->cfg = load_config(path, o.overrides);
    BackendOptions bo;
    bo.device = o.device;
    bo.precision = b->cfg.train.precision;
    if (o.device == "cpu" || (o.device == "auto" && !cuda_available())) bo.precision = "fp32";
    b->be = make_backend(bo);
    b->model = std::make_unique<Model>(b->cfg.model, *b->be, 0);
    b->model->init(b->cfg.train.seed);
    b->gen = std::make_unique<Generator>(*b->model);
    models.push_back(std::move(b));
  }
  BT_CHECK(!models.empty(), "bench infer: give --config");
  const int L = models[0]->cfg.model.context_length;
  std::vector<Setting> settings;
  if (o.settings == "both" || o.settings == "prefill")
    settings.push_back(parse_setting("prefill-heavy", o.prefill_heavy, std::max(1, L - L / 16), std::max(1, L / 16)));
  if (o.settings == "both" || o.settings == "decode")
    settings.push_back(parse_setting("decode-heavy", o.decode_heavy, std::max(1, L / 16), std::max(1, L - L / 16)));
  BT_CHECK(!settings.empty(), "--settings must be both, prefill or decode");

  fmt::print("bench infer: backend {} [{}], random weights, random prompts, greedy, no EOS\n", models[0]->be->name(),
             dtype_name(models[0]->be->act_dtype()));
  fmt::print("tokens/s = batch x generated tokens / wall time of the whole generate call (prefill included)\n");
  for (const auto& b : models) {
    const ParamTable& t = b->model->table();
    fmt::print("  {:<20} {:<8} non-embedding {:.2f}M, total {:.2f}M parameters\n", b->cfg.name, b->cfg.model.kind,
               t.non_embedding() / 1e6, t.total_params() / 1e6);
  }
  fmt::print("{:<14} {:<20} {:>5} {:>6} {:>5} {:>10} {:>10} {:>11} {:>13}\n", "setting", "model", "batch", "prompt",
             "gen", "prefill s", "decode s", "tokens/s", "KV cache/seq");
  std::vector<Row> rows;
  for (const Setting& s : settings) {
    for (int B : o.batches) {
      BT_CHECK(B >= 1, "--batch values must be >= 1");
      for (const auto& b : models) {
        const int V = b->cfg.model.vocab_size;
        Rng rng(1234, static_cast<uint64_t>(B));
        std::vector<std::vector<int32_t>> prompts(B, std::vector<int32_t>(s.prompt));
        for (auto& p : prompts)
          for (auto& x : p) x = static_cast<int32_t>(rng.below(V));
        GenerateOptions go;
        go.max_new_tokens = s.gen;
        go.sampling.greedy = true;
        go.eos_id = -1;
        go.pad_id = 0;
        // Warm-up (allocations, caches, thread pools), then the best of `repeats`.
        {
          GenerateOptions w = go;
          w.max_new_tokens = std::min(s.gen, 2 * b->cfg.model.block_length);
          b->gen->generate(prompts, w);
        }
        Row best{};
        for (int r = 0; r < std::max(1, o.repeats); ++r) {
          GenerateResult res = b->gen->generate(prompts, go);
          const double total = res.prefill_seconds + res.decode_seconds;
          const double tps = double(B) * s.gen / total;
          if (r == 0 || tps > best.tokens_per_s)
            best = {s.name, b->cfg.name, B, s.prompt, s.gen, res.prefill_seconds, res.decode_seconds, tps,
                    kv_bytes_per_sequence(b->cfg.model, dtype_size(b->be->act_dtype()), s.prompt, s.gen)};
        }
        fmt::print("{:<14} {:<20} {:>5} {:>6} {:>5} {:>10.3f} {:>10.3f} {:>11.1f} {:>13}\n", best.setting, best.model,
                   best.batch, best.prompt, best.gen, best.prefill_s, best.decode_s, best.tokens_per_s,
                   bytes_str(double(best.kv_per_seq)));
        std::fflush(stdout);
        rows.push_back(best);
      }
    }
  }
  if (models.size() == 2) {
    fmt::print("throughput ratio {} / {}:\n", models[0]->cfg.name, models[1]->cfg.name);
    for (const Setting& s : settings) {
      std::string line;
      for (int B : o.batches) {
        const Row *a = nullptr, *c = nullptr;
        for (const Row& r : rows)
          if (r.setting == s.name && r.batch == B) (r.model == models[0]->cfg.name && !a ? a : c) = &r;
        if (a && c) line += fmt::format("  batch {}: x{:.2f}", B, a->tokens_per_s / c->tokens_per_s);
      }
      fmt::print("  {:<14}{}\n", s.name, line);
    }
  }
  if (o.markdown) {
    fmt::print("\n| setting | model | batch | prompt | gen | prefill s | decode s | tokens/s | KV cache / seq |\n");
    fmt::print("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (const Row& r : rows)
      fmt::print("| {} | {} | {} | {} | {} | {:.3f} | {:.3f} | {:.1f} | {} |\n", r.setting, r.model, r.batch, r.prompt,
                 r.gen, r.prefill_s, r.decode_s, r.tokens_per_s, bytes_str(double(r.kv_per_seq)));
  }
}

}  // namespace bt

// Inference throughput benchmark: see bench_infer.h.
#include "infer/bench_infer.h"

#include <fmt/core.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "core/rng.h"
#include "data/shard.h"
#include "infer/generator.h"
#include "model/backend.h"
#include "model/config.h"
#include "model/cuda/cuda_backend.h"
#include "model/model.h"

namespace bt {

namespace {

constexpr double GiB = double(1 << 30);

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

// One model on its own backend.
struct Bench {
  Config cfg;
  std::unique_ptr<Backend> be;
  std::unique_ptr<Model> model;
  std::unique_ptr<Generator> gen;
};

std::unique_ptr<Bench> make_bench(const Config& cfg, const std::string& device) {
  auto b = std::make_unique<Bench>();
  b->cfg = cfg;
  BackendOptions bo;
  bo.device = device;
  bo.precision = cfg.train.precision;
  if (device == "cpu" || (device == "auto" && !cuda_available())) bo.precision = "fp32";
  b->be = make_backend(bo);
  // random tokens and weights: the special tokens the config leaves at -1 are the last id
  b->model = std::make_unique<Model>(with_token_ids(cfg.model, cfg.model.vocab_size - 1), *b->be, 0);
  b->model->init(cfg.train.seed);
  b->gen = std::make_unique<Generator>(*b->model);
  return b;
}

struct Row {
  std::string setting, model, batch_spec;
  int batch = 0, prompt = 0, gen = 0;
  double prefill_s = 0, decode_s = 0, tokens_per_s = 0;
  size_t kv_per_seq = 0;
  double d2h_per_token = 0, syncs_per_step = 0;
  bool has_split = false;
  DecodePhases split;  // seconds per decode step
};

std::string bytes_str(double b) {
  if (b >= 1 << 30) return fmt::format("{:.2f} GiB", b / (1 << 30));
  if (b >= 1 << 20) return fmt::format("{:.2f} MiB", b / (1 << 20));
  return fmt::format("{:.1f} KiB", b / 1024);
}

// Host memory the kernel can give without swapping (MemAvailable), 0 if unknown.
size_t host_available() {
  std::ifstream f("/proc/meminfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("MemAvailable:", 0) == 0) {
      std::istringstream is(line.substr(13));
      size_t kb = 0;
      is >> kb;
      return kb * 1024;
    }
  return 0;
}

// The bytes a generator may still allocate on this model's backend: --memory (minus what the
// backend already holds), else the device's free memory (CUDA: free + the arena's unused tail;
// CPU: MemAvailable).
size_t plan_budget(Bench& b, double memory_gib) {
  const CudaMemoryStats cs = cuda_memory_stats(*b.be);
  const bool cuda = b.be->device() == Device::cuda;
  const size_t held = cuda ? cs.arena_used : b.be->bytes_allocated();
  if (memory_gib > 0) {
    const size_t want = size_t(memory_gib * GiB);
    return want > held ? want - held : 0;
  }
  if (cuda) return (cs.device_total - cs.device_used) + (cs.arena_reserved - cs.arena_used);
  return host_available();
}

std::vector<std::vector<int32_t>> random_prompts(int B, int n, int V) {
  Rng rng(1234, static_cast<uint64_t>(B));
  std::vector<std::vector<int32_t>> prompts(B, std::vector<int32_t>(n));
  for (auto& p : prompts)
    for (auto& x : p) x = static_cast<int32_t>(rng.below(V));
  return prompts;
}

// Warm-up, the best of `repeats`, and (split) one profiled run.
Row measure(Bench& b, const Setting& s, int B, const BenchInferOptions& o) {
  const auto prompts = random_prompts(B, s.prompt, b.cfg.model.vocab_size);
  GenerateOptions go;
  go.max_new_tokens = s.gen;
  go.sampling.greedy = true;
  go.eos_id = -1;
  go.pad_id = 0;
  {  // allocations, caches, thread pools, and the first (plain) call of every decode step; with
     // CUDA graphs the warm-up has the timed runs' length, so that they replay its graphs (a
     // graph is keyed by the cache length too)
    b.gen->reserve(B, s.prompt, s.gen);
    GenerateOptions w = go;
    if (!cuda_graph_stats(*b.be).enabled) w.max_new_tokens = std::min(s.gen, 3 * b.cfg.model.block_length);
    b.gen->generate(prompts, w);
  }
  Row best;
  for (int r = 0; r < std::max(1, o.repeats); ++r) {
    const GenerateResult res = b.gen->generate(prompts, go);
    const double total = res.prefill_seconds + res.decode_seconds;
    const double tps = double(B) * s.gen / total;
    if (r == 0 || tps > best.tokens_per_s) {
      best.setting = s.name;
      best.model = b.cfg.name;
      best.batch = B;
      best.prompt = s.prompt;
      best.gen = s.gen;
      best.prefill_s = res.prefill_seconds;
      best.decode_s = res.decode_seconds;
      best.tokens_per_s = tps;
      best.kv_per_seq = kv_bytes_per_sequence(b.cfg.model, dtype_size(b.be->act_dtype()), s.prompt, s.gen);
      // The decode loop reads back all `steps` tokens of each sequence (the first one too).
      const double steps = double(std::max<int64_t>(1, res.steps));
      best.d2h_per_token = double(res.decode_transfers.d2h_bytes) / (steps * B);
      best.syncs_per_step = double(res.decode_transfers.syncs) / steps;
    }
  }
  if (o.split) {
    GenerateOptions p = go;
    p.profile = true;
    const GenerateResult res = b.gen->generate(prompts, p);
    // The phases are timed in the decode loop: every step but the first token's.
    const double steps = double(std::max<int64_t>(1, res.steps - 1));
    best.has_split = true;
    best.split.block_decoder = res.phases.block_decoder / steps;
    best.split.token_decoder = res.phases.token_decoder / steps;
    best.split.head = res.phases.head / steps;
    best.split.sampling = res.phases.sampling / steps;
    best.split.host = res.phases.host / steps;
  }
  return best;
}

void print_row(const Row& r) {
  fmt::print("{:<14} {:<20} {:>6} {:>6} {:>5} {:>10.3f} {:>10.3f} {:>11.1f} {:>13} {:>9.2f} {:>10.3f}\n", r.setting,
             r.model, r.batch_spec, r.prompt, r.gen, r.prefill_s, r.decode_s, r.tokens_per_s,
             bytes_str(double(r.kv_per_seq)), r.d2h_per_token, r.syncs_per_step);
  if (r.has_split)
    fmt::print("{:<14}   per decode step: block decoder {:.3f} ms, token decoder {:.3f} ms, head {:.3f} ms, sampling "
               "{:.3f} ms, host {:.3f} ms\n",
               "", 1e3 * r.split.block_decoder, 1e3 * r.split.token_decoder, 1e3 * r.split.head,
               1e3 * r.split.sampling, 1e3 * r.split.host);
  std::fflush(stdout);
}

// Batch auto for one model and setting: the plan's largest batch on a fresh backend, confirmed
// by allocating it there (stepping down while the allocation fails). Returns the bench on which
// that batch is allocated, and the batch.
std::pair<std::unique_ptr<Bench>, int> auto_batch(const Config& cfg, const Setting& s, const BenchInferOptions& o) {
  auto b = make_bench(cfg, o.device);
  const bool cuda = b->be->device() == Device::cuda;
  const size_t align = cuda ? 256 : 64;
  const DType act = b->be->act_dtype(), stats = b->be->grad_dtype();
  size_t budget = plan_budget(*b, o.memory_gib);
  // Headroom for what the plan does not hold (rotary tables, graphs, the libraries' own memory):
  // 1/20 of the budget, at most 256 MiB.
  budget -= std::min(size_t(256) << 20, budget / 20);
  int64_t B = largest_batch(cfg.model, act, stats, budget, s.prompt, s.gen, o.max_batch, 0, align);
  const DecodePlan plan = plan_decode(cfg.model, act, stats, std::max<int64_t>(B, 1), s.prompt, s.gen, 0, align);
  fmt::print("batch auto [{} {}]: {} available for decoding -> planned batch {} (KV caches {}, buffers {}, "
             "stack scratch {})\n",
             cfg.name, s.name, bytes_str(double(budget)), B, bytes_str(double(plan.kv_cache)),
             bytes_str(double(plan.buffers)), bytes_str(double(plan.stacks)));
  BT_CHECK(B >= 1, "batch auto: not even one sequence of ", s.prompt, " + ", s.gen, " tokens fits ",
           bytes_str(double(budget)), " next to the weights of ", cfg.name, " (free memory, or --memory)");
  for (int attempt = 0;; ++attempt) {
    try {
      b->gen->reserve(B, s.prompt, s.gen);
      break;
    } catch (const Error& e) {
      BT_CHECK(attempt < 8 && B > 1, "batch auto: allocating the planned batch failed: ", e.what());
      log_warn("batch auto: batch {} did not fit when allocated ({}); trying {}", B, e.what(),
               std::max<int64_t>(1, B * 97 / 100));
      B = std::max<int64_t>(1, B * 97 / 100);
      b = make_bench(cfg, o.device);  // the arena keeps what it allocated: start afresh
    }
  }
  fmt::print("batch auto [{} {}]: batch {} allocated\n", cfg.name, s.name, B);
  return {std::move(b), static_cast<int>(B)};
}

}  // namespace

void bench_infer(const BenchInferOptions& o) {
  std::vector<Config> cfgs;
  for (const std::string& path : {o.config, o.vs})
    if (!path.empty()) cfgs.push_back(load_config(path, o.overrides));
  BT_CHECK(!cfgs.empty(), "bench infer: give --config");
  std::vector<std::string> specs;
  for (const std::string& b : o.batches) {
    if (b == "auto") {
      specs.push_back(b);
      continue;
    }
    int v = 0;
    try {
      size_t used = 0;
      v = std::stoi(b, &used);
      BT_CHECK(used == b.size(), "");
    } catch (const std::exception&) {
      BT_FAIL("--batch '", b, "': expected batch sizes or auto, e.g. --batch 1,16,auto");
    }
    BT_CHECK(v >= 1, "--batch values must be >= 1 (or auto), not ", v);
    specs.push_back(b);
  }
  BT_CHECK(o.max_batch >= 1, "--max-batch must be >= 1");
  BT_CHECK(o.memory_gib >= 0, "--memory must be >= 0 GiB");
  const int L = cfgs[0].model.context_length;
  std::vector<Setting> settings;
  if (o.settings == "both" || o.settings == "prefill")
    settings.push_back(parse_setting("prefill-heavy", o.prefill_heavy, L, std::max(1, L / 16)));
  if (o.settings == "both" || o.settings == "decode")
    settings.push_back(parse_setting("decode-heavy", o.decode_heavy, std::max(1, L / 16), L));
  BT_CHECK(!settings.empty(), "--settings must be both, prefill or decode");
  // A prompt longer than the context was never trained on, and such a run takes minutes before its
  // first line: refuse it up front. PROMPT + GEN may exceed the context (the paper's settings, the
  // defaults, run L/16 positions past it), each alone may not.
  for (const Setting& s : settings)
    for (const Config& c : cfgs) {
      const int ctx = c.model.context_length;
      BT_CHECK(s.prompt <= ctx, "--", s.name, " ", s.prompt, ":", s.gen, ": the prompt of ", s.prompt,
               " tokens exceeds model.context_length ", ctx, " of ", c.name, "; give a PROMPT of at most ", ctx);
      BT_CHECK(s.gen <= ctx, "--", s.name, " ", s.prompt, ":", s.gen, ": ", s.gen,
               " generated tokens exceed model.context_length ", ctx, " of ", c.name, "; give a GEN of at most ", ctx);
    }

  std::string backend_name, dtype;
  {
    auto probe = make_bench(cfgs[0], o.device);
    Backend& be = *probe->be;
    backend_name = be.name();
    dtype = dtype_name(be.act_dtype());
    const CudaGraphStats gs = cuda_graph_stats(be);
    fmt::print("bench infer: backend {} [{}]{}, random weights, random prompts, greedy, no EOS\n", be.name(),
               dtype_name(be.act_dtype()),
               be.device() == Device::cuda ? (gs.enabled ? ", CUDA graphs" : ", plain launches (BT_CUDA_GRAPHS=0)")
                                           : "");
  }
  fmt::print("tokens/s = batch x generated tokens / wall time of the whole generate call (prefill included); "
             "D2H B/tok = device-to-host bytes per generated token of the decode loop, syncs/step = host waits per "
             "decode step\n");
  for (const Config& c : cfgs) {
    const ParamTable t(c.model);
    fmt::print("  {:<20} {:<8} non-embedding {:.2f}M, total {:.2f}M parameters\n", c.name, c.model.kind,
               t.non_embedding() / 1e6, t.total_params() / 1e6);
  }
  fmt::print("{:<14} {:<20} {:>6} {:>6} {:>5} {:>10} {:>10} {:>11} {:>13} {:>9} {:>10}\n", "setting", "model", "batch",
             "prompt", "gen", "prefill s", "decode s", "tokens/s", "KV cache/seq", "D2H B/tok", "syncs/step");
  // Every point on a fresh backend: nothing another point allocated takes memory from it (the
  // CUDA arena never frees), and batch auto sees the whole free memory.
  std::vector<Row> rows;
  for (const Setting& s : settings) {
    for (const std::string& spec : specs) {
      for (size_t i = 0; i < cfgs.size(); ++i) {
        Row r;
        if (spec == "auto") {
          auto [b, B] = auto_batch(cfgs[i], s, o);
          r = measure(*b, s, B, o);
          r.batch_spec = fmt::format("{}*", B);
        } else {
          r = measure(*make_bench(cfgs[i], o.device), s, std::stoi(spec), o);
          r.batch_spec = spec;
        }
        print_row(r);
        rows.push_back(r);
      }
    }
  }
  if (cfgs.size() == 2) {
    fmt::print("throughput ratio {} / {}:\n", cfgs[0].name, cfgs[1].name);
    for (const Setting& s : settings) {
      std::string line;
      for (const std::string& spec : specs) {
        const Row *a = nullptr, *c = nullptr;
        for (const Row& r : rows)
          if (r.setting == s.name && (r.batch_spec == spec || (spec == "auto" && r.batch_spec.back() == '*')))
            (r.model == cfgs[0].name && !a ? a : c) = &r;
        if (a && c) line += fmt::format("  batch {}: x{:.2f}", spec, a->tokens_per_s / c->tokens_per_s);
      }
      fmt::print("  {:<14}{}\n", s.name, line);
    }
  }
  if (std::find(specs.begin(), specs.end(), "auto") != specs.end()) fmt::print("* batch auto\n");
  if (!o.json.empty()) {
    nlohmann::json rows_j = nlohmann::json::array();
    for (const Row& r : rows)
      rows_j.push_back({{"setting", r.setting},
                        {"model", r.model},
                        {"batch", r.batch},
                        {"batch_auto", r.batch_spec.back() == '*'},
                        {"prompt", r.prompt},
                        {"gen", r.gen},
                        {"prefill_s", r.prefill_s},
                        {"decode_s", r.decode_s},
                        {"tokens_per_s", r.tokens_per_s},
                        {"kv_cache_bytes_per_sequence", r.kv_per_seq}});
    write_file_atomic(o.json, nlohmann::json{{"backend", backend_name},
                                             {"dtype", dtype},
                                             {"repeats", o.repeats},
                                             {"rows", rows_j}}
                                      .dump(2) +
                                  "\n");
  }
  if (o.markdown) {
    fmt::print("\n| setting | model | batch | prompt | gen | prefill s | decode s | tokens/s | KV cache / seq | D2H B / token "
               "| syncs / step | ms / step: block dec, token dec, head, sampling, host |\n");
    fmt::print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for (const Row& r : rows)
      fmt::print("| {} | {} | {} | {} | {} | {:.3f} | {:.3f} | {:.1f} | {} | {:.2f} | {:.3f} | {} |\n", r.setting,
                 r.model, r.batch_spec, r.prompt, r.gen, r.prefill_s, r.decode_s, r.tokens_per_s,
                 bytes_str(double(r.kv_per_seq)), r.d2h_per_token, r.syncs_per_step,
                 r.has_split ? fmt::format("{:.3f}, {:.3f}, {:.3f}, {:.3f}, {:.3f}", 1e3 * r.split.block_decoder,
                                           1e3 * r.split.token_decoder, 1e3 * r.split.head, 1e3 * r.split.sampling,
                                           1e3 * r.split.host)
                             : std::string("-"));
  }
}

}  // namespace bt

// The results of a sweep: one row per point directory, from the files each run leaves (config.yaml,
// metrics.jsonl, checkpoints, bench.json, tasks.json). See sweep.h.
#include <fmt/core.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/error.h"
#include "data/shard.h"
#include "model/checkpoint.h"
#include "model/params.h"
#include "train/sweep.h"

namespace bt {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json read_json(const fs::path& p) {
  std::ifstream in(p);
  if (!in) return json();
  try {
    return json::parse(in);
  } catch (const json::exception&) {
    return json();
  }
}

// One point directory as the table sees it.
struct PointFiles {
  std::string name, config;
  std::vector<std::pair<std::string, std::string>> settings;
  std::string dir;
  Config cfg;
  bool have_cfg = false;
};

PointFiles from_point(const SweepPoint& p) {
  return {p.name, p.config, p.settings, p.dir, p.resolved, true};
}

// A point directory of an earlier sweep into the same OUT: point.json and config.yaml.
bool from_dir(const fs::path& dir, PointFiles* f) {
  const json pj = read_json(dir / "point.json");
  if (!pj.is_object() || !pj.contains("name")) return false;
  f->name = pj["name"].get<std::string>();
  f->config = pj.value("config", "");
  for (const auto& kv : pj.value("settings", json::array())) f->settings.emplace_back(kv[0], kv[1]);
  f->dir = dir.string();
  try {
    f->cfg = load_config((dir / "config.yaml").string());
    f->have_cfg = true;
  } catch (const Error&) {
    f->have_cfg = false;
  }
  return true;
}

std::string num(double v, int digits) { return fmt::format("{:.{}f}", v, digits); }

}  // namespace

SweepTable gather_results(const std::string& out, const std::vector<SweepPoint>& points) {
  std::vector<PointFiles> files;
  for (const SweepPoint& p : points) files.push_back(from_point(p));
  std::vector<fs::path> others;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(out, ec))
    if (e.is_directory(ec)) others.push_back(e.path());
  std::sort(others.begin(), others.end());
  for (const fs::path& d : others) {
    PointFiles f;
    if (!from_dir(d, &f)) continue;
    if (std::none_of(files.begin(), files.end(), [&](const PointFiles& x) { return x.name == f.name; }))
      files.push_back(f);
  }

  // The columns: fixed ones, the settings' keys, then whatever the points have.
  std::vector<std::string> keys;
  size_t positions = 0;
  std::vector<std::string> task_cols;
  bool bench = false;
  struct Values {
    std::map<std::string, std::string> v;
  };
  std::vector<Values> vals(files.size());
  for (size_t i = 0; i < files.size(); ++i) {
    const PointFiles& f = files[i];
    std::map<std::string, std::string>& v = vals[i].v;
    v["point"] = f.name;
    v["config"] = f.config;
    for (const auto& [k, x] : f.settings) {
      if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
      v["=" + k] = x;
    }
    if (f.have_cfg) {
      const ModelConfig& m = f.cfg.model;
      const ParamTable t(m);
      v["kind"] = m.kind;
      v["block_length"] = m.is_block() ? std::to_string(m.block_length) : "";
      v["params"] = std::to_string(t.total_params());
      v["non_embedding_params"] = std::to_string(t.non_embedding());
      v["end_step"] = std::to_string(f.cfg.train.end_step());
    }
    const auto cks = list_checkpoints((fs::path(f.dir) / "checkpoints").string());
    v["step"] = cks.empty() ? "0" : std::to_string(cks.back().first);
    if (!cks.empty()) v["tokens"] = std::to_string(load_trainer_state(cks.back().second).value("tokens_seen", int64_t(0)));
    // metrics.jsonl: the last validation, the training rate (median of the logged windows; the
    // first step's window, which holds the warm-up, only when it is the only one).
    std::ifstream in(fs::path(f.dir) / "metrics.jsonl");
    std::vector<double> rates;
    double first_rate = -1;
    for (std::string line; std::getline(in, line);) {
      json j;
      try {
        j = json::parse(line);
      } catch (const json::exception&) {
        continue;  // a line cut by a crash
      }
      if (j.contains("val_loss")) {
        v["val_loss"] = num(j["val_loss"].get<double>(), 6);
        const auto& bp = j.value("val_loss_by_position", json::array());
        for (size_t k = 0; k < bp.size() && bp.size() > 1; ++k) v[fmt::format("val_loss_pos{}", k + 1)] = num(bp[k], 6);
        if (bp.size() > 1) positions = std::max(positions, bp.size());
      }
      if (j.contains("tokens_per_s")) {
        if (j.value("step", int64_t(0)) == 1)
          first_rate = j["tokens_per_s"].get<double>();
        else
          rates.push_back(j["tokens_per_s"].get<double>());
      }
    }
    if (rates.empty() && first_rate > 0) rates.push_back(first_rate);
    if (!rates.empty()) {
      std::sort(rates.begin(), rates.end());
      const size_t n = rates.size();
      v["train_tokens_per_s"] = num(n % 2 ? rates[n / 2] : 0.5 * (rates[n / 2 - 1] + rates[n / 2]), 1);
    }
    const json b = read_json(fs::path(f.dir) / "bench.json");
    if (b.is_object())
      for (const auto& r : b.value("rows", json::array())) {
        bench = true;
        v[r["setting"].get<std::string>() + "_tokens_per_s"] = num(r["tokens_per_s"].get<double>(), 1);
        v["bench_batch"] = std::to_string(r["batch"].get<int>());
      }
    const json t = read_json(fs::path(f.dir) / "tasks.json");
    const json results = t.is_object() ? t.value("results", json::object()) : json::object();
    for (const auto& [task, metrics] : results.items())
      for (const auto& [k, x] : metrics.items()) {
        if (!x.is_number() || k.find("_stderr") != std::string::npos) continue;
        const std::string col = task + "/" + k.substr(0, k.find(','));
        if (std::find(task_cols.begin(), task_cols.end(), col) == task_cols.end()) task_cols.push_back(col);
        v[col] = num(x.get<double>(), 6);
      }
  }
  SweepTable t;
  t.columns = {"point", "config"};
  for (const auto& k : keys) t.columns.push_back(k);
  for (const char* c : {"kind", "block_length", "params", "non_embedding_params", "step", "end_step", "tokens",
                        "val_loss"})
    t.columns.push_back(c);
  for (size_t k = 0; k < positions; ++k) t.columns.push_back(fmt::format("val_loss_pos{}", k + 1));
  t.columns.push_back("train_tokens_per_s");
  if (bench)
    for (const char* c : {"prefill-heavy_tokens_per_s", "decode-heavy_tokens_per_s", "bench_batch"})
      t.columns.push_back(c);
  for (const auto& c : task_cols) t.columns.push_back(c);
  for (const Values& x : vals) {
    std::vector<std::string> row;
    for (const std::string& c : t.columns) {
      const bool setting = std::find(keys.begin(), keys.end(), c) != keys.end();
      const auto it = x.v.find(setting ? "=" + c : c);
      row.push_back(it == x.v.end() ? "" : it->second);
    }
    t.rows.push_back(std::move(row));
  }
  return t;
}

void write_results(const std::string& out, const SweepTable& t) {
  // CSV: a field with a comma, quote or line break is quoted (RFC 4180).
  auto field = [](const std::string& s) {
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string q = "\"";
    for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
  };
  std::string csv;
  for (size_t i = 0; i < t.columns.size(); ++i) csv += (i ? "," : "") + field(t.columns[i]);
  csv += "\n";
  for (const auto& r : t.rows) {
    for (size_t i = 0; i < r.size(); ++i) csv += (i ? "," : "") + field(r[i]);
    csv += "\n";
  }
  // Markdown: the same table, numbers right-aligned, `|` escaped.
  auto cell = [](const std::string& s) {
    std::string e;
    for (char c : s) e += c == '|' ? std::string("\\|") : std::string(1, c);
    return e;
  };
  std::string md = fmt::format("# Sweep results: {}\n\n{} points; written by `bt sweep` (docs/ablations.md). "
                               "val_loss: the last validation of each run (nats per token); train_tokens_per_s: the "
                               "median of its logged training rates; *_tokens_per_s of the two inference settings: "
                               "`bt bench infer`, random weights.\n\n|",
                               out, t.rows.size());
  for (const auto& c : t.columns) md += " " + cell(c) + " |";
  md += "\n|";
  for (size_t i = 0; i < t.columns.size(); ++i) md += i < 2 ? "---|" : "---:|";
  md += "\n";
  for (const auto& r : t.rows) {
    md += "|";
    for (const auto& c : r) md += " " + cell(c) + " |";
    md += "\n";
  }
  write_file_atomic((fs::path(out) / "results.csv").string(), csv);
  write_file_atomic((fs::path(out) / "results.md").string(), md);
}

}  // namespace bt

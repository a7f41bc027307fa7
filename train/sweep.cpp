// The points of a sweep: grid parsing, names, status, point.json. See sweep.h.
#include "train/sweep.h"

#include <fmt/core.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"
#include "core/log.h"
#include "data/shard.h"
#include "model/checkpoint.h"

namespace bt {

namespace fs = std::filesystem;

std::vector<std::string> split_top_level(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  int depth = 0;
  char quote = 0;
  for (char c : s) {
    if (quote) {
      if (c == quote) quote = 0;
    } else if (c == '"' || c == '\'') {
      quote = c;
    } else if (c == '[' || c == '{') {
      ++depth;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    } else if (c == sep && depth == 0) {
      out.push_back(cur);
      cur.clear();
      continue;
    }
    cur += c;
  }
  out.push_back(cur);
  return out;
}

namespace {
std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}
}  // namespace

SweepAxis parse_axis(const std::string& spec) {
  const size_t eq = spec.find('=');
  BT_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < spec.size(), "--grid '", spec,
           "': expected KEY=V1,V2,... (e.g. model.block_length=2,4,8) or linked keys K1,K2=[A1,B1],[A2,B2]");
  SweepAxis a;
  for (const std::string& k : split_top_level(spec.substr(0, eq), ',')) {
    BT_CHECK(!trim(k).empty() && trim(k).find_first_of(" []{}") == std::string::npos, "--grid '", spec, "': '", k,
             "' is not a config key");
    a.keys.push_back(trim(k));
  }
  for (const std::string& v : split_top_level(spec.substr(eq + 1), ',')) {
    const std::string value = trim(v);
    BT_CHECK(!value.empty(), "--grid '", spec, "': an empty value (two commas in a row?)");
    if (a.keys.size() == 1) {
      a.values.push_back({value});
      continue;
    }
    // Linked keys: [A, B, ...], one entry per key.
    BT_CHECK(value.front() == '[' && value.back() == ']', "--grid '", spec, "': the keys ", spec.substr(0, eq),
             " are linked, so each value must list one entry per key, e.g. [", a.keys.size() == 2 ? "1,256" : "1,2,3",
             "]; got '", value, "'");
    std::vector<std::string> items;
    for (const std::string& it : split_top_level(value.substr(1, value.size() - 2), ',')) items.push_back(trim(it));
    BT_CHECK(items.size() == a.keys.size(), "--grid '", spec, "': the value ", value, " has ", items.size(),
             " entries for ", a.keys.size(), " linked keys");
    a.values.push_back(items);
  }
  std::set<std::string> seen;
  for (const auto& v : a.values) {
    std::string k;
    for (const auto& x : v) k += x + "\x1f";
    BT_CHECK(seen.insert(k).second, "--grid '", spec, "': a value appears twice");
  }
  return a;
}

std::string point_name(const std::string& config_name,
                       const std::vector<std::pair<std::string, std::string>>& settings) {
  std::string name = config_name;
  for (const auto& [key, value] : settings) {
    const std::string last = key.substr(key.rfind('.') == std::string::npos ? 0 : key.rfind('.') + 1);
    std::string v;
    for (char c : value) v += (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '+' || c == '-') ? c : '_';
    name += "-" + last + "=" + v;
  }
  return name;
}

std::vector<SweepPoint> expand_points(const SweepSpec& spec) {
  BT_CHECK(!spec.config.empty(), "bt sweep needs --config BASE (the config every point starts from)");
  BT_CHECK(!spec.out.empty(), "bt sweep needs --out DIR (one run directory per point goes there)");
  std::vector<std::pair<std::string, std::vector<std::pair<std::string, std::string>>>> raw;  // config, settings
  // The grid product, the last axis changing fastest; a sweep without axes is one point.
  std::vector<size_t> idx(spec.grid.size(), 0);
  if (spec.grid.empty() && !spec.points.empty()) {
    // only --point extras
  } else {
    for (bool more = true; more;) {
      std::vector<std::pair<std::string, std::string>> s;
      for (size_t a = 0; a < spec.grid.size(); ++a)
        for (size_t k = 0; k < spec.grid[a].keys.size(); ++k)
          s.emplace_back(spec.grid[a].keys[k], spec.grid[a].values[idx[a]][k]);
      raw.emplace_back(spec.config, s);
      more = false;
      for (size_t a = spec.grid.size(); a-- > 0;) {
        if (++idx[a] < spec.grid[a].values.size()) {
          more = true;
          break;
        }
        idx[a] = 0;
      }
    }
  }
  for (const std::string& p : spec.points) {
    std::string config = spec.config;
    std::vector<std::pair<std::string, std::string>> s;
    for (const std::string& item : split_top_level(p, ',')) {
      const std::string kv = trim(item);
      const size_t eq = kv.find('=');
      BT_CHECK(eq != std::string::npos && eq > 0, "--point '", p,
               "': expected KEY=VALUE,KEY=VALUE (config=FILE picks another base config)");
      if (kv.substr(0, eq) == "config")
        config = kv.substr(eq + 1);
      else
        s.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
    }
    raw.emplace_back(config, s);
  }
  std::vector<SweepPoint> points;
  std::set<std::string> names;
  for (auto& [config, settings] : raw) {
    SweepPoint pt;
    pt.config = config;
    pt.settings = settings;
    pt.overrides = spec.overrides;
    for (const auto& [k, v] : settings) pt.overrides.push_back(k + "=" + v);
    const Config base = load_config(config, pt.overrides);  // names the bad file or override
    pt.name = point_name(base.name, settings);
    pt.dir = (fs::path(spec.out) / pt.name).string();
    BT_CHECK(names.insert(pt.name).second, "bt sweep: two points are named ", pt.name,
             ": give them different settings (or base configs of different names)");
    pt.overrides.push_back("name=" + pt.name);
    pt.overrides.push_back("train.out_dir=" + pt.dir);
    pt.resolved = load_config(config, pt.overrides);
    points.push_back(std::move(pt));
  }
  return points;
}

PointStatus point_status(const SweepPoint& p) {
  PointStatus s;
  s.end = p.resolved.train.end_step();
  const auto cks = list_checkpoints((fs::path(p.dir) / "checkpoints").string());
  if (!cks.empty()) s.step = cks.back().first;
  return s;
}

nlohmann::json point_json(const SweepPoint& p) {
  nlohmann::json settings = nlohmann::json::array();
  for (const auto& [k, v] : p.settings) settings.push_back({k, v});
  return {{"name", p.name}, {"config", p.config}, {"overrides", p.overrides}, {"settings", settings}};
}

void claim_point_dir(const SweepPoint& p) {
  const fs::path file = fs::path(p.dir) / "point.json";
  const nlohmann::json want = point_json(p);
  std::error_code ec;
  if (fs::exists(file, ec)) {
    std::ifstream in(file);
    nlohmann::json have;
    try {
      have = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception&) {
      BT_FAIL(file.string(), " is not valid JSON: delete it (the run beside it is kept) to claim the directory again");
    }
    // The point is its settings; the common overrides may change between runs of a sweep (a later
    // train.stop_step continues every point, and bt train warns about what else changed).
    BT_CHECK(have.value("settings", nlohmann::json()) == want["settings"], p.dir,
             " holds another point (its point.json has other settings): use another --out, or delete that "
             "directory");
    if (have.value("overrides", nlohmann::json()) != want["overrides"]) {
      log_warn("{}: the overrides changed since this point was made; it continues with the new ones", p.name);
      write_file_atomic(file.string(), want.dump(2) + "\n");
    }
    return;
  }
  BT_CHECK(!fs::exists(fs::path(p.dir) / "checkpoints", ec), p.dir,
           " holds a run that no sweep claimed (checkpoints/ but no point.json): use another --out, or delete it");
  fs::create_directories(p.dir);
  write_file_atomic(file.string(), want.dump(2) + "\n");
}

}  // namespace bt

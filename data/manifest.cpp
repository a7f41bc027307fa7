// Checking opened shards against manifest.json: see manifest.h.
#include "data/manifest.h"

#include <fnmatch.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

#include "core/checksum.h"
#include "core/error.h"
#include "core/log.h"
#include "core/timer.h"
#include "data/token_stream.h"
#include "data/tokenizer.h"

namespace bt {
namespace fs = std::filesystem;

namespace {

std::string dir_of(const std::string& path) {
  const fs::path d = fs::path(path).parent_path();
  return d.empty() ? "." : d.lexically_normal().string();
}

std::string norm(const std::string& p) { return fs::path(p).lexically_normal().string(); }

// Shards of an unfinished `bt prepare`: its marker, or a shard being written.
bool prepare_unfinished(const std::string& dir) {
  std::error_code ec;
  if (fs::exists(fs::path(dir) / kPrepareMarker, ec)) return true;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n.size() > 7 && n.compare(n.size() - 7, 7, ".h5.tmp") == 0) return true;
  }
  return false;
}

nlohmann::json read_manifest(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  BT_CHECK(in, path, ": cannot read");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    BT_FAIL(path, ": not valid JSON (", e.what(), "); prepare the corpus again");
  }
  BT_CHECK(j.is_object() && j.value("format", std::string()) == "bt-tokens-manifest" && j.contains("shards") &&
               j["shards"].is_array(),
           path, ": not a bt-tokens manifest (no format 'bt-tokens-manifest' or no 'shards' list)");
  return j;
}

void warn_once(const std::string& dir) {
  static std::mutex mu;
  static std::set<std::string> warned;
  std::lock_guard<std::mutex> lock(mu);
  if (warned.insert(dir).second)
    log_warn("shards in '{}' have no {}: their sizes and checksums are not checked (`bt prepare` writes one)",
             dir, kManifestFile);
}

}  // namespace

void write_manifest(const std::string& dir, const ManifestHeader& h, const nlohmann::ordered_json& details,
                    const std::vector<nlohmann::ordered_json>& shards) {
  BT_CHECK(details.is_object(), "write_manifest: details must be an object");
  nlohmann::ordered_json m = {{"format", "bt-tokens-manifest"},
                              {"version", 1},
                              {"tokenizer", h.tokenizer},
                              {"tokenizer_kind", h.tokenizer_kind},
                              {"tokenizer_file", kTokenizerJsonFile},
                              {"vocab_size", h.vocab_size},
                              {"eos_id", h.eos_id},
                              {"token_dtype", h.vocab_size > 65536 ? "uint32" : "uint16"},
                              {"inputs", h.inputs},
                              {"input_format", h.input_format}};
  for (const auto& [k, v] : details.items()) m[k] = v;
  m["val_fraction"] = h.val_fraction;
  m["seed"] = h.seed;
  m["shard_tokens"] = h.shard_tokens;
  nlohmann::ordered_json splits;
  for (const char* split : {"train", "val"}) {
    uint64_t tokens = 0, documents = 0, n = 0;
    for (const auto& s : shards)
      if (s["split"] == split) {
        tokens += s["tokens"].get<uint64_t>();
        documents += s["documents"].get<uint64_t>();
        ++n;
      }
    splits[split] = {{"tokens", tokens}, {"documents", documents}, {"shards", n}};
  }
  m["splits"] = splits;
  m["shards"] = shards;
  write_file_atomic((fs::path(dir) / kManifestFile).string(), m.dump(2) + "\n");
  std::error_code ec;
  fs::remove(fs::path(dir) / kPrepareMarker, ec);
}

void check_shards_against_manifests(const std::string& glob_or_list, const std::vector<std::string>& paths,
                                    const std::vector<ShardInfo>& infos, const ShardCheckOptions& opt) {
  BT_CHECK(paths.size() == infos.size(), "check_shards_against_manifests: paths and infos differ in length");
  // The directories in order of first appearance.
  std::vector<std::string> dirs;
  std::map<std::string, nlohmann::json> manifests;  // dir -> manifest (null: none)
  for (const auto& p : paths)
    if (!manifests.count(dir_of(p))) {
      dirs.push_back(dir_of(p));
      manifests[dirs.back()] = nullptr;
    }
  std::set<std::string> opened;
  for (const auto& p : paths) opened.insert(norm(p));

  std::map<std::string, std::map<std::string, const nlohmann::json*>> entries;  // dir -> file -> entry
  for (const std::string& dir : dirs) {
    const std::string mpath = (fs::path(dir) / kManifestFile).string();
    std::error_code ec;
    if (!fs::exists(mpath, ec)) {
      BT_CHECK(!prepare_unfinished(dir), "the shards in '", dir, "' come from a `bt prepare` that has not finished (no ",
               kManifestFile, "; it is still running or was interrupted): wait for it, or run it again");
      if (opt.rank == 0) warn_once(dir);
      continue;
    }
    nlohmann::json& m = manifests[dir];
    m = read_manifest(mpath);
    auto& map = entries[dir];
    for (const auto& e : m["shards"]) {
      BT_CHECK(e.is_object() && e.contains("file") && e["file"].is_string() && e.contains("bytes") &&
                   e["bytes"].is_number_unsigned(),
               mpath, ": a shard entry without 'file' and 'bytes'; prepare the corpus again");
      map[e["file"].get<std::string>()] = &e;
    }
    // Every listed shard that a pattern of the list would match must exist.
    for (const std::string& item : split_shard_list(glob_or_list)) {
      if (item.find_first_of("*?[") == std::string::npos || dir_of(item) != dir) continue;
      for (const auto& [file, e] : map) {
        const std::string full = norm((fs::path(dir) / file).string());
        if (::fnmatch(norm(item).c_str(), full.c_str(), FNM_PATHNAME) == 0 && !opened.count(full))
          BT_FAIL(mpath, " lists shard '", file, "' (matched by '", item, "') but it is missing (deleted, or not "
                  "copied over): restore it or prepare the corpus again");
      }
    }
  }

  Timer timer;
  uint64_t hashed_bytes = 0;
  for (size_t i = 0; i < paths.size(); ++i) {
    const std::string dir = dir_of(paths[i]);
    if (manifests[dir].is_null()) continue;
    const std::string mpath = (fs::path(dir) / kManifestFile).string();
    const std::string file = fs::path(paths[i]).filename().string();
    auto it = entries[dir].find(file);
    BT_CHECK(it != entries[dir].end(), "shard '", paths[i], "' is not listed in ", mpath,
             " (a file left from another `bt prepare` run, or added by hand): remove it or prepare the corpus again");
    const nlohmann::json& e = *it->second;
    const nlohmann::json& m = manifests[dir];
    struct stat st {};
    BT_CHECK(::stat(paths[i].c_str(), &st) == 0, "shard '", paths[i], "': cannot stat");
    const uint64_t want = e["bytes"].get<uint64_t>();
    BT_CHECK(uint64_t(st.st_size) == want, "shard '", paths[i], "' is ", st.st_size, " bytes but ", mpath,
             " records ", want, ": it was truncated, replaced, or is still being copied");
    const ShardInfo& in = infos[i];
    if (e.contains("tokens") && e["tokens"].is_number_unsigned())
      BT_CHECK(e["tokens"].get<uint64_t>() == in.tokens, "shard '", paths[i], "' holds ", in.tokens, " tokens but ",
               mpath, " records ", e["tokens"].get<uint64_t>(), ": it was replaced after `bt prepare`");
    if (e.contains("documents") && e["documents"].is_number_unsigned())
      BT_CHECK(e["documents"].get<uint64_t>() == in.documents, "shard '", paths[i], "' holds ", in.documents,
               " documents but ", mpath, " records ", e["documents"].get<uint64_t>(),
               ": it was replaced after `bt prepare`");
    if (m.contains("tokenizer") && m["tokenizer"].is_string())
      BT_CHECK(m["tokenizer"].get<std::string>() == in.tokenizer, "shard '", paths[i], "' was made with tokenizer ",
               in.tokenizer, " but ", mpath, " records ", m["tokenizer"].get<std::string>(),
               ": it comes from another corpus");
    if (opt.verify_checksums && opt.world > 0 && int(i % size_t(opt.world)) == opt.rank && e.contains("xxh3") &&
        e["xxh3"].is_string()) {
      uint64_t n = 0;
      const std::string have = xxh3_file(paths[i], &n);
      hashed_bytes += n;
      BT_CHECK(have == e["xxh3"].get<std::string>(), "shard '", paths[i], "' does not match its checksum in ", mpath,
               " (xxh3 ", have, ", recorded ", e["xxh3"].get<std::string>(),
               "): the file is corrupt (disk or copy error); restore it or prepare the corpus again");
    }
  }
  if (timer.seconds() > 2.0 && opt.rank == 0)
    log_info("data: verified the checksums of {:.2f} GB of shards in {:.1f} s (data.verify_checksums=false skips it)",
             double(hashed_bytes) / 1e9, timer.seconds());
}

}  // namespace bt

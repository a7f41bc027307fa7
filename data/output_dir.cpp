// The output directory of `bt prepare` (output_dir.h).
#include "data/output_dir.h"

#include <unistd.h>

#include <filesystem>
#include <regex>
#include <vector>

#include "core/error.h"
#include "data/manifest.h"
#include "data/shard.h"
#include "data/tokenizer.h"

namespace bt {
namespace fs = std::filesystem;

bool is_output_file(const std::string& name) {
  if (name == kPrepareMarker) return true;
  // Shards, the manifest and the tokenizer files, each perhaps half-written (.tmp).
  static const std::regex shard(R"((train|val)-[0-9]+\.h5)");
  const std::string base = name.ends_with(".tmp") ? name.substr(0, name.size() - 4) : name;
  if (base == kManifestFile || std::regex_match(base, shard)) return true;
  for (const char* f : kTokenizerFiles)
    if (base == f) return true;
  return false;
}

void open_output_dir(const std::string& dir, bool force, const std::function<bool(const std::string&)>& keep) {
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    BT_CHECK(fs::is_directory(dir, ec), "--out '", dir, "' exists and is not a directory");
  } else {
    fs::create_directories(dir, ec);
    BT_CHECK(!ec, "cannot create the output directory '", dir, "': ", ec.message());
  }
  std::vector<fs::path> found;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (is_output_file(name) && !(keep && keep(name))) found.push_back(e.path());
  }
  BT_CHECK(!ec, "cannot list the output directory '", dir, "': ", ec.message());
  const fs::path manifest = fs::path(dir) / kManifestFile;
  if (fs::exists(manifest)) {
    BT_CHECK(force, "output directory '", dir, "' already holds a prepared corpus (", kManifestFile,
             "); pass --force to replace it, or choose another --out");
    fs::remove(manifest, ec);  // first: the old corpus stops looking complete
    BT_CHECK(!ec, "cannot remove '", manifest.string(), "': ", ec.message());
  }
  for (const auto& p : found) {
    fs::remove(p, ec);
    BT_CHECK(!ec, "cannot remove the old file '", p.string(), "': ", ec.message());
  }
}

void mark_output_unfinished(const std::string& dir) {
  write_file_atomic((fs::path(dir) / kPrepareMarker).string(),
                    "bt prepare is writing this directory (pid " + std::to_string(::getpid()) + ")\n");
}

}  // namespace bt

// Checkpoint directories: atomic save, keep-last-K, `latest`, and loading. See checkpoint.h.
#include "model/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>

#include "core/checksum.h"
#include "core/error.h"
#include "core/log.h"

namespace bt {

namespace fs = std::filesystem;

namespace {

constexpr const char* kComplete = "COMPLETE";
constexpr const char* kChecksums = "checksums.json";

// step_<digits> -> step; -1 for anything else (tmp, del, latest, ...).
int64_t parse_step_name(const std::string& name) {
  if (name.rfind("step_", 0) != 0 || name.size() <= 5) return -1;
  int64_t s = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    s = s * 10 + (name[i] - '0');
  }
  return s;
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  BT_CHECK(f.good(), path, ": cannot read");
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

// Renames dir out of the way (so it no longer looks like a checkpoint), then deletes it.
void remove_dir_safely(const fs::path& dir) {
  const fs::path trash = dir.string() + ".del-" + std::to_string(::getpid());
  std::error_code ec;
  fs::rename(dir, trash, ec);
  fs::remove_all(ec ? dir : trash, ec);
}

bool pid_alive(long pid) { return pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM); }

// Writes text to path (fsynced) and returns its checksum.
std::string write_file_checked(const std::string& path, const std::string& text) {
  write_file_synced(path, text);
  return xxh3_hex(text);
}

// Earlier complete checkpoints next to `dir`, for the hint of an integrity error.
std::string earlier_checkpoint_hint(const fs::path& dir) {
  const int64_t step = parse_step_name(dir.filename().string());
  std::string best;
  for (const auto& [s, d] : list_checkpoints(dir.parent_path().string()))
    if (s < step || step < 0) best = d;
  return best.empty() ? "" : "; the newest earlier checkpoint is " + best;
}

// The files verified in this process (path, size, mtime): each is hashed once per process.
std::mutex& verified_mutex() {
  static std::mutex m;
  return m;
}
std::set<std::string>& verified_files() {
  static std::set<std::string> s;
  return s;
}
std::string verified_key(const fs::path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return "";
  std::error_code ec;
  return fs::weakly_canonical(p, ec).string() + "|" + std::to_string(st.st_size) + "|" +
         std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec);
}

// checksums.json of a checkpoint directory (null when absent).
nlohmann::json read_checksums(const fs::path& dir) {
  const fs::path p = dir / kChecksums;
  std::error_code ec;
  if (!fs::exists(p, ec)) return nullptr;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text(p.string()));
  } catch (const nlohmann::json::exception& e) {
    BT_FAIL(p.string(), ": not valid JSON (", e.what(), "): the checkpoint is damaged", earlier_checkpoint_hint(dir));
  }
  BT_CHECK(j.is_object() && j.contains("files") && j["files"].is_object(), p.string(),
           ": no 'files' object: the checkpoint is damaged", earlier_checkpoint_hint(dir));
  BT_CHECK(j.value("algorithm", std::string()) == kChecksumAlgorithm, p.string(), ": unknown checksum algorithm '",
           j.value("algorithm", std::string()), "' (this build writes and reads ", kChecksumAlgorithm, ")");
  return j;
}

// Checks one file of a checkpoint against its entry {"bytes", "xxh3"} of checksums.json.
void verify_entry(const fs::path& dir, const std::string& name, const nlohmann::json& e) {
  const fs::path p = dir / name;
  BT_CHECK(e.is_object() && e.contains("bytes") && e["bytes"].is_number_unsigned() && e.contains("xxh3") &&
               e["xxh3"].is_string(),
           (dir / kChecksums).string(), ": malformed entry for ", name, ": the checkpoint is damaged");
  const std::string key = verified_key(p);
  {
    std::lock_guard<std::mutex> lock(verified_mutex());
    if (!key.empty() && verified_files().count(key)) return;
  }
  std::error_code ec;
  BT_CHECK(fs::is_regular_file(p, ec), "checkpoint ", dir.string(), ": ", name,
           " is missing (it is listed in checksums.json): the checkpoint was damaged after it was written",
           earlier_checkpoint_hint(dir));
  const uint64_t want_bytes = e["bytes"].get<uint64_t>();
  const uint64_t have_bytes = fs::file_size(p, ec);
  BT_CHECK(have_bytes == want_bytes, "checkpoint ", dir.string(), ": ", name, " is ", have_bytes,
           " bytes but was written with ", want_bytes, ": it was truncated or replaced after the save",
           earlier_checkpoint_hint(dir));
  uint64_t read = 0;
  const std::string have = xxh3_file(p.string(), &read);
  const std::string want = e["xxh3"].get<std::string>();
  BT_CHECK(have == want && read == want_bytes, "checkpoint ", dir.string(), ": ", name,
           " does not match the checksum recorded when it was written (xxh3 ", have, ", recorded ", want,
           "): the file was corrupted after the save (disk, copy or transfer error)", earlier_checkpoint_hint(dir));
  std::lock_guard<std::mutex> lock(verified_mutex());
  if (!key.empty()) verified_files().insert(key);
}

// Fails naming the tensor when buf[0..n) holds a NaN or an infinity.
void check_finite(const float* buf, size_t n, const std::string& file, const std::string& tensor) {
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(buf[i])) {
      if (bad == 0) first = i;
      ++bad;
    }
  BT_CHECK(bad == 0, file, ": tensor '", tensor, "' holds ", bad, " non-finite values (the first, at index ", first,
           ", is ", buf[first], "): the checkpoint is corrupt or the run had diverged when it was saved; use an "
           "earlier checkpoint");
}

}  // namespace

void clean_checkpoint_leftovers(const std::string& root_s, bool all) {
  const fs::path root(root_s);
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    for (const char* tag : {".tmp-", ".del-"}) {
      const size_t at = n.rfind(tag);
      if (at == std::string::npos) continue;
      const long pid = std::strtol(n.c_str() + at + 5, nullptr, 10);
      if (!all && pid != ::getpid() && pid_alive(pid)) continue;  // another live writer: not ours to touch
      std::error_code ec2;
      if (e.is_symlink(ec2) || !e.is_directory(ec2))
        fs::remove(e.path(), ec2);
      else
        fs::remove_all(e.path(), ec2);
    }
  }
}

std::string checkpoint_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

void write_file_synced(const std::string& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  BT_CHECK(fd >= 0, path, ": cannot create (", std::strerror(errno), ")");
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t w = ::write(fd, text.data() + done, text.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int err = errno;
      ::close(fd);
      BT_FAIL(path, ": write failed (", std::strerror(err), "); is the disk full?");
    }
    done += static_cast<size_t>(w);
  }
  const bool ok = ::fsync(fd) == 0;
  const int err = errno;
  ::close(fd);
  BT_CHECK(ok, path, ": fsync failed (", std::strerror(err), ")");
}

void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  BT_CHECK(fd >= 0, dir, ": cannot open directory (", std::strerror(errno), ")");
  ::fsync(fd);  // some file systems refuse fsync on directories; the data files are synced anyway
  ::close(fd);
}

std::vector<SafetensorOut> flat_tensors(const ParamTable& table, const float* flat, const std::string& suffix) {
  std::vector<SafetensorOut> out;
  for (const auto& p : table.entries()) out.push_back({p.name + suffix, p.file_shape, flat + p.offset});
  return out;
}

std::string save_checkpoint(const std::string& root_s, const CheckpointContents& c, int keep, int keep_every) {
  BT_CHECK(c.config && c.table && c.params, "save_checkpoint: config, table and params are required");
  const fs::path root(root_s);
  fs::create_directories(root);
  clean_checkpoint_leftovers(root_s, false);
  const std::string name = checkpoint_dir_name(c.step);
  const fs::path final_dir = root / name;
  const fs::path tmp = root / (name + ".tmp-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::remove_all(tmp, ec);
  BT_CHECK(fs::create_directory(tmp, ec), tmp.string(), ": cannot create checkpoint directory (", ec.message(), ")");

  // Every file's size and checksum, recorded as written, go into checksums.json (verified on load).
  try {
    nlohmann::ordered_json files = nlohmann::ordered_json::object();
    auto record = [&](const std::string& file, const std::string& sum) {
      files[file] = {{"bytes", uint64_t(fs::file_size(tmp / file))}, {"xxh3", sum}};
    };
    std::map<std::string, std::string> meta = {{"format", "pt"}, {"producer", "blockformer"},
                                                {"step", std::to_string(c.step)}};
    std::string sum;
    write_safetensors((tmp / "model.safetensors").string(), flat_tensors(*c.table, c.params, ""), meta, &sum);
    record("model.safetensors", sum);
    if (!c.optimizer.empty()) {
      write_safetensors((tmp / "optimizer.safetensors").string(), c.optimizer, meta, &sum);
      record("optimizer.safetensors", sum);
    }
    nlohmann::json st = c.trainer_state;
    st["step"] = c.step;
    record("trainer_state.json", write_file_checked((tmp / "trainer_state.json").string(), st.dump(2) + "\n"));
    record("config.yaml", write_file_checked((tmp / "config.yaml").string(), to_yaml(*c.config)));
    for (const auto& f : c.copy_files) {
      const std::string base = fs::path(f).filename().string();
      record(base, write_file_checked((tmp / base).string(), read_text(f)));
    }
    const nlohmann::ordered_json sums = {{"algorithm", kChecksumAlgorithm}, {"files", files}};
    write_file_synced((tmp / kChecksums).string(), sums.dump(2) + "\n");
    fsync_dir(tmp.string());
    write_file_synced((tmp / kComplete).string(), "step " + std::to_string(c.step) + "\n");
    fsync_dir(tmp.string());
  } catch (const Error& e) {
    // A failed save (disk full, quota, I/O error) leaves nothing behind and `latest` unchanged.
    fs::remove_all(tmp, ec);
    std::string prev;
    try {
      prev = find_latest_checkpoint(root_s);
    } catch (const Error&) {
    }
    BT_FAIL(e.what(), "; checkpoint of step ", c.step, " not saved (its partial directory was removed), ",
            prev.empty() ? std::string("no earlier checkpoint exists") : "latest still points at " + prev);
  }

  // Move into place. An existing directory of the same step (a re-save after resume, or a
  // previous run in the same out_dir) is exchanged atomically so `latest` never dangles.
  if (::rename(tmp.c_str(), final_dir.c_str()) != 0) {
    const int err = errno;
    BT_CHECK(err == EEXIST || err == ENOTEMPTY, final_dir.string(), ": cannot rename the checkpoint into place (",
             std::strerror(err), ")");
    if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
      remove_dir_safely(tmp);  // now holds the old contents
    } else {
      const fs::path old = root / (name + ".del-" + std::to_string(::getpid()));
      fs::rename(final_dir, old);
      fs::rename(tmp, final_dir);
      fs::remove_all(old, ec);
    }
  }
  fsync_dir(root.string());

  // latest -> name, replaced atomically.
  const fs::path link_tmp = root / ("latest.tmp-" + std::to_string(::getpid()));
  fs::remove(link_tmp, ec);
  fs::create_directory_symlink(name, link_tmp);
  BT_CHECK(::rename(link_tmp.c_str(), (root / "latest").c_str()) == 0, (root / "latest").string(),
           ": cannot update (", std::strerror(errno), ")");
  fsync_dir(root.string());

  // Keep the `keep` newest checkpoints up to this step, and those at multiples of keep_every.
  if (keep > 0) {
    std::vector<std::pair<int64_t, std::string>> older;
    for (auto& [s, d] : list_checkpoints(root_s))
      if (s < c.step) older.emplace_back(s, d);
    const size_t allowed = static_cast<size_t>(keep - 1);
    if (older.size() > allowed)
      for (size_t i = 0; i < older.size() - allowed; ++i)
        if (keep_every <= 0 || older[i].first % keep_every != 0) remove_dir_safely(older[i].second);
    fsync_dir(root.string());
  }
  return final_dir.string();
}

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& root) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    if (e.is_symlink(ec) || !e.is_directory(ec)) continue;
    const int64_t s = parse_step_name(e.path().filename().string());
    if (s >= 0 && fs::exists(e.path() / kComplete, ec)) out.emplace_back(s, e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string find_latest_checkpoint(const std::string& root) {
  const fs::path link = fs::path(root) / "latest";
  std::error_code ec;
  if (!fs::is_symlink(link, ec) && !fs::exists(link, ec)) return "";
  return resolve_checkpoint(link.string());
}

std::string resolve_checkpoint(const std::string& path) {
  std::error_code ec;
  fs::path p(path);
  if (fs::is_symlink(p, ec)) {
    const fs::path target = fs::read_symlink(p, ec);
    const fs::path dir = target.is_absolute() ? target : p.parent_path() / target;
    BT_CHECK(fs::is_directory(dir, ec), path, " points to ", target.string(),
             ", which does not exist (was it deleted by hand?)");
    p = dir;
  } else if (fs::is_regular_file(p, ec) && p.filename() == "latest") {
    // A `latest` written as a text file on file systems without symlinks.
    std::string t = read_text(p.string());
    while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
    p = p.parent_path() / t;
  }
  BT_CHECK(fs::exists(p, ec), "checkpoint ", path, " does not exist");
  BT_CHECK(fs::is_directory(p, ec), "checkpoint ", path, " is not a directory (give a checkpoint directory, "
           "e.g. runs/NAME/checkpoints/latest)");
  if (!fs::exists(p / kComplete, ec)) {
    if (fs::exists(p / "latest", ec) || fs::is_symlink(p / "latest", ec)) return resolve_checkpoint((p / "latest").string());
    if (fs::exists(p / "checkpoints" / "latest", ec) || fs::is_symlink(p / "checkpoints" / "latest", ec))
      return resolve_checkpoint((p / "checkpoints" / "latest").string());
    // A checkpoints folder without `latest`, or a run directory: name the complete checkpoints.
    for (const fs::path& root : {p, p / "checkpoints"}) {
      const auto found = list_checkpoints(root.string());
      if (!found.empty())
        BT_FAIL(path, " is not a checkpoint; it holds checkpoints up to ", found.back().second,
                " but no `latest` link: give one of them");
    }
    // Only a directory that holds checkpoint files was being written when its writer stopped.
    bool partial = false;
    for (const char* f : {"model.safetensors", "optimizer.safetensors", "trainer_state.json", "config.yaml"})
      partial = partial || fs::exists(p / f, ec);
    BT_CHECK(partial, "checkpoint ", path, " is not a checkpoint: ",
             fs::is_empty(p, ec) ? "the directory is empty" : "it holds no model.safetensors, COMPLETE marker or "
             "checkpoints/ folder",
             " (give a checkpoint directory such as runs/NAME/checkpoints/latest, a run directory, or a "
             ".safetensors file with --config)");
    BT_FAIL("checkpoint ", path, " is incomplete (no COMPLETE marker: it was being written when the process "
            "stopped); use the checkpoints/latest link instead");
  }
  return fs::weakly_canonical(p, ec).string();
}

Config load_checkpoint_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.yaml").string();
  BT_CHECK(fs::exists(path), "checkpoint ", dir, " has no config.yaml");
  return load_config(path);
}

nlohmann::json load_trainer_state(const std::string& dir) {
  const std::string path = (fs::path(dir) / "trainer_state.json").string();
  BT_CHECK(fs::exists(path), "checkpoint ", dir, " has no trainer_state.json");
  try {
    return nlohmann::json::parse(read_text(path));
  } catch (const nlohmann::json::exception& e) {
    BT_FAIL(path, ": not valid JSON (", e.what(), ")");
  }
}

std::vector<std::string> load_weights(const std::string& file, const ParamTable& table, float* flat) {
  verify_checkpoint_file(file);
  SafetensorsReader f(file);
  for (const auto& p : table.entries()) {
    BT_CHECK(f.contains(p.name), file, ": missing tensor '", p.name, "' of shape ", shape_str(p.file_shape),
             " (the weights do not match the config: check model.* layers, kind and sizes)");
    const SafetensorInfo& t = f.info(p.name);
    BT_CHECK(t.shape == p.file_shape || t.shape == p.shape, file, ": tensor '", p.name, "' has shape ",
             shape_str(t.shape), " but the config expects ", shape_str(p.file_shape),
             " (the weights do not match the config's model.* sizes)");
    f.read_f32(p.name, flat + p.offset);
    check_finite(flat + p.offset, p.numel, file, p.name);
  }
  std::vector<std::string> extra;
  for (const auto& t : f.tensors())
    if (!table.contains(t.name)) extra.push_back(t.name);
  return extra;
}

bool load_flat_by_suffix(const SafetensorsReader& f, const ParamTable& table, const std::string& suffix,
                         float* flat) {
  bool any = false;
  for (const auto& p : table.entries()) any = any || f.contains(p.name + suffix);
  if (!any) return false;
  for (const auto& p : table.entries()) {
    const std::string n = p.name + suffix;
    BT_CHECK(f.contains(n), f.path(), ": missing tensor '", n, "'");
    BT_CHECK(f.info(n).numel() == p.numel, f.path(), ": tensor '", n, "' has shape ", shape_str(f.info(n).shape),
             " but the model expects ", shape_str(p.file_shape));
    f.read_f32(n, flat + p.offset);
    check_finite(flat + p.offset, p.numel, f.path(), n);
  }
  return true;
}

bool verify_checkpoint(const std::string& dir_s) {
  const fs::path dir(dir_s);
  const nlohmann::json sums = read_checksums(dir);
  if (sums.is_null()) return false;
  for (auto it = sums["files"].begin(); it != sums["files"].end(); ++it) verify_entry(dir, it.key(), it.value());
  return true;
}

void verify_checkpoint_file(const std::string& file) {
  const fs::path p(file);
  const fs::path dir = p.parent_path().empty() ? fs::path(".") : p.parent_path();
  const nlohmann::json sums = read_checksums(dir);
  if (sums.is_null()) return;
  const std::string name = p.filename().string();
  if (sums["files"].contains(name)) verify_entry(dir, name, sums["files"][name]);
}

void check_same_model(const ModelConfig& a, const ModelConfig& b, const std::string& what) {
  auto differ = [&](const std::string& key, const auto& x, const auto& y) {
    if (!(x == y)) {
      std::ostringstream os;
      os << what << " was written for a different model: model." << key << " is " << x << " there but " << y
         << " in this config";
      BT_FAIL(os.str());
    }
  };
  differ("kind", a.kind, b.kind);
  differ("vocab_size", a.vocab_size, b.vocab_size);
  differ("context_length", a.context_length, b.context_length);
  auto stack = [&](const std::string& k, const DecoderConfig& x, const DecoderConfig& y) {
    differ(k + ".layers", x.layers, y.layers);
    differ(k + ".dim", x.dim, y.dim);
    differ(k + ".heads", x.heads, y.heads);
    differ(k + ".ffn_dim", x.ffn_dim, y.ffn_dim);
    differ(k + ".prefix_length", x.prefix_length, y.prefix_length);
  };
  if (a.is_block()) {
    differ("block_length", a.block_length, b.block_length);
    differ("embedder.kind", a.embedder_kind, b.embedder_kind);
    differ("embedder.dim", a.embedder_dim, b.embedder_dim);
    differ("embedder.projection_method", a.projection_method, b.projection_method);
    differ("token_decoder.decoding_strategy", a.decoding_strategy, b.decoding_strategy);
    stack("block_decoder", a.block_decoder, b.block_decoder);
    stack("token_decoder", a.token_decoder, b.token_decoder);
  } else {
    stack("decoder", a.decoder, b.decoder);
  }
  differ("rotary_pct", a.rotary_pct, b.rotary_pct);
  differ("rotary_base", a.rotary_base, b.rotary_base);
  differ("layernorm_eps", a.layernorm_eps, b.layernorm_eps);
}

}  // namespace bt

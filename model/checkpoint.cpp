// Checkpoint directories: atomic save, keep-last-K, `latest`, and loading. See checkpoint.h.
#include "model/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/log.h"

namespace bt {

namespace fs = std::filesystem;

namespace {

constexpr const char* kComplete = "COMPLETE";

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

// Leftovers of interrupted saves and deletions: *.tmp-<pid>, *.del-<pid>, latest.tmp-<pid> whose
// process is gone (or is us: a previous save of this process never leaves any).
void clean_leftovers(const fs::path& root) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    for (const char* tag : {".tmp-", ".del-"}) {
      const size_t at = n.rfind(tag);
      if (at == std::string::npos) continue;
      const long pid = std::strtol(n.c_str() + at + 5, nullptr, 10);
      if (pid != ::getpid() && pid_alive(pid)) continue;  // another live writer: not ours to touch
      std::error_code ec2;
      if (e.is_symlink(ec2) || !e.is_directory(ec2))
        fs::remove(e.path(), ec2);
      else
        fs::remove_all(e.path(), ec2);
    }
  }
}

void copy_file_synced(const std::string& src, const std::string& dst) { write_file_synced(dst, read_text(src)); }

}  // namespace

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

std::string save_checkpoint(const std::string& root_s, const CheckpointContents& c, int keep) {
  BT_CHECK(c.config && c.table && c.params, "save_checkpoint: config, table and params are required");
  const fs::path root(root_s);
  fs::create_directories(root);
  clean_leftovers(root);
  const std::string name = checkpoint_dir_name(c.step);
  const fs::path final_dir = root / name;
  const fs::path tmp = root / (name + ".tmp-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::remove_all(tmp, ec);
  BT_CHECK(fs::create_directory(tmp, ec), tmp.string(), ": cannot create checkpoint directory (", ec.message(), ")");

  std::map<std::string, std::string> meta = {{"format", "pt"}, {"producer", "blockformer"},
                                              {"step", std::to_string(c.step)}};
  write_safetensors((tmp / "model.safetensors").string(), flat_tensors(*c.table, c.params, ""), meta);
  if (!c.optimizer.empty()) write_safetensors((tmp / "optimizer.safetensors").string(), c.optimizer, meta);
  nlohmann::json st = c.trainer_state;
  st["step"] = c.step;
  write_file_synced((tmp / "trainer_state.json").string(), st.dump(2) + "\n");
  write_file_synced((tmp / "config.yaml").string(), to_yaml(*c.config));
  for (const auto& f : c.copy_files) copy_file_synced(f, (tmp / fs::path(f).filename()).string());
  fsync_dir(tmp.string());
  write_file_synced((tmp / kComplete).string(), "step " + std::to_string(c.step) + "\n");
  fsync_dir(tmp.string());

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

  // Keep the `keep` newest checkpoints up to this step.
  if (keep > 0) {
    std::vector<std::pair<int64_t, std::string>> older;
    for (auto& [s, d] : list_checkpoints(root_s))
      if (s < c.step) older.emplace_back(s, d);
    const size_t allowed = static_cast<size_t>(keep - 1);
    if (older.size() > allowed)
      for (size_t i = 0; i < older.size() - allowed; ++i) remove_dir_safely(older[i].second);
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
  SafetensorsReader f(file);
  for (const auto& p : table.entries()) {
    BT_CHECK(f.contains(p.name), file, ": missing tensor '", p.name, "' of shape ", shape_str(p.file_shape),
             " (the weights do not match the config: check model.* layers, kind and sizes)");
    const SafetensorInfo& t = f.info(p.name);
    BT_CHECK(t.shape == p.file_shape || t.shape == p.shape, file, ": tensor '", p.name, "' has shape ",
             shape_str(t.shape), " but the config expects ", shape_str(p.file_shape),
             " (the weights do not match the config's model.* sizes)");
    f.read_f32(p.name, flat + p.offset);
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
  }
  return true;
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

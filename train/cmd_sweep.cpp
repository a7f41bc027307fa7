// `bt sweep --config BASE --grid KEY=V1,V2 [--grid ...] [--point K=V,...] --out DIR [overrides]`:
// trains every point of the grid in DIR/<point name> (bt train --resume auto as a child process,
// its output in DIR/<point>/train.log), skipping finished points and resuming unfinished ones;
// optionally benchmarks decoding (--bench), scores zero-shot tasks (--tasks) and the loss by
// position (--by-position) of each finished point; writes DIR/results.csv and DIR/results.md.
// --dry-run lists the points; --slurm writes a Slurm job-array script that trains each point
// through launch/slurm.sbatch. See train/sweep.h and docs/ablations.md.
#include <CLI/CLI.hpp>
#include <fcntl.h>
#include <fmt/core.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "train/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "core/timer.h"
#include "data/shard.h"
#include "model/checkpoint.h"
#include "core/format.h"
#include "train/sweep.h"

namespace bt {

namespace fs = std::filesystem;

namespace {

struct SweepArgs {
  std::string config, out, sbatch = "launch/slurm.sbatch";
  std::vector<std::string> grid, points, overrides;
  bool dry_run = false, slurm = false, report = false;
  bool bench = false;
  std::string bench_batch = "16";
  std::string tasks, task_data = "tasks";
  double task_limit = 0;
  int by_position = 0;
};

// ---- child processes ----------------------------------------------------------------------

volatile std::sig_atomic_t g_child = 0;   // the running child's pid
volatile std::sig_atomic_t g_signal = 0;  // the signal that asked the sweep to stop

extern "C" void on_sweep_signal(int sig) {
  g_signal = sig;
  // bt train saves a checkpoint and exits on TERM (the child has its own process group, so a
  // Ctrl-C on the terminal reaches only the sweep, which passes it on as TERM).
  if (g_child > 0) ::kill(static_cast<pid_t>(g_child), SIGTERM);
}

std::string self_exe() {
  std::error_code ec;
  const fs::path p = fs::canonical("/proc/self/exe", ec);
  BT_CHECK(!ec, "bt sweep: cannot find its own executable (/proc/self/exe)");
  return p.string();
}

std::string shell_quote(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.,/=:+@%") ==
                        std::string::npos)
    return s;
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string command_line(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) s += (s.empty() ? "" : " ") + shell_quote(a);
  return s;
}

// Runs argv with stdout and stderr appended to `log`; returns its exit status (128 + signal when
// killed). The child dies with the sweep (PR_SET_PDEATHSIG: TERM, so bt train saves first).
int run_child(const std::vector<std::string>& argv, const std::string& log) {
  {
    std::ofstream l(log, std::ios::app);
    l << "\n$ " << command_line(argv) << "\n";
  }
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  BT_CHECK(pid >= 0, "bt sweep: fork failed (", std::strerror(errno), ")");
  if (pid == 0) {
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) _exit(143);  // the sweep died before prctl
    const int fd = ::open(log.c_str(), O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0) _exit(126);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::close(fd);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    _exit(127);
  }
  g_child = pid;
  if (g_signal) ::kill(pid, SIGTERM);  // a signal that came before the child existed
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  g_child = 0;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// The end of a log file, for error messages.
std::string log_tail(const std::string& log, size_t lines = 8) {
  std::ifstream in(log);
  std::vector<std::string> all;
  for (std::string l; std::getline(in, l);) all.push_back(l);
  std::string s;
  for (size_t i = all.size() > lines ? all.size() - lines : 0; i < all.size(); ++i) s += "\n  | " + all[i];
  return s;
}

// ---- the steps of a point -----------------------------------------------------------------

std::vector<std::string> train_argv(const std::string& bt, const SweepPoint& p) {
  std::vector<std::string> a = {bt, "train", "--config", p.config};
  a.insert(a.end(), p.overrides.begin(), p.overrides.end());
  a.insert(a.end(), {"--resume", "auto"});
  return a;
}

std::string checkpoint_of(const SweepPoint& p, int64_t step) {
  return (fs::path(p.dir) / "checkpoints" / checkpoint_dir_name(step)).string();
}

// A result file is current when it was made from the point's final checkpoint.
bool made_from(const fs::path& file, const std::string& key, const std::string& checkpoint) {
  std::ifstream in(file);
  if (!in) return false;
  try {
    const nlohmann::json j = nlohmann::json::parse(in);
    const nlohmann::json* v = &j;
    for (size_t a = 0, b; a != std::string::npos; a = b == std::string::npos ? b : b + 1) {
      b = key.find('/', a);
      const std::string part = key.substr(a, b == std::string::npos ? std::string::npos : b - a);
      if (!v->contains(part)) return false;
      v = &(*v)[part];
    }
    return v->is_string() && v->get<std::string>().find(fs::path(checkpoint).filename().string()) != std::string::npos;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

struct Step {
  const char* what;
  fs::path file;
  std::vector<std::string> argv;
};

// What a finished point still needs besides training: --bench, --tasks, --by-position.
std::vector<Step> extra_steps(const std::string& bt, const SweepArgs& a, const SweepPoint& p, int64_t end) {
  std::vector<Step> s;
  const std::string dir = p.dir, ck = checkpoint_of(p, end), device = p.resolved.train.device;
  if (a.bench && !fs::exists(fs::path(dir) / "bench.json"))  // random weights: the config decides
    s.push_back({"bench", fs::path(dir) / "bench.json",
                 {bt, "bench", "infer", "--config", (fs::path(dir) / "config.yaml").string(), "--device", device,
                  "--batch", a.bench_batch, "--repeats", "2", "--no-split", "--json",
                  (fs::path(dir) / "bench.json").string()}});
  if (!a.tasks.empty() && !made_from(fs::path(dir) / "tasks.json", "config/model_args", ck)) {
    const ModelConfig& m = p.resolved.model;
    s.push_back({"tasks", fs::path(dir) / "tasks.json",
                 {bt, "eval", "--ckpt", ck, "--task", a.tasks, "--task-data", a.task_data, "--limit",
                  fmt::format("{}", a.task_limit), "--bootstrap-iters", "0", "--device", device, "--context-mode",
                  m.is_block() && !p.resolved.data.random_pad_first_block ? "nopad" : "pad", "--output",
                  (fs::path(dir) / "tasks.json").string()}});
  }
  if (a.by_position > 0 && !made_from(fs::path(dir) / "by_position.json", "checkpoint", ck))
    s.push_back({"by-position", fs::path(dir) / "by_position.json",
                 {bt, "eval", "--ckpt", ck, "--by-position", std::to_string(a.by_position), "--device", device,
                  "--output", (fs::path(dir) / "by_position.json").string()}});
  return s;
}

// ---- --slurm --------------------------------------------------------------------------------

void write_slurm_script(const SweepArgs& a, const std::vector<SweepPoint>& points, const std::string& bt) {
  std::error_code ec;
  const fs::path sbatch = fs::absolute(a.sbatch);
  BT_CHECK(fs::exists(sbatch, ec), "--slurm: ", a.sbatch, " not found from ", fs::current_path().string(),
           ": run bt sweep from the repository root, or give --sbatch PATH (launch/slurm.sbatch)");
  const fs::path out = fs::absolute(a.out);
  fs::create_directories(out);
  for (const SweepPoint& p : points) claim_point_dir(p);  // point.json: the later bt sweep knows them
  std::string s;
  s += "#!/usr/bin/env bash\n";
  s += "# Written by bt sweep --slurm: one Slurm array task per point, each trained through\n";
  s += "# launch/slurm.sbatch (resume, time limits, requeues; docs/distributed.md). Submit with the\n";
  s += "# resources of one point, e.g.\n";
  s += "#   sbatch --nodes=1 --ntasks=1 --cpus-per-task=2 --time=1:00:00 " + (out / "sweep.sbatch").string() + "\n";
  s += "# and when every task has finished, run the same bt sweep without --slurm: it trains nothing more\n";
  s += "# and writes results.csv / results.md (with --bench / --tasks, it runs those first).\n";
  s += "# Points (array index: name):\n";
  for (size_t i = 0; i < points.size(); ++i) s += fmt::format("#   {}: {}\n", i, points[i].name);
  s += "#SBATCH --job-name=bt-sweep\n";
  s += fmt::format("#SBATCH --array=0-{}\n", points.size() - 1);
  s += "#SBATCH --signal=B:USR1@120\n#SBATCH --requeue\n#SBATCH --open-mode=append\n";
  s += "#SBATCH --output=" + (out / "slurm-%A_%a.out").string() + "\n";
  s += "set -euo pipefail\n";
  s += "cd " + shell_quote(fs::current_path().string()) + "\n";
  s += "export BT=\"${BT:-" + bt + "}\"\n";
  s += "case \"${SLURM_ARRAY_TASK_ID:?run this script with sbatch (it is a job array)}\" in\n";
  for (size_t i = 0; i < points.size(); ++i) {
    std::vector<std::string> args = {points[i].config};
    args.insert(args.end(), points[i].overrides.begin(), points[i].overrides.end());
    s += fmt::format("  {}) args=({}) ;;\n", i, command_line(args));
  }
  s += "  *) echo \"bt sweep: no point has array index $SLURM_ARRAY_TASK_ID\" >&2; exit 1 ;;\n";
  s += "esac\n";
  s += "exec bash " + shell_quote(sbatch.string()) + " \"${args[@]}\"\n";
  const std::string path = (out / "sweep.sbatch").string();
  write_file_atomic(path, s);
  fs::permissions(path, fs::perms::owner_exec | fs::perms::group_exec, fs::perm_options::add, ec);
  fmt::print("bt sweep: wrote {} ({} points, array 0-{}): sbatch [resources] {}\n", path, points.size(),
             points.size() - 1, path);
}

// ---- the sweep ------------------------------------------------------------------------------

void run_sweep(const SweepArgs& a) {
  SweepSpec spec;
  spec.config = a.config;
  spec.out = a.out;
  spec.overrides = a.overrides;
  spec.points = a.points;
  for (const auto& g : a.grid) spec.grid.push_back(parse_axis(g));
  BT_CHECK(a.bench_batch == "auto" || std::all_of(a.bench_batch.begin(), a.bench_batch.end(), ::isdigit),
           "--bench-batch must be a batch size or auto (got '", a.bench_batch, "')");
  BT_CHECK(a.by_position >= 0, "--by-position must be >= 0 positions (0: off)");
  BT_CHECK(a.task_limit >= 0, "--task-limit must be >= 0");
  BT_CHECK(a.tasks.empty() || fs::is_directory(a.task_data), "--tasks needs the tasks' files: --task-data ",
           a.task_data, " is not a directory (docs/evaluation.md)");
  const std::vector<SweepPoint> points = expand_points(spec);
  const std::string bt = self_exe();

  if (a.dry_run) {
    fmt::print("bt sweep: {} points in {}\n", points.size(), a.out);
    for (size_t i = 0; i < points.size(); ++i) {
      const SweepPoint& p = points[i];
      const PointStatus st = point_status(p);
      const std::string state = st.done()     ? "done"
                                : st.step > 0 ? fmt::format("resume at step {} of {}", st.step, st.end)
                                              : fmt::format("new, {} steps", st.end);
      std::string settings;
      for (const auto& [k, v] : p.settings) settings += (settings.empty() ? "" : " ") + k + "=" + v;
      fmt::print("[{}/{}] {}: {} ({})\n      {}\n", i + 1, points.size(), p.name, settings.empty() ? "-" : settings,
                 state, command_line(train_argv("bt", p)));
    }
    return;
  }
  if (a.slurm) return write_slurm_script(a, points, bt);

  fs::create_directories(a.out);
  std::signal(SIGINT, on_sweep_signal);
  std::signal(SIGTERM, on_sweep_signal);
  Timer total;
  for (size_t i = 0; i < points.size() && !a.report; ++i) {
    const SweepPoint& p = points[i];
    const std::string tag = fmt::format("[{}/{}] {}", i + 1, points.size(), p.name);
    claim_point_dir(p);
    const std::string log = (fs::path(p.dir) / "train.log").string();
    PointStatus st = point_status(p);
    if (st.done()) {
      log_info("{}: done (step {}), skipped", tag, st.step);
    } else {
      log_info("{}: {} (log: {})", tag,
               st.step > 0 ? fmt::format("resuming at step {} of {}", st.step, st.end)
                           : fmt::format("training {} steps", st.end),
               log);
      Timer t;
      const int rc = run_child(train_argv(bt, p), log);
      st = point_status(p);
      if (g_signal)
        BT_FAIL("bt sweep stopped by signal ", int(g_signal), " during ", p.name, " (saved at step ", st.step,
                "): run the same command again to resume");
      if (rc != 0 || !st.done()) {
        fmt::print(stderr, "{}: the end of {}:{}\n", p.name, log, log_tail(log));
        BT_FAIL(p.name, ": bt train ", rc == 0 ? "stopped" : fmt::format("failed (exit {})", rc), " at step ", st.step,
                " of ", st.end, " (its log: ", log, "); fix the cause and run the same command again to resume");
      }
      log_info("{}: trained to step {} in {}", tag, st.step, format_duration(t.seconds()));
    }
    for (const Step& s : extra_steps(bt, a, p, st.end)) {
      const std::string slog = (fs::path(p.dir) / (std::string(s.what) + ".log")).string();
      Timer t;
      const int rc = run_child(s.argv, slog);
      if (g_signal) BT_FAIL("bt sweep stopped by signal ", int(g_signal), " during ", p.name, " (", s.what, ")");
      if (rc != 0 || !fs::exists(s.file)) {
        fmt::print(stderr, "{}: the end of {}:{}\n", p.name, slog, log_tail(slog));
        BT_FAIL(p.name, ": ", s.what, " failed (exit ", rc, "; its log: ", slog, ")");
      }
      log_info("{}: {} in {} ({})", tag, s.what, format_duration(t.seconds()), s.file.string());
    }
  }
  const SweepTable table = gather_results(a.out, points);
  write_results(a.out, table);
  log_info("bt sweep: {} points{}; results in {}/results.csv and results.md", table.rows.size(),
           a.report ? "" : fmt::format(" in {}", format_duration(total.seconds())), a.out);
}

}  // namespace

void add_sweep_command(CLI::App& app) {
  auto a = std::make_shared<SweepArgs>();
  CLI::App* cmd = app.add_subcommand(
      "sweep", "train one run per point of a grid of config overrides, resumably, and tabulate the results");
  cmd->add_option("-c,--config", a->config, "the base config every point starts from")->required();
  cmd->add_option("--grid", a->grid,
                  "an axis: KEY=V1,V2,... or linked keys K1,K2=[A1,B1],[A2,B2] (the points are the product of the "
                  "axes)");
  cmd->add_option("--point", a->points,
                  "one more point: KEY=VALUE,KEY=VALUE (config=FILE: another base config, e.g. the vanilla baseline)");
  cmd->add_option("-o,--out", a->out, "the sweep directory: one run per point in OUT/<point name>")->required();
  cmd->add_option("overrides", a->overrides, "overrides for every point: section.key=value");
  cmd->add_flag("--dry-run", a->dry_run, "list the points, their state and their commands; run nothing");
  cmd->add_flag("--slurm", a->slurm,
                "write OUT/sweep.sbatch, a Slurm job array that trains each point through launch/slurm.sbatch; run "
                "nothing");
  cmd->add_option("--sbatch", a->sbatch, "--slurm: the launcher each array task runs (default launch/slurm.sbatch)");
  cmd->add_flag("--report", a->report, "only write results.csv and results.md from what the point directories hold");
  cmd->add_flag("--bench", a->bench,
                "also measure each point's generation throughput in both paper settings (bt bench infer, random "
                "weights; OUT/<point>/bench.json)");
  cmd->add_option("--bench-batch", a->bench_batch, "--bench: the batch size, or auto (default 16)");
  cmd->add_option("--tasks", a->tasks, "also score these zero-shot tasks on each point's last checkpoint");
  cmd->add_option("--task-data", a->task_data, "--tasks: the directory of the tasks' files (default tasks)");
  cmd->add_option("--task-limit", a->task_limit, "--tasks: the first N documents of each task (0: all)");
  cmd->add_option("--by-position", a->by_position,
                  "also the validation loss by absolute position, in buckets of this many positions "
                  "(OUT/<point>/by_position.json)");
  cmd->callback([a] { run_sweep(*a); });
}

}  // namespace bt

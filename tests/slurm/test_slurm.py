"""launch/slurm.sbatch under a real single-node Slurm (docs/distributed.md, "Slurm").

Starts munged, slurmctld and slurmd of Debian's slurm-wlm from a slurm.conf in a temp dir (its own
ports, key, spool and state; proctrack/linuxproc, task/none, select/cons_tres, mpi/pmix, no cgroups,
no accounting), submits jobs with `sbatch launch/slurm.sbatch` (2 CPU ranks each, a tiny model on
synthetic tokens, all jobs at once) and stops exactly the daemons it started, by their pid files.
- srun and mpirun (BT_LAUNCHER=mpirun): the losses of every step equal one process's (1e-5).
- A job with a 1-minute limit gets USR1 before it (--signal=B:USR1@10), saves, requeues itself and
  finishes; `scontrol requeue` (TERM to every process) and `scancel --signal=USR1` (the ranks) or
  `scancel --batch --signal=USR1` (the script) mid-run: the same. Each restarted job saves at the
  step it was stopped, resumes there, and its losses equal the uninterrupted job's exactly.
- A crash (rank 1 killed) is requeued once (BT_CRASH_REQUEUES=1) and the run finishes with the same
  losses; a job that fails on every start ends FAILED after one requeue; ranks that ignore the
  stop signal are given up after BT_STOP_TIMEOUT, requeued as a crash, and the run finishes.
- Each job's log (default --output, appended) holds every line from every start: each start's
  banner, every step's progress line, the stop and resume lines, in order.
The first start of an interrupted job is slowed (BT_STEP_DELAY_MS through a wrapper around bt), so
that the signal lands mid-run; later starts run at full speed. Slurm cannot run (not root, no
slurm-wlm or munge): exit 77 (skipped), or fail when BT_REQUIRE_SLURM=1 (launch/test.sh sets it
for root, as in CI). Env: BT_BINARY, BT_SOURCE_DIR.
"""
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

BT = os.path.abspath(os.environ.get("BT_BINARY", "build/release/bt"))
SRC = os.path.abspath(os.environ.get("BT_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", "..")))
SBATCH_SCRIPT = os.path.join(SRC, "launch", "slurm.sbatch")
STEPS = 60
CONFIG = [f"{SRC}/configs/tiny/block_b4.yaml", "model.vocab_size=64", "model.context_length=32",
          "model.embedder.dim=8", "model.block_decoder.dim=32", "model.block_decoder.heads=2",
          "model.block_decoder.ffn_dim=64", "model.token_decoder.dim=32", "model.token_decoder.heads=2",
          "model.token_decoder.ffn_dim=64", "train.global_batch=8", "train.micro_batch=4", "train.log_every=1",
          "data.train=", "data.val=", "data.synthetic=repeat:37", "train.device=cpu", "train.eval_every=1000",
          f"train.steps={STEPS}", "train.checkpoint_every=5"]
DEADLINE_S = 200  # every job done within this (about 75 s on a 2-core VM)
FAILURES = []

# bt as the jobs see it: slow in a job's first start (TEST_FIRST_START_DELAY_MS), so that a signal
# lands mid-run; rank 1 killed in the first start once 7 steps are logged (TEST_KILL_RANK1); ranks
# that ignore signals in the first start (TEST_HANG); every start failing at once (TEST_FAIL).
WRAPPER = """#!/bin/sh
case " $* " in *" --print-config "*) exec "$TEST_BT" "$@" ;; esac
rank="${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-${SLURM_PROCID:-0}}}"
if [ -n "${TEST_FAIL:-}" ]; then echo "test: rank $rank fails on purpose" >&2; exit 3; fi
if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then
  if [ -n "${TEST_HANG:-}" ]; then
    trap '' USR1 TERM
    echo "test: rank $rank ignores USR1 and TERM" >&2
    while :; do sleep 1; done
  fi
  if [ -n "${TEST_FIRST_START_DELAY_MS:-}" ]; then export BT_STEP_DELAY_MS="$TEST_FIRST_START_DELAY_MS"; fi
  if [ -n "${TEST_KILL_RANK1:-}" ] && [ "$rank" = 1 ]; then
    (while n=$(grep -c '"loss"' "$TEST_KILL_RANK1/metrics.jsonl" 2>/dev/null); [ "${n:-0}" -lt 7 ]; do sleep 0.2; done
     echo "test: killing rank 1 (pid $$)" >&2; kill -9 $$) &
  fi
fi
exec "$TEST_BT" "$@"
"""


def check(name, cond, msg=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond or not msg else ": " + msg), flush=True)
    if not cond:
        FAILURES.append(name)
    return cond


def skip(why):
    if os.environ.get("BT_REQUIRE_SLURM") == "1":
        print(f"FAIL: Slurm cannot run here ({why}) but BT_REQUIRE_SLURM=1 (launch/test.sh, CI) requires this test")
        sys.exit(1)
    print(f"SKIP: Slurm cannot run here: {why} (launch/install-deps.sh installs slurm-wlm and munge; run as root)")
    sys.exit(77)


def finish(tmp):
    """Removes the test's directory (kept with BT_SLURM_TEST_KEEP=1, or after a failure), then exits 1
    naming the failed checks, or says that all passed."""
    if os.environ.get("BT_SLURM_TEST_KEEP") == "1" or FAILURES:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    if FAILURES:
        print("FAILED:", ", ".join(FAILURES))
        sys.exit(1)
    print("all checks passed")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """munged + slurmctld + slurmd of one node, all state under `root`."""

    def __init__(self, root):
        self.root = root
        self.conf = os.path.join(root, "slurm.conf")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
        self.env["SLURM_CONF"] = self.conf
        self.pidfiles = []

    def path(self, name):
        return os.path.join(self.root, name)

    def start(self):
        for d in ("state", "spool"):
            os.makedirs(self.path(d))
        with open(self.path("munge.key"), "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(self.path("munge.key"), 0o600)
        os.chmod(self.root, 0o755)  # munged wants its socket's directory searchable
        self.pidfiles.append(self.path("munged.pid"))
        subprocess.run(["munged", "--force", f"--key-file={self.path('munge.key')}", f"--socket={self.path('munge.sock')}",
                        f"--pid-file={self.path('munged.pid')}", f"--log-file={self.path('munged.log')}",
                        f"--seed-file={self.path('munged.seed')}"], check=True)
        node = subprocess.run(["slurmd", "-C"], stdout=subprocess.PIPE, text=True, check=True).stdout.splitlines()[0]
        name = re.match(r"NodeName=(\S+)", node).group(1)
        with open(self.conf, "w") as f:
            f.write(f"""ClusterName=bttest
SlurmctldHost={name}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.path('munge.sock')},cred_expire=30
StateSaveLocation={self.path('state')}
SlurmdSpoolDir={self.path('spool')}
SlurmctldPidFile={self.path('slurmctld.pid')}
SlurmdPidFile={self.path('slurmd.pid')}
SlurmctldLogFile={self.path('slurmctld.log')}
SlurmdLogFile={self.path('slurmd.log')}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
SchedulerParameters=sched_interval=5
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
KillWait=10
ReturnToService=2
MailProg=/bin/true
FirstJobId={random.randint(1000, 9000000)}
{node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:16
""")
        self.pidfiles += [self.path("slurmctld.pid"), self.path("slurmd.pid")]
        subprocess.run(["slurmctld", "-f", self.conf, "-i"], env=self.env, check=True)
        subprocess.run(["slurmd", "-f", self.conf], env=self.env, check=True)
        t0 = time.time()
        while time.time() - t0 < 30:
            p = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
            if p.returncode == 0 and p.stdout.strip() == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError("the Slurm node did not come up:\n" + self.tail("slurmctld.log") + self.tail("slurmd.log"))

    def start_or_skip(self):
        """start(), or skip the test (with the daemons' logs) when the daemons do not come up."""
        t0 = time.time()
        try:
            self.start()
        except (subprocess.CalledProcessError, RuntimeError, OSError) as e:
            print(self.tail("munged.log") + self.tail("slurmctld.log") + self.tail("slurmd.log"))
            skip(f"the Slurm daemons did not start ({e})")
        print(f"Slurm up in {time.time() - t0:.1f} s ({self.conf})", flush=True)

    def tail(self, name, n=15):
        try:
            with open(self.path(name)) as f:
                return f"--- {name}\n" + "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def run(self, *cmd, env=None):
        return subprocess.run(list(cmd), env=env or self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=30)

    def job(self, job_id):
        out = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def stop(self):
        """Ends every job of this cluster, then exactly the daemons it started (by pid file)."""
        if os.path.exists(self.path("slurmctld.pid")):
            jobs = self.run("squeue", "-h", "-o", "%i").stdout.split()
            if jobs:
                self.run("scancel", "--signal=KILL", "--full", *jobs)
                self.run("scancel", *jobs)
                t0 = time.time()
                while time.time() - t0 < 20 and self.run("squeue", "-h", "-t", "R,CG", "-o", "%i").stdout.strip():
                    time.sleep(0.5)
        for pidfile in reversed(self.pidfiles):  # slurmd, slurmctld, munged
            try:
                with open(pidfile) as f:
                    pid = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            t0 = time.time()
            while time.time() - t0 < 10:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)


def processes_naming(path):
    """Pids of the processes whose command line names `path` (the ranks, launchers, wrappers of this test)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if path.encode() in f.read():
                        pids.append(int(d))
            except OSError:
                pass
    return pids


def losses(out):
    """step -> loss of metrics.jsonl (the last row of a step that ran twice)."""
    rows = {}
    try:
        with open(os.path.join(out, "metrics.jsonl")) as f:
            for line in f:
                r = json.loads(line)
                if "loss" in r:
                    rows[r["step"]] = r["loss"]
    except OSError:
        pass
    return rows


class Job:
    def __init__(self, name, launcher, sbatch_args=(), env=None, action=None, restarts=0, state="COMPLETED",
                 when=lambda job: len(losses(job.out)) >= 6, first_line=f"step      1/{STEPS} |"):
        self.first_line = first_line  # a line that only the first start writes
        self.name, self.launcher, self.sbatch_args, self.extra_env = name, launcher, list(sbatch_args), env or {}
        self.action, self.restarts, self.state, self.when = action, restarts, state, when
        self.id, self.acted, self.final = None, False, None

    def submit(self, cluster, tmp, wrapper):
        self.out = os.path.join(tmp, "runs", self.name)
        self.submit_dir = os.path.join(tmp, "submit", self.name)
        os.makedirs(self.submit_dir)
        env = dict(cluster.env, BT=wrapper, TEST_BT=BT, BT_LAUNCHER=self.launcher, OMPI_ALLOW_RUN_AS_ROOT="1",
                   OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", **self.extra_env)
        if self.extra_env.get("TEST_KILL_RANK1") == "":
            env["TEST_KILL_RANK1"] = self.out
        cmd = ["sbatch", "--parsable", f"--job-name=bt-{self.name}", "--ntasks=2", "--cpus-per-task=1",
               *self.sbatch_args, SBATCH_SCRIPT, *CONFIG, f"train.out_dir={self.out}"]
        p = subprocess.run(cmd, cwd=self.submit_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=30)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stdout}")
        self.id = p.stdout.strip().split(";")[0]
        # The default --output: slurm-%x-%j.out in the directory sbatch ran in.
        self.log_path = os.path.join(self.submit_dir, f"slurm-bt-{self.name}-{self.id}.out")

    def log(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""


def check_log(job):
    log = job.log()
    lines = log.splitlines()
    starts = [i for i, l in enumerate(lines) if re.search(r"slurm\.sbatch .*: start \d+ on ", l)]
    want = job.restarts + 1
    check(f"{job.name}: the log holds {want} start banner(s)", len(starts) == want,
          f"found {len(starts)}:\n" + "\n".join(lines[i] for i in starts))
    ordered = all(f": start {k + 1} on " in lines[i] for k, i in enumerate(starts))
    check(f"{job.name}: the starts appear in order, each after the previous start's lines", ordered)
    if job.state != "COMPLETED":
        return log
    for s in range(1, STEPS + 1):
        if not any(l.startswith(f"step {s:>6}/{STEPS} |") for l in lines):
            check(f"{job.name}: the log holds the progress line of every step", False, f"step {s} is missing")
            break
    else:
        check(f"{job.name}: the log holds the progress line of every step", True)
    if job.restarts and len(starts) >= 2:
        before, after = lines[starts[0]:starts[1]], lines[starts[1]:]
        check(f"{job.name}: lines from before the restart are kept ('{job.first_line}' before start 2)",
              any(l.startswith(job.first_line) for l in before))
        check(f"{job.name}: lines from after the restart are there (final step after start 2)",
              any(l.startswith(f"step {STEPS:>6}/{STEPS} |") for l in after))
    return log


def main():
    if os.geteuid() != 0:
        skip("the test starts slurmctld, slurmd and munged as root and is not root")
    for exe in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "mpirun"):
        if not shutil.which(exe):
            skip(f"{exe} is not installed")
    tmp = tempfile.mkdtemp(prefix="bt_slurm_")
    cluster = Cluster(os.path.join(tmp, "cluster"))
    os.makedirs(cluster.root)
    t_start = time.time()
    try:
        cluster.start_or_skip()
        wrapper = os.path.join(tmp, "bt-wrapper.sh")
        with open(wrapper, "w") as f:
            f.write(WRAPPER)
        os.chmod(wrapper, 0o755)

        slow = {"TEST_FIRST_START_DELAY_MS": "300"}
        jobs = [
            Job("srun", "srun"),
            Job("mpirun", "mpirun"),
            # The time limit: USR1 comes at slurmctld's first 30-s check with at most 10 + 30 s left,
            # 20 to 50 s after the start; the first start would need 60 s.
            Job("timelimit-srun", "srun", ["--time=1", "--signal=B:USR1@10"], {"TEST_FIRST_START_DELAY_MS": "1000"},
                restarts=1),
            Job("timelimit-mpirun", "mpirun", ["--time=1", "--signal=B:USR1@10"],
                {"TEST_FIRST_START_DELAY_MS": "1000"}, restarts=1),
            # TERM to every process, mpirun too; the stop takes 1.5 s more than a step (the
            # delay before the stop's checkpoint), longer than mpirun's 1-s default before SIGKILL.
            Job("requeue-srun", "srun", env={"TEST_FIRST_START_DELAY_MS": "1500"}, action=["scontrol", "requeue"],
                restarts=1, when=lambda job: len(losses(job.out)) >= 3),
            Job("requeue-mpirun", "mpirun", env={"TEST_FIRST_START_DELAY_MS": "1500"},
                action=["scontrol", "requeue"], restarts=1, when=lambda job: len(losses(job.out)) >= 3),
            Job("usr1-steps-srun", "srun", env=slow, action=["scancel", "--signal=USR1"], restarts=1),
            Job("usr1-batch-mpirun", "mpirun", env=slow, action=["scancel", "--batch", "--signal=USR1"], restarts=1),
            Job("crash-srun", "srun", env={**slow, "TEST_KILL_RANK1": "", "BT_CRASH_REQUEUES": "1"}, restarts=1),
            Job("fail", "srun", env={"TEST_FAIL": "1", "BT_CRASH_REQUEUES": "1"}, restarts=1, state="FAILED"),
            # Ranks that ignore the stop: after BT_STOP_TIMEOUT the script kills them and requeues
            # (a crash).
            Job("hang-mpirun", "mpirun", env={"TEST_HANG": "1", "BT_STOP_TIMEOUT": "5"},
                action=["scancel", "--batch", "--signal=USR1"], restarts=1,
                when=lambda job: "ignores USR1" in job.log(), first_line="test: rank 0 ignores USR1"),
        ]
        for j in jobs:
            j.submit(cluster, tmp, wrapper)
        print("submitted: " + ", ".join(f"{j.name}={j.id}" for j in jobs), flush=True)

        # The reference: one process, no Slurm, while the jobs run.
        ref_dir = os.path.join(tmp, "runs", "single")
        p = subprocess.run([BT, "train", "--config", *CONFIG, f"train.out_dir={ref_dir}"],
                           env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=300)
        if p.returncode != 0:
            raise RuntimeError(f"the one-process reference failed:\n{p.stdout[-2000:]}")
        ref = losses(ref_dir)

        final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                 "PREEMPTED"}
        while time.time() - t_start < DEADLINE_S:
            pending = 0
            for j in jobs:
                if j.final:
                    continue
                if j.action and not j.acted and j.when(j):
                    r = cluster.run(*j.action, j.id)
                    print(f"{j.name}: {' '.join(j.action)} {j.id} after {len(losses(j.out))} steps"
                          f" -> exit {r.returncode} {r.stdout.strip()}", flush=True)
                    j.acted = True
                info = cluster.job(j.id)
                if info.get("JobState") in final:
                    j.final = info
                    print(f"{j.name}: {info.get('JobState')} (restarts {info.get('Restarts')}, exit "
                          f"{info.get('ExitCode')}) at {time.time() - t_start:.0f} s", flush=True)
                else:
                    pending += 1
            if not pending:
                break
            time.sleep(1)
        elapsed = time.time() - t_start
        print(f"all jobs ended after {elapsed:.0f} s" if all(j.final for j in jobs) else
              f"jobs still running after {elapsed:.0f} s", flush=True)

        by_name = {j.name: j for j in jobs}
        for j in jobs:
            state = (j.final or cluster.job(j.id)).get("JobState")
            if not check(f"{j.name}: job ended {j.state}", state == j.state, f"it is {state}"):
                print(f"--- log of {j.name} ({j.log_path}):\n" + j.log()[-4000:])
                continue
            log = check_log(j)
            if j.state != "COMPLETED":
                continue
            got = losses(j.out)
            check(f"{j.name}: metrics hold all {STEPS} steps", sorted(got) == list(range(1, STEPS + 1)),
                  f"steps {sorted(got)[:5]}...")
            if sorted(got) != sorted(ref):
                continue
            if j.restarts == 0:
                worst = max(abs(got[s] - ref[s]) / abs(ref[s]) for s in ref)
                check(f"{j.name}: 2 ranks' losses equal one process's (worst {worst:.1e})", worst < 1e-5)
            else:
                base = by_name["mpirun" if j.launcher == "mpirun" else "srun"]
                same = losses(base.out)
                check(f"{j.name}: every loss equals the uninterrupted {base.name} job's exactly "
                      f"(final {got[STEPS]:.9f} vs {same.get(STEPS, float('nan')):.9f})",
                      all(got[s] == same.get(s) for s in got))
            stopped = re.findall(r"stop signal received at step (\d+): saving a checkpoint", log)
            resumed = re.findall(r"resumed from \S+ at step (\d+)", log)
            if j.name.startswith("hang"):
                pass
            elif j.name.startswith("crash"):
                check(f"{j.name}: the crash was requeued (crash 1 of at most 1) and resumed from a checkpoint",
                      "crash 1 of at most 1 requeued" in log and len(resumed) == 1, log[-1500:])
            elif j.restarts:
                check(f"{j.name}: saved at the step it was stopped and resumed there ({stopped} -> {resumed})",
                      len(stopped) == 1 and stopped == resumed, log[-1500:])
        for name, pattern in [("timelimit-srun", "got SIGUSR1"), ("timelimit-mpirun", "got SIGUSR1"),
                              ("requeue-srun", "got SIGTERM"), ("requeue-mpirun", "got SIGTERM"),
                              ("usr1-steps-srun", "by a signal to the ranks"), ("usr1-batch-mpirun", "got SIGUSR1"),
                              ("fail", "not requeueing (crash 2"),
                              ("hang-mpirun", "did not stop within 5s"), ("hang-mpirun", "crash 1 of at most 2 requeued")]:
            if by_name[name].final:
                check(f"{name}: the log says '{pattern}'", pattern in by_name[name].log())
        # No process of any start outlives its job (linuxproc loses the children of an exited script).
        t0 = time.time()
        while processes_naming(wrapper) and time.time() - t0 < 20:
            time.sleep(0.5)
        left = processes_naming(wrapper)
        check("no rank, launcher or wrapper outlives its job", not left,
              "\n".join(open(f"/proc/{p}/cmdline").read().replace("\0", " ")[:200] for p in left))
        check(f"the whole test within {DEADLINE_S} s ({time.time() - t_start:.0f} s)",
              time.time() - t_start < DEADLINE_S)
        if FAILURES:
            print(cluster.tail("slurmctld.log", 30) + cluster.tail("slurmd.log", 30))
    finally:
        cluster.stop()
        for pid in processes_naming(os.path.join(tmp, "bt-wrapper.sh")):  # what a failed run left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finish(tmp)


if __name__ == "__main__":
    main()

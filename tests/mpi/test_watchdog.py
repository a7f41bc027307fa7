"""The CPU MPI path's watchdog (docs/distributed.md "Failure"): with `mpirun -np 2 bt train` on the
CPU, a rank that stops without dying (SIGSTOP here; a hung file system behaves the same) must not
leave the other rank spinning in its collective forever. With BT_MPI_TIMEOUT_S=4 the running rank
ends the job: non-zero exit within a minute, with a one-line message naming itself, the collective
and the limit. A BT_MPI_TIMEOUT_S that is not a number is an error. Run by ctest with BT_BINARY
and BT_SOURCE_DIR.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BT = os.environ.get("BT_BINARY", "bt")
SRC = os.environ.get("BT_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
ENV = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1", BT_MPI_TIMEOUT_S="4")
TINY = ["model.vocab_size=128", "model.context_length=32", "model.embedder.dim=8", "model.block_decoder.dim=32",
        "model.block_decoder.heads=2", "model.block_decoder.ffn_dim=64", "model.token_decoder.dim=32",
        "model.token_decoder.heads=2", "model.token_decoder.ffn_dim=64", "train.micro_batch=2",
        "train.global_batch=4", "train.device=cpu", "train.precision=fp32", "train.log_every=1", "data.train=",
        "data.val=", "data.synthetic=repeat:37", "train.steps=1000000", "train.checkpoint_every=1000000"]


def rank_of(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for kv in f.read().split(b"\0"):
                if kv.startswith(b"OMPI_COMM_WORLD_RANK="):
                    return int(kv.split(b"=", 1)[1])
    except OSError:
        pass
    return None


def descendants(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], stdout=subprocess.PIPE, text=True).stdout.split()
    kids = [int(x) for x in out]
    return kids + [g for k in kids for g in descendants(k)]


def main():
    tmp = tempfile.mkdtemp(prefix="bt_watchdog_")
    failures = []
    p = None
    stopped = None
    try:
        out = os.path.join(tmp, "run")
        cmd = ["mpirun", "-np", "2", "--oversubscribe", BT, "train", "--config",
               f"{SRC}/configs/tiny/block_b4.yaml"] + TINY + [f"train.out_dir={out}"]
        p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
        metrics = os.path.join(out, "metrics.jsonl")
        t0 = time.time()
        while time.time() - t0 < 180 and p.poll() is None:
            if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 3:
                break
            time.sleep(0.2)
        ranks = {rank_of(q): q for q in descendants(p.pid)}
        if 1 not in ranks:
            failures.append(f"rank 1 not found among {ranks}")
            return failures
        stopped = ranks[1]
        os.kill(stopped, signal.SIGSTOP)
        t_stop = time.time()
        try:
            output, _ = p.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            failures.append("the job still runs 90 s after rank 1 stopped (rank 0 spins forever)")
            return failures
        elapsed = time.time() - t_stop
        print(f"job ended {elapsed:.1f} s after SIGSTOP of rank 1, exit code {p.returncode}")
        line = next((l for l in output.splitlines() if "did not complete within" in l), "")
        print(line)
        if p.returncode == 0:
            failures.append("exit code 0")
        if not line.startswith("error: rank 0: MPI ") or "within 4 s" not in line:
            failures.append("no one-line message from rank 0 naming the collective and the limit:\n" + output[-2000:])
        if elapsed > 60:
            failures.append(f"took {elapsed:.0f} s")
    finally:
        if stopped:
            try:
                os.kill(stopped, signal.SIGKILL)
            except OSError:
                pass
        if p and p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return failures


def bad_value():
    """A value that is not a number of seconds is an error, not a watchdog silently off."""
    env = dict(ENV, BT_MPI_TIMEOUT_S="ten")
    cmd = ["mpirun", "-np", "2", "--oversubscribe", BT, "train", "--config", f"{SRC}/configs/tiny/block_b4.yaml"] + TINY
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    line = next((l for l in r.stdout.splitlines() if "BT_MPI_TIMEOUT_S='ten'" in l), "")
    print(line)
    failures = []
    if r.returncode == 0:
        failures.append("BT_MPI_TIMEOUT_S=ten: exit code 0")
    if not line.startswith("error: ") or "expected a number of seconds" not in line:
        failures.append("BT_MPI_TIMEOUT_S=ten: no one-line error:\n" + r.stdout[-2000:])
    return failures


if __name__ == "__main__":
    f = bad_value() + main()
    if f:
        print("FAILED:", *f, sep="\n  ")
        sys.exit(1)
    print("all checks passed")

"""Data-parallel training over MPI on the CPU (docs/design.md §5, 9.4).

- `mpirun -np 2` equals one process: 10 steps of the tiny block config on the same global batch
  give the same losses (1e-5 relative) and final weights (1e-5), with and without gradient
  accumulation, with ZeRO-1 on and off.
- A checkpoint written by 2 ranks resumes on 1 rank (and the reverse) and continues with the
  losses an uninterrupted run produces.
- Ranks launched with different configs refuse to train, naming the odd rank.
- Killing one rank (SIGKILL) makes the job exit non-zero with a message within 60 s.
- On the CUDA backend with the NCCL communicator, run by bt-simt (BT_SIMT_BINARY: the SIMT
  emulator's CUDA and NCCL): 2 ranks equal 1 process (with accumulation, with ZeRO-1), and a
  rank that fails with an error (more ranks than GPUs) ends the job with its message.
Run by ctest with BT_BINARY (the bt executable), BT_SIMT_BINARY and BT_SOURCE_DIR.
"""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

BT = os.environ.get("BT_BINARY", "bt")
SIMT = os.environ.get("BT_SIMT_BINARY")
SRC = os.environ.get("BT_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
ENV = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
# warmup 50 > 10 steps: the lr depends on the step only, so a 5-step run resumed to 10 follows
# the same schedule as a straight 10-step run.
COMMON = ["--config", f"{SRC}/configs/tiny/block_b4.yaml", "model.context_length=64", "train.global_batch=8",
          "train.log_every=1", "data.train=", "data.val=", "data.synthetic=repeat:37", "train.device=cpu",
          "train.eval_every=1000"]
FAILURES = []


# A model small enough for the SIMT emulator (D = 32, V = 64, L = 32).
SMALL = ["model.vocab_size=64", "model.context_length=32", "model.embedder.dim=8", "model.block_decoder.dim=32",
         "model.block_decoder.heads=2", "model.block_decoder.ffn_dim=64", "model.token_decoder.dim=32",
         "model.token_decoder.heads=2", "model.token_decoder.ffn_dim=64", "train.device=cuda", "train.precision=fp32"]


def run(np_, out, *extra, steps=10, resume=False, binary=None, env=None):
    binary = binary or BT
    cmd = ([binary] if np_ == 1 else ["mpirun", "-np", str(np_), "--oversubscribe", binary])
    cmd += ["train"] + COMMON + [f"train.steps={steps}", f"train.checkpoint_every={steps}", f"train.out_dir={out}"]
    cmd += list(extra)
    if resume:
        cmd += ["--resume", "auto"]
    p = subprocess.run(cmd, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}")
    return p.stdout


def losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(l) for l in f if l.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def weights(out):
    path = os.path.join(out, "checkpoints", "latest", "model.safetensors")
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    return {k: np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], dtype=np.float32)
            for k, v in header.items() if k != "__metadata__"}


def check(name, cond, msg=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else ": " + msg))
    if not cond:
        FAILURES.append(name)


def compare(name, a_dir, b_dir):
    la, lb = losses(a_dir), losses(b_dir)
    check(name + ": same steps", sorted(la) == sorted(lb), f"{sorted(la)} vs {sorted(lb)}")
    worst = max(abs(la[s] - lb[s]) / abs(la[s]) for s in la if s in lb)
    check(name + f": losses within 1e-5 (worst {worst:.2e})", worst < 1e-5)
    wa, wb = weights(a_dir), weights(b_dir)
    check(name + ": same tensors", sorted(wa) == sorted(wb))
    wworst = max(float(np.max(np.abs(wa[k] - wb[k]))) for k in wa)
    check(name + f": final weights within 1e-5 (worst {wworst:.2e})", wworst < 1e-5)


def main():
    tmp = tempfile.mkdtemp(prefix="bt_mpi_")
    try:
        d = lambda n: os.path.join(tmp, n)
        # Reference: one process, micro batch 4 (two micro-batches per step).
        run(1, d("single"), "train.micro_batch=4")
        for label, np_, extra in [
            ("2 ranks", 2, ["train.micro_batch=4"]),
            ("2 ranks + accumulation", 2, ["train.micro_batch=2"]),
            ("2 ranks + ZeRO-1", 2, ["train.micro_batch=4", "train.zero=1"]),
            ("2 ranks + ZeRO-1 + accumulation", 2, ["train.micro_batch=2", "train.zero=1"]),
        ]:
            out = d(label.replace(" ", "_").replace("+", ""))
            run(np_, out, *extra)
            compare(label + " == 1 process", d("single"), out)

        # Resume across world sizes: 5 steps on 2 ranks, then 5 more on 1 rank (and the reverse).
        for label, first, second, extra in [("2 -> 1 ranks", 2, 1, []), ("1 -> 2 ranks", 1, 2, []),
                                            ("2 -> 1 ranks, ZeRO-1", 2, 1, ["train.zero=1"])]:
            out = d("resume_" + label.replace(" ", "_").replace(">", "").replace(",", ""))
            run(first, out, "train.micro_batch=4", *extra, steps=5)
            run(second, out, "train.micro_batch=4", *extra, steps=10, resume=True)
            la, ls = losses(out), losses(d("single"))
            worst = max(abs(la[s] - ls[s]) / ls[s] for s in ls)
            check(f"resume {label}: 10 steps match the straight run (worst {worst:.2e})",
                  sorted(la) == sorted(ls) and worst < 1e-5)

        # Ranks launched with different configs refuse to train, naming the odd rank.
        base = ["train"] + COMMON + ["train.steps=3", "train.micro_batch=4", f"train.out_dir={d('mismatch')}"]
        cmd = ["mpirun", "-np", "1", "--oversubscribe", BT] + base + [":", "-np", "1", BT] + base + ["train.seed=7"]
        p = subprocess.run(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
        check("config mismatch: the job fails", p.returncode != 0, p.stdout[-800:])
        check("config mismatch: the message names rank 1", "rank 1 runs a different config" in p.stdout,
              p.stdout[-800:])

        # A rank killed with SIGKILL: the job ends non-zero, with a message, within 60 s.
        out = d("kill")
        cmd = ["mpirun", "-np", "2", "--oversubscribe", BT, "train"] + COMMON + [
            "train.steps=100000", "train.micro_batch=4", "train.checkpoint_every=100000", f"train.out_dir={out}"]
        p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
        metrics = os.path.join(out, "metrics.jsonl")
        t0 = time.time()
        while time.time() - t0 < 120 and (not os.path.exists(metrics) or len(losses(out)) < 3):
            time.sleep(0.2)
        ranks = subprocess.run(["pgrep", "-f", "-P", str(p.pid), "bt"], stdout=subprocess.PIPE, text=True).stdout.split()
        check("kill: found the rank processes", len(ranks) == 2, f"pgrep gave {ranks}")
        if ranks:
            os.kill(int(ranks[-1]), signal.SIGKILL)
            t_kill = time.time()
            try:
                output, _ = p.communicate(timeout=60)
                elapsed = time.time() - t_kill
                check(f"kill: job exited non-zero ({p.returncode}) after {elapsed:.1f} s", p.returncode != 0)
                check("kill: a message names the failure", "signal 9" in output or "Killed" in output
                      or "rank" in output.lower(), output[-1500:])
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                check("kill: job exited within 60 s", False, "still running")

        if SIMT:
            simt_part(d)
        else:
            print("skip the CUDA / NCCL part: BT_SIMT_BINARY is not set")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if FAILURES:
        print("FAILED:", ", ".join(FAILURES))
        sys.exit(1)
    print("all checks passed")


def simt_part(d):
    """Data parallelism on the (emulated) CUDA backend through the NCCL communicator."""
    env = dict(ENV, BT_SIMT_DEVICES="2")
    run(1, d("simt_single"), *SMALL, "train.micro_batch=4", steps=6, binary=SIMT, env=env)
    for label, extra in [("cuda: 2 ranks", ["train.micro_batch=4"]),
                         ("cuda: 2 ranks + accumulation", ["train.micro_batch=2"]),
                         ("cuda: 2 ranks + ZeRO-1", ["train.micro_batch=4", "train.zero=1"])]:
        out = d(label.replace(" ", "_").replace("+", "").replace(":", ""))
        log = run(2, out, *SMALL, *extra, steps=6, binary=SIMT, env=env)
        check(label + ": ran on 2 x cuda", "2 x cuda" in log, log[:400])
        compare(label + " == 1 process", d("simt_single"), out)
    # More ranks than GPUs: rank 1 fails before NCCL starts; the job ends with its message.
    cmd = ["mpirun", "-np", "2", "--oversubscribe", SIMT, "train"] + COMMON + SMALL + [
        "train.steps=2", "train.micro_batch=4", f"train.out_dir={d('simt_fail')}"]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, env=dict(ENV, BT_SIMT_DEVICES="1"), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=60)
        elapsed = time.time() - t0
        check(f"rank error: the job fails ({p.returncode}) in {elapsed:.1f} s, not hangs", p.returncode != 0)
        check("rank error: the message names the rank and the cause", "local rank 1 has no GPU" in p.stdout,
              p.stdout[-800:])
    except subprocess.TimeoutExpired:
        check("rank error: the job ends within 60 s", False, "it hung")


if __name__ == "__main__":
    main()

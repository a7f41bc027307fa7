"""`bt sweep --slurm` under the one-node Slurm of test_slurm.py (docs/ablations.md, "On Slurm").

Writes the job-array script of a two-point sweep (tiny block models with L_B = 2 and 4, one of them
stopped early by train.stop_step, on synthetic tokens), submits it with sbatch, and waits for both
array tasks: each trains its point through launch/slurm.sbatch (srun, one CPU rank) and ends
COMPLETED with its checkpoint at the point's end step; then the same bt sweep without --slurm trains
nothing and writes results.csv with both points finished. Skips (77) where Slurm cannot run, or
fails when BT_REQUIRE_SLURM=1, as test_slurm.py does. Env: BT_BINARY, BT_SOURCE_DIR.
"""
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_slurm import BT, SRC, Cluster, check, finish, skip  # noqa: E402

DEADLINE_S = 150
COMMON = ["model.vocab_size=64", "model.context_length=32", "model.block_decoder.dim=32",
          "model.block_decoder.heads=2", "model.block_decoder.ffn_dim=64", "model.token_decoder.dim=32",
          "model.token_decoder.heads=2", "model.token_decoder.ffn_dim=64", "train.global_batch=4",
          "train.micro_batch=4", "train.log_every=1", "data.train=", "data.val=", "data.synthetic=repeat:37",
          "train.device=cpu", "train.steps=16", "train.checkpoint_every=4"]


def main():
    if os.geteuid() != 0:
        skip("the test starts slurmctld, slurmd and munged as root and is not root")
    for exe in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol"):
        if not shutil.which(exe):
            skip(f"{exe} is not installed")
    tmp = tempfile.mkdtemp(prefix="bt_sweep_slurm_")
    cluster = Cluster(os.path.join(tmp, "cluster"))
    os.makedirs(cluster.root)
    t_start = time.time()
    try:
        cluster.start_or_skip()
        out = os.path.join(tmp, "sweep")
        sweep = [BT, "sweep", "--config", os.path.join(SRC, "configs/tiny/block_b4.yaml"), "--grid",
                 "model.block_length,model.embedder.dim,train.stop_step=[2,16,0],[4,8,12]", "--out", out, *COMMON]
        names = ["tiny_block_b4-block_length=2-dim=16-stop_step=0", "tiny_block_b4-block_length=4-dim=8-stop_step=12"]
        ends = [16, 12]
        p = subprocess.run([*sweep, "--slurm", "--sbatch", os.path.join(SRC, "launch/slurm.sbatch")], cwd=tmp,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
        script = os.path.join(out, "sweep.sbatch")
        if not check("bt sweep --slurm writes the array script", p.returncode == 0 and os.path.exists(script), p.stdout):
            return
        env = dict(cluster.env, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        p = subprocess.run(["sbatch", "--parsable", "--ntasks=1", "--cpus-per-task=1", script], cwd=tmp, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
        if not check("sbatch accepts the array script", p.returncode == 0, p.stdout):
            return
        job = p.stdout.strip().split(";")[0]
        print(f"submitted array job {job}", flush=True)
        states = {}
        final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}
        while time.time() - t_start < DEADLINE_S:
            lines = cluster.run("scontrol", "show", "job", "-o", job).stdout.splitlines()
            states = {}
            for line in lines:
                f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
                if "ArrayTaskId" in f:
                    states[f["ArrayTaskId"]] = f.get("JobState")
            if len(states) == 2 and all(s in final for s in states.values()):
                break
            time.sleep(1)
        print(f"array tasks: {states} after {time.time() - t_start:.0f} s", flush=True)
        check("both array tasks ended COMPLETED", states == {"0": "COMPLETED", "1": "COMPLETED"}, states)
        for i, (name, end) in enumerate(zip(names, ends)):
            ck = os.path.join(out, name, "checkpoints", f"step_{end:08d}")
            check(f"array task {i} trained {name} to its end step {end}", os.path.isdir(ck),
                  os.listdir(os.path.join(out, name, "checkpoints")) if os.path.isdir(
                      os.path.join(out, name, "checkpoints")) else "no checkpoints")
            log = os.path.join(out, f"slurm-{job}_{i}.out")
            text = open(log).read() if os.path.exists(log) else ""
            check(f"array task {i} ran launch/slurm.sbatch (its log {os.path.basename(log)})",
                  f"the run is complete (step {end}/{end}" in text, text[-1500:])
        p = subprocess.run(sweep, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
        check("the same bt sweep afterwards trains nothing", p.returncode == 0 and p.stdout.count("skipped") == 2,
              p.stdout)
        rows = list(csv.DictReader(open(os.path.join(out, "results.csv")))) if os.path.exists(
            os.path.join(out, "results.csv")) else []
        check("results.csv: both points at their end step",
              [(r["point"], r["step"], r["end_step"]) for r in rows] == [(n, str(e), str(e)) for n, e in zip(names, ends)],
              rows)
    finally:
        cluster.stop()
    finish(tmp)


if __name__ == "__main__":
    main()

"""bt sweep end to end on tiny models (docs/ablations.md), on a byte-tokenized corpus made here.

- --dry-run lists the points and runs nothing; --slurm writes a job-array script that passes
  `bash -n` and hands each point to launch/slurm.sbatch (tests/slurm runs it under Slurm).
- A sweep of two points is killed (SIGKILL) while its second point trains: its bt train gets TERM
  (PR_SET_PDEATHSIG), saves a checkpoint and exits. Run again, the sweep skips the first point
  (its files untouched) and resumes the second from that checkpoint; every loss of the second point
  then equals that of the same point trained in one go, bit for bit.
- results.csv: its columns, and every value against the runs' own files: params and non-embedding
  params against the tensors of model.safetensors, tokens against trainer_state.json, the
  validation losses and the training rate against metrics.jsonl, the throughputs against
  bench.json (--bench), the task metrics against tasks.json (--tasks); results.md holds the same
  rows; --by-position writes by_position.json.
Env: BT_BINARY, BT_SOURCE_DIR.
"""
import csv
import json
import os
import re
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import check, cleanup, finish  # noqa: E402

SRC = os.path.abspath(os.environ.get("BT_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", "..")))
BT = os.path.abspath(os.environ.get("BT_BINARY", os.path.join(SRC, "build", "release", "bt")))
STEPS = 24


def bt(*args, env=None, check_rc=True):
    p = subprocess.run([BT, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
                       env=env)
    if check_rc and p.returncode != 0:
        raise AssertionError(f"bt {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}")
    return p.stdout


def metrics(run):
    rows = []
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            rows.append(json.loads(line))
    return rows


def losses(run):
    return {r["step"]: r["loss"] for r in metrics(run) if "loss" in r}


def safetensors_params(path):
    """name -> element count, from the safetensors header."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    out = {}
    for name, t in header.items():
        if name != "__metadata__":
            c = 1
            for s in t["shape"]:
                c *= s
            out[name] = c
    return out


def processes_naming(text):
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        pids.append(int(d))
            except OSError:
                pass
    return pids


def main():
    tmp = tempfile.mkdtemp(prefix="bt_sweep_")
    try:
        run_tests(tmp)
    except Exception as e:  # a command that failed: keep the directory for a look
        check(f"the test ran to its end ({type(e).__name__})", False, e)
    finally:
        for pid in processes_naming(tmp):  # what a failed check left running
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        cleanup(tmp)
    finish()


def run_tests(tmp):
    # A corpus of 80 short documents, byte tokenizer, a fifth held out.
    with open(os.path.join(tmp, "corpus.txt"), "w") as f:
        for d in range(80):
            f.write(f"document {d}: the quick brown fox jumps over the lazy dog number {d * 7 % 13}\n\n")
    data = os.path.join(tmp, "data")
    bt("prepare", "--input", os.path.join(tmp, "corpus.txt"), "--tokenizer", "byte", "--val-fraction", "0.2",
       "--no-progress", "--out", data)
    out = os.path.join(tmp, "sweep")
    common = ["model.vocab_size=257", "model.context_length=32", "model.block_decoder.layers=1",
              "model.block_decoder.dim=32", "model.block_decoder.heads=2", "model.block_decoder.ffn_dim=64",
              "model.token_decoder.layers=1", "model.token_decoder.dim=32", "model.token_decoder.heads=2",
              "model.token_decoder.ffn_dim=64", f"data.train={data}/train-*.h5", f"data.val={data}/val-*.h5",
              "train.micro_batch=4", "train.global_batch=4", f"train.steps={STEPS}", "train.checkpoint_every=4",
              "train.eval_every=8", "train.eval_batches=2", "train.log_every=1", "train.device=cpu",
              "optim.warmup_steps=4"]
    grid = ["--grid", "model.block_length,model.embedder.dim=[2,16],[4,8]"]
    sweep = ["sweep", "--config", os.path.join(SRC, "configs/tiny/block_b4.yaml"), *grid, "--out", out, *common]
    names = ["tiny_block_b4-block_length=2-dim=16", "tiny_block_b4-block_length=4-dim=8"]
    env = dict(os.environ, OMP_NUM_THREADS="1")

    # --dry-run: the points, nothing made.
    dry = bt(*sweep, "--dry-run", env=env)
    check("--dry-run lists both points as new", all(f"{n}: model.block_length=" in dry for n in names) and
          dry.count(f"(new, {STEPS} steps)") == 2, dry)
    check("--dry-run shows each point's bt train command", dry.count("bt train --config ") == 2 and
          "--resume auto" in dry, dry)
    check("--dry-run makes nothing", not os.path.exists(out))

    # --slurm: the array script.
    script_out = bt(*sweep, "--slurm", "--sbatch", os.path.join(SRC, "launch/slurm.sbatch"), env=env)
    script = os.path.join(out, "sweep.sbatch")
    check("--slurm writes OUT/sweep.sbatch", os.path.exists(script), script_out)
    text = open(script).read()
    p = subprocess.run(["bash", "-n", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    check("the array script passes bash -n", p.returncode == 0, p.stdout)
    check("the array script covers both points (array 0-1)", "#SBATCH --array=0-1" in text and
          all(n in text for n in names), text[:800])
    check("each array task runs launch/slurm.sbatch with its point's overrides",
          "exec bash " + os.path.join(SRC, "launch/slurm.sbatch") in text and
          f"train.out_dir={out}/{names[1]}" in text and "model.block_length=4" in text, text)
    check("--slurm trains nothing (it only claims the point directories)",
          all(os.path.exists(os.path.join(out, n, "point.json")) and
              not os.path.exists(os.path.join(out, n, "checkpoints")) for n in names))

    # A straight run of the second point, for comparison.
    ref = os.path.join(tmp, "ref")
    bt("train", "--config", os.path.join(SRC, "configs/tiny/block_b4.yaml"), *common, "model.block_length=4",
       "model.embedder.dim=8", f"name={names[1]}", f"train.out_dir={ref}", env=env)
    ref_losses = losses(ref)

    # The sweep, slowed (every step 150 ms) and killed while the second point trains.
    slow = dict(env, BT_STEP_DELAY_MS="150")
    proc = subprocess.Popen([BT, *sweep], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=slow)
    second = os.path.join(out, names[1])
    t0 = time.time()
    while time.time() - t0 < 120 and proc.poll() is None:
        try:
            if len(losses(second)) >= 9:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    check("the sweep reached the second point", proc.poll() is None and len(losses(second)) >= 9)
    first_files = {f: open(os.path.join(out, names[0], f), "rb").read() for f in ("metrics.jsonl", "train.log")}
    proc.kill()  # SIGKILL: no chance to clean up; its bt train child gets TERM from the kernel
    proc.wait()
    t0 = time.time()
    while processes_naming(second) and time.time() - t0 < 30:
        time.sleep(0.1)
    check("the killed sweep's bt train exited", not processes_naming(second))
    log = open(os.path.join(second, "train.log")).read()
    stopped = [int(x) for x in re.findall(r"stop signal received at step (\d+): saving", log)]
    check("the second point saved a checkpoint when the sweep died", len(stopped) == 1 and
          os.path.isdir(os.path.join(second, "checkpoints", f"step_{stopped[0]:08d}")), log[-1500:])
    k = stopped[0] if stopped else -1
    check("it stopped mid-run", 0 < k < STEPS, k)
    dry = bt(*sweep, "--dry-run", env=env)
    check("--dry-run after the kill: the first point done, the second to resume",
          f"{names[0]}: model.block_length=2 model.embedder.dim=16 (done)" in dry and
          f"(resume at step {k} of {STEPS})" in dry, dry)

    # Run again: the first point is skipped, the second resumes; then the bench, tasks, by-position.
    tasks = os.path.join(SRC, "tests", "tasks")
    again = bt(*sweep, "--bench", "--bench-batch", "2", "--tasks", "piqa", "--task-data", tasks, "--task-limit", "2",
               "--by-position", "8", env=env)
    check("the rerun skips the finished point", f"[1/2] {names[0]}: done (step {STEPS}), skipped" in again, again)
    check("the rerun resumes the unfinished one", f"[2/2] {names[1]}: resuming at step {k} of {STEPS}" in again, again)
    check("the finished point's files are untouched",
          all(open(os.path.join(out, names[0], f), "rb").read() == b for f, b in first_files.items()))
    log = open(os.path.join(second, "train.log")).read()
    check("bt train resumed from the checkpoint of the kill", f"at step {k}" in log and "resumed from" in log,
          log[-800:])
    got = losses(second)
    check(f"the resumed point's {STEPS} losses equal the straight run's bit for bit",
          sorted(got) == list(range(1, STEPS + 1)) and all(got[s] == ref_losses[s] for s in ref_losses),
          {s: (got.get(s), ref_losses[s]) for s in ref_losses if got.get(s) != ref_losses[s]})

    # results.csv against the runs' own files.
    with open(os.path.join(out, "results.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    cols = list(rows[0].keys()) if rows else []
    want_cols = ["point", "config", "model.block_length", "model.embedder.dim", "kind", "block_length", "params",
                 "non_embedding_params", "step", "end_step", "tokens", "val_loss", "val_loss_pos1", "val_loss_pos2",
                 "val_loss_pos3", "val_loss_pos4", "train_tokens_per_s", "prefill-heavy_tokens_per_s",
                 "decode-heavy_tokens_per_s", "bench_batch", "piqa/acc", "piqa/acc_norm"]
    check("results.csv has the columns", cols == want_cols, cols)
    check("results.csv has one row per point, in order", [r["point"] for r in rows] == names)
    for r in rows:
        run = os.path.join(out, r["point"])
        ck = os.path.join(run, "checkpoints", f"step_{STEPS:08d}")
        sizes = safetensors_params(os.path.join(ck, "model.safetensors"))
        embedding = sum(c for n, c in sizes.items() if "embed_in" in n or "embed_out" in n or
                        n.startswith("embedder.") or "expansion_layer" in n)
        state = json.load(open(os.path.join(ck, "trainer_state.json")))
        m = metrics(run)
        val = [x for x in m if "val_loss" in x][-1]
        rates = [x["tokens_per_s"] for x in m if "tokens_per_s" in x and x["step"] != 1]
        bench = json.load(open(os.path.join(run, "bench.json")))["rows"]
        task = json.load(open(os.path.join(run, "tasks.json")))["results"]["piqa"]
        lb = int(r["model.block_length"])
        checks = {
            "params": int(r["params"]) == sum(sizes.values()),
            "non_embedding_params": int(r["non_embedding_params"]) == sum(sizes.values()) - embedding,
            "step": int(r["step"]) == STEPS and int(r["end_step"]) == STEPS,
            "tokens": int(r["tokens"]) == state["tokens_seen"] == STEPS * 4 * 32,
            "val_loss": abs(float(r["val_loss"]) - val["val_loss"]) < 1e-6 and val["step"] == STEPS,
            "val_loss_pos": all(abs(float(r[f"val_loss_pos{i + 1}"]) - val["val_loss_by_position"][i]) < 1e-6
                                for i in range(lb)) and all(r[f"val_loss_pos{i + 1}"] == "" for i in range(lb, 4)),
            "train_tokens_per_s": abs(float(r["train_tokens_per_s"]) - statistics.median(rates)) < 0.06,
            "bench": all(abs(float(r[f"{b['setting']}_tokens_per_s"]) - b["tokens_per_s"]) < 0.06 for b in bench) and
            r["bench_batch"] == "2",
            "tasks": abs(float(r["piqa/acc"]) - task["acc,none"]) < 1e-6,
            "settings": r["kind"] == "block" and r["block_length"] == str(lb),
        }
        for what, ok in checks.items():
            check(f"results.csv {r['point']}: {what} equals the run's own files", ok, r)
        pos = json.load(open(os.path.join(run, "by_position.json")))
        check(f"{r['point']}: by_position.json of the last checkpoint, buckets of 8",
              pos["bucket"] == 8 and pos["checkpoint"].endswith(f"step_{STEPS:08d}") and len(pos["buckets"]) >= 3, pos)
    md = open(os.path.join(out, "results.md")).read()
    check("results.md holds the same rows", all(f"| {r['point']} |" in md and r["val_loss"] in md for r in rows))

    # A third run does nothing but the table; a point directory of another point is refused.
    third = bt(*sweep, env=env)
    check("a finished sweep trains nothing again", third.count("skipped") == 2 and "bench in" not in third, third)
    bad = bt("sweep", "--config", os.path.join(SRC, "configs/tiny/block_b4.yaml"), "--grid",
             "model.block_length,model.embedder.dim=[x,16]", "--out", out, *common, check_rc=False)
    check("a bad grid value fails naming it", "model.block_length: expected an integer, got 'x'" in bad, bad)
    bad = bt("sweep", "--config", os.path.join(SRC, "configs/tiny/block_b4.yaml"), "--grid",
             "model.block_length,model.embedder.dim=[2,16,3]", "--out", out, *common, check_rc=False)
    check("a linked value of the wrong size fails", "has 3 entries for 2 linked keys" in bad, bad)


if __name__ == "__main__":
    main()

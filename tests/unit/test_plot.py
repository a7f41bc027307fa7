"""launch/plot.py on a fixture sweep directory (written here in the layout bt sweep leaves): it writes
pareto.png, curves.png and by_position.png as real, non-empty PNG images of a readable size; without
throughput or positions it skips those plots and still draws the curves; without results.csv it
fails with one line. Skipped (77) when matplotlib is missing. Env: BT_SOURCE_DIR.
"""
import csv
import json
import os
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import check, cleanup, finish  # noqa: E402

SRC = os.path.abspath(os.environ.get("BT_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", "..")))
PLOT = os.path.join(SRC, "launch", "plot.py")

def png_size(path):
    """(width, height) from the IHDR chunk, or None when the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def fixture(d, bench=True, positions=True):
    """Three points: block L_B = 2 and 4, and the vanilla baseline."""
    points = [("tiny_block_b4-block_length=2-dim=128", "block", 2, [("model.block_length", "2"),
                                                                  ("model.embedder.dim", "128")], 3.90, 900.0),
              ("tiny_block_b4-block_length=4-dim=64", "block", 4, [("model.block_length", "4"),
                                                                 ("model.embedder.dim", "64")], 4.05, 1500.0),
              ("tiny_vanilla", "vanilla", 0, [], 3.80, 700.0)]
    cols = ["point", "config", "model.block_length", "model.embedder.dim", "kind", "block_length", "val_loss",
            "val_loss_pos1", "val_loss_pos2", "val_loss_pos3", "val_loss_pos4", "train_tokens_per_s"]
    if bench:
        cols += ["prefill-heavy_tokens_per_s", "decode-heavy_tokens_per_s", "bench_batch"]
    rows = []
    for name, kind, lb, settings, loss, decode in points:
        p = os.path.join(d, name)
        os.makedirs(p)
        json.dump({"name": name, "settings": settings}, open(os.path.join(p, "point.json"), "w"))
        with open(os.path.join(p, "config.yaml"), "w") as f:
            f.write("model:\n  context_length: 256\ntrain:\n  global_batch: 16\n")
        with open(os.path.join(p, "metrics.jsonl"), "w") as f:
            for s in (100, 200, 300):
                f.write(json.dumps({"step": s, "loss": loss + 1.5 - s / 300, "tokens_per_s": 5000.0}) + "\n")
                by = [loss + 0.3 - 0.1 * i for i in range(lb)] if kind == "block" else [loss]
                f.write(json.dumps({"step": s, "val_loss": loss + 1 - s / 300, "val_loss_by_position": by}) + "\n")
        if positions:
            buckets = [{"start": s, "end": s + 32, "loss": loss + 1.0 / (1 + s / 32), "targets": 100}
                       for s in range(0, 256, 32)]
            json.dump({"bucket": 32, "context_length": 256, "buckets": buckets}, open(os.path.join(p, "by_position.json"), "w"))
        r = {"point": name, "config": "configs/tiny/x.yaml", "model.block_length": str(lb) if lb else "",
             "model.embedder.dim": dict(settings).get("model.embedder.dim", ""), "kind": kind,
             "block_length": str(lb) if lb else "", "val_loss": f"{loss:.6f}", "train_tokens_per_s": "5000.0"}
        for i in range(4):
            r[f"val_loss_pos{i + 1}"] = f"{loss + 0.3 - 0.1 * i:.6f}" if i < lb else ""
        if bench:
            r.update({"prefill-heavy_tokens_per_s": f"{decode * 2:.1f}", "decode-heavy_tokens_per_s": f"{decode:.1f}",
                      "bench_batch": "16"})
        rows.append(r)
    with open(os.path.join(d, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def plot(*args):
    return subprocess.run([sys.executable, PLOT, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=120)


def main():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("SKIP: matplotlib is not installed (launch/install-deps.sh installs python3-matplotlib)")
        sys.exit(77)
    tmp = tempfile.mkdtemp(prefix="bt_plot_")
    try:
        full = os.path.join(tmp, "full")
        os.makedirs(full)
        fixture(full)
        out = os.path.join(tmp, "img")
        p = plot(full, "--out", out, "--title", "fixture")
        check("plot.py runs", p.returncode == 0, p.stdout)
        for name in ("pareto.png", "curves.png", "by_position.png"):
            path = os.path.join(out, name)
            size = png_size(path) if os.path.exists(path) else None
            check(f"{name} is a PNG", size is not None, p.stdout)
            if size:
                check(f"{name} is non-empty and readable at 100% ({size[0]} x {size[1]} px, "
                      f"{os.path.getsize(path)} bytes)", size[0] >= 700 and size[1] >= 450 and
                      os.path.getsize(path) > 10000)
        # Without throughput or positions: the curves only.
        bare = os.path.join(tmp, "bare")
        os.makedirs(bare)
        fixture(bare, bench=False, positions=False)
        p = plot(bare)
        check("without --bench data: pareto.png skipped, said so", p.returncode == 0 and "pareto.png skipped" in p.stdout
              and not os.path.exists(os.path.join(bare, "pareto.png")), p.stdout)
        check("without --bench data: curves.png still written", png_size(os.path.join(bare, "curves.png")) is not None)
        check("block models' in-block losses alone give by_position.png",
              png_size(os.path.join(bare, "by_position.png")) is not None, p.stdout)
        p = plot(os.path.join(tmp, "nothing"))
        check("no results.csv: one line naming it", p.returncode != 0 and "results.csv not found" in p.stdout and
              p.stdout.strip().count("\n") == 0, p.stdout)
    finally:
        cleanup(tmp)
    finish()


if __name__ == "__main__":
    main()

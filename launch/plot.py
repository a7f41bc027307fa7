#!/usr/bin/env python3
"""Plots of a `bt sweep` directory (docs/ablations.md), with matplotlib (Debian's python3-matplotlib).

    launch/plot.py DIR [--out OUTDIR] [--title TEXT]

Reads DIR/results.csv and each point's files (DIR/<point>/config.yaml, metrics.jsonl,
by_position.json) and writes into OUTDIR (default DIR):
  pareto.png       validation loss against generation throughput, one labelled point per run, a panel
                   per inference setting measured (prefill-heavy, decode-heavy; bt sweep --bench), like
                   the paper's Figure 1
  curves.png       validation loss against training tokens, one line per run
  by_position.png  when present: the loss per absolute position (bt sweep --by-position) and the loss
                   per position in the block (block models' validation)
Labels use the paper's notation: L_B (model.block_length), R (model.token_decoder.prefix_length),
D_emb (model.embedder.dim); other settings by their last key part.
"""
import argparse
import csv
import json
import os
import sys

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("plot.py needs matplotlib: apt-get install python3-matplotlib (launch/install-deps.sh installs it)")
try:
    import yaml
except ImportError:
    yaml = None

ABBREV = {"model.block_length": "L_B", "model.token_decoder.prefix_length": "R", "model.embedder.dim": "D_emb",
          "model.kind": "kind"}
FONT = 12  # readable at 100 %: 12-point text on figures about 1200 px wide


def read_results(d):
    path = os.path.join(d, "results.csv")
    if not os.path.exists(path):
        sys.exit(f"plot.py: {path} not found: run bt sweep ... --out {d} first (or bt sweep --report)")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def number(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def settings_of(d, row):
    """The point's settings (key, value) from its point.json, in order."""
    try:
        with open(os.path.join(d, row["point"], "point.json")) as f:
            return [tuple(kv) for kv in json.load(f).get("settings", [])]
    except (OSError, ValueError):
        return []


def label_of(d, row):
    """'vanilla', 'L_B=4 R=2', ...: the model kind and the point's settings in the paper's notation."""
    parts = []
    for k, v in settings_of(d, row):
        if k == "model.embedder.dim":  # follows from L_B in a block-length ablation
            continue
        parts.append(f"{ABBREV.get(k, k.split('.')[-1])}={v}")
    if row.get("kind") == "vanilla":
        return "vanilla" + (" " + " ".join(parts) if parts else "")
    if row.get("block_length") and not any(p.startswith("L_B=") for p in parts):
        parts.insert(0, f"L_B={row['block_length']}")
    return " ".join(parts) or row["point"]


def tokens_per_step(d, point):
    """global_batch x context_length from the point's resolved config.yaml (None when unreadable)."""
    path = os.path.join(d, point, "config.yaml")
    if yaml is None or not os.path.exists(path):
        return None
    with open(path) as f:
        c = yaml.safe_load(f)
    return c["train"]["global_batch"] * c["model"]["context_length"]


def val_curve(d, point):
    """[(step, val_loss)] from metrics.jsonl, the last value of a step that ran twice."""
    vals = {}
    try:
        with open(os.path.join(d, point, "metrics.jsonl")) as f:
            for line in f:
                try:
                    j = json.loads(line)
                except ValueError:
                    continue
                if "val_loss" in j:
                    vals[j["step"]] = j["val_loss"]
    except OSError:
        pass
    return sorted(vals.items())


def finish_axes(ax, xlabel, title, legend=False):
    """Labels with units, the loss axis, a light grid, readable ticks (and the legend)."""
    ax.set_xlabel(xlabel, fontsize=FONT)
    ax.set_ylabel("validation loss (nats/token)", fontsize=FONT)
    ax.set_title(title, fontsize=FONT)
    ax.tick_params(labelsize=FONT - 1)
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize=FONT - 2)


def save(fig, out, name, title=""):
    if title:
        fig.suptitle(title, fontsize=FONT + 1)
    fig.tight_layout()
    path = os.path.join(out, name)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def style(row, i):
    block = row.get("kind") != "vanilla"
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return dict(color=colors[i % len(colors)] if block else "black", marker="o" if block else "s")


def pareto(d, rows, out, title):
    settings = [(s, f"{s}_tokens_per_s") for s in ("prefill-heavy", "decode-heavy")
                if any(number(r.get(f"{s}_tokens_per_s")) for r in rows)]
    pts = [r for r in rows if number(r.get("val_loss")) is not None]
    if not settings or not pts:
        print("plot.py: no throughput (bt sweep --bench) or no validation loss: pareto.png skipped")
        return None
    fig, axes = plt.subplots(1, len(settings), figsize=(6.5 * len(settings), 5.2), squeeze=False)
    for ax, (name, col) in zip(axes[0], settings):
        xs = []
        for i, r in enumerate(rows):
            x, y = number(r.get(col)), number(r.get("val_loss"))
            if x is None or y is None:
                continue
            xs.append(x)
            st = style(r, i)
            ax.scatter([x], [y], s=60, color=st["color"], marker=st["marker"], zorder=3)
            ax.annotate(label_of(d, r), (x, y), textcoords="offset points", xytext=(6, 5), fontsize=FONT - 1)
        if xs and max(xs) / max(min(xs), 1e-9) > 8:
            ax.set_xscale("log")
        batch = next((r.get("bench_batch") for r in rows if r.get("bench_batch")), "?")
        finish_axes(ax, f"{name} throughput (tokens/s, batch {batch})", f"{name}: lower right is better")
        ax.margins(x=0.15, y=0.12)
    return save(fig, out, "pareto.png", title)


def curves(d, rows, out, title):
    fig, ax = plt.subplots(figsize=(8, 5.2))
    drawn = 0
    for i, r in enumerate(rows):
        curve = val_curve(d, r["point"])
        tps = tokens_per_step(d, r["point"])
        if not curve:
            continue
        xs = [s * tps for s, _ in curve] if tps else [s for s, _ in curve]
        st = style(r, i)
        ax.plot(xs, [v for _, v in curve], color=st["color"], marker=st["marker"], markersize=5,
                label=label_of(d, r), linestyle="--" if r.get("kind") == "vanilla" else "-")
        drawn += 1
    if not drawn:
        plt.close(fig)
        print("plot.py: no validation losses in the points' metrics.jsonl: curves.png skipped")
        return None
    finish_axes(ax, "training tokens" if yaml else "training steps", title or "validation loss during training",
                legend=True)
    return save(fig, out, "curves.png")


def by_position(d, rows, out, title):
    absolute = []
    for i, r in enumerate(rows):
        try:
            with open(os.path.join(d, r["point"], "by_position.json")) as f:
                absolute.append((i, r, json.load(f)))
        except (OSError, ValueError):
            pass
    in_block = []
    for i, r in enumerate(rows):
        ys = [number(r.get(f"val_loss_pos{k}")) for k in range(1, 65)]
        ys = [y for y in ys if y is not None]
        if len(ys) > 1:
            in_block.append((i, r, ys))
    panels = [p for p in (absolute, in_block) if p]
    if not panels:
        print("plot.py: no loss by position (bt sweep --by-position, or block models' validation): "
              "by_position.png skipped")
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.2), squeeze=False)
    k = 0
    if absolute:
        ax = axes[0][k]
        k += 1
        for i, r, j in absolute:
            st = style(r, i)
            xs = [(b["start"] + b["end"] - 1) / 2 for b in j["buckets"]]
            ax.plot(xs, [b["loss"] for b in j["buckets"]], color=st["color"], marker=st["marker"], markersize=4,
                    label=label_of(d, r), linestyle="--" if r.get("kind") == "vanilla" else "-")
        finish_axes(ax, f"position in the window (tokens, buckets of {absolute[0][2]['bucket']})",
                    "loss by absolute position", legend=True)
    if in_block:
        ax = axes[0][k]
        for i, r, ys in in_block:
            st = style(r, i)
            ax.plot(range(1, len(ys) + 1), ys, color=st["color"], marker=st["marker"], markersize=5,
                    label=label_of(d, r))
        finish_axes(ax, "position in the block (1 = first token of a block)", "loss by position in the block",
                    legend=True)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return save(fig, out, "by_position.png", title)


def main():
    ap = argparse.ArgumentParser(description="plots of a bt sweep directory (pareto.png, curves.png, by_position.png)")
    ap.add_argument("dir", help="the sweep directory (bt sweep --out DIR)")
    ap.add_argument("--out", help="where to write the PNGs (default: DIR)")
    ap.add_argument("--title", default="", help="a title over the figures")
    a = ap.parse_args()
    rows = read_results(a.dir)
    if not rows:
        sys.exit(f"plot.py: {a.dir}/results.csv has no points")
    out = a.out or a.dir
    os.makedirs(out, exist_ok=True)
    plt.rcParams.update({"font.size": FONT})
    for path in (pareto(a.dir, rows, out, a.title), curves(a.dir, rows, out, a.title),
                 by_position(a.dir, rows, out, a.title)):
        if path:
            print(f"plot.py: wrote {path}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Encoding speed of the hf: tokenizer (`bt tokenize --bench`) next to the Python `tokenizers`
package on the same text and tokenizer.json, for docs/benchmarks.md. Also checks that both give
the same number of tokens.

usage: bench/tokenizer_vs_hf.py TOKENIZER.json TEXT_FILE [BT_BINARY]   (run with build/venv/bin/python3)"""
import os
os.environ.setdefault("RAYON_NUM_THREADS", "2")
import subprocess
import sys
import time

from tokenizers import Tokenizer


def best_of(n, f):
    """(best wall seconds, best process CPU seconds, result)."""
    best, best_cpu, out = 1e9, 1e9, None
    for _ in range(n):
        t, c = time.perf_counter(), time.process_time()
        out = f()
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best, best_cpu, out


def main():
    tok_path, text_path = sys.argv[1], sys.argv[2]
    bt = sys.argv[3] if len(sys.argv) > 3 else os.path.join(os.path.dirname(__file__), "..", "build", "release", "bt")
    with open(text_path, "rb") as f:
        data = f.read()
    text = data.decode("utf-8", "replace")
    lines = text.splitlines(keepends=True)
    ref = Tokenizer.from_file(tok_path)
    t1, c1, ids = best_of(3, lambda: ref.encode(text).ids)
    t2, c2, batch = best_of(3, lambda: ref.encode_batch(lines))
    n_batch = sum(len(e.ids) for e in batch)
    print(f"text: {len(data) / 1e6:.1f} MB, {len(lines)} lines")
    print(f"tokenizers {getattr(__import__('tokenizers'), '__version__', '?')} encode(whole text), 1 thread: "
          f"{len(ids)} tokens in {t1:.3f} s = {len(ids) / t1 / 1e6:.2f} M tokens/s; "
          f"{len(ids) / c1 / 1e6:.2f} M tokens per CPU second")
    print(f"tokenizers encode_batch(lines), its thread pool: {n_batch} tokens in {t2:.3f} s = "
          f"{n_batch / t2 / 1e6:.2f} M tokens/s; {n_batch / c2 / 1e6:.2f} M tokens per CPU second")
    for threads in (1, 2):
        best = None
        for _ in range(3):
            r = subprocess.run([bt, "tokenize", "--tokenizer", "hf:" + tok_path, "--input", text_path, "--bench",
                                "--threads", str(threads)], capture_output=True, check=True)
            line = r.stdout.decode().strip()
            rate = float(line.split(" M tokens per CPU second")[0].split()[-1])
            n = int(line.split(" tokens in ")[0].split()[-1])
            if best is None or rate > best[0]:
                best = (rate, n, line)
        print("bt tokenize --bench:", best[2])
        if threads == 1 and best[1] != len(ids):
            print(f"TOKEN COUNTS DIFFER: bt {best[1]}, tokenizers {len(ids)}")


if __name__ == "__main__":
    main()

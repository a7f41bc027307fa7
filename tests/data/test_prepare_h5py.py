#!/usr/bin/env python3
"""`bt prepare` end to end, checked by independent readers: h5py reads the shards and must find
exactly the byte tokenizer's output (list(doc.encode()) + [256] per document) and the format
attributes; h5dump -H must read them; manifest checksums must match the files.
Env: BT_BINARY = path of the `bt` executable."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import h5py
import numpy as np

BT = os.environ.get("BT_BINARY", "")

TEXT = (
    "\n\nIn the beginning was the word.\nAnd the word was short.\n\n\n"
    "Caf\u00e9 \u20ac100 \u2014 UTF-8 text,\twith a tab.\r\n"
    "   \n"
    "  indented\n  lines\n\n"
    "last"
)


def split_blank(text):
    """Documents as `--doc-split blank` defines them: groups of non-blank lines."""
    docs, cur = [], []
    for line in text.split("\n"):
        if line.endswith("\r"):
            line = line[:-1]
        if line.strip(" \t\r\f\v") == "":
            if cur:
                docs.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    if cur:
        docs.append("\n".join(cur))
    return docs


def byte_stream(docs):
    out, offsets = [], []
    for d in docs:
        offsets.append(len(out))
        out += list(d.encode("utf-8")) + [256]
    return out, offsets


def run_bt(*args, stdin=None):
    return subprocess.run([BT, *args], input=stdin, capture_output=True, timeout=120)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_docs(paths):
    docs = []
    for p in paths:
        with h5py.File(p, "r") as f:
            toks = f["tokens"][:].tolist()
            offs = f["doc_offsets"][:].tolist() + [len(toks)]
            for a, b in zip(offs[:-1], offs[1:]):
                assert toks[b - 1] == 256
                docs.append(bytes(toks[a : b - 1]).decode("utf-8"))
    return docs


class PrepareH5py(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="bt_test_prepare_")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, *p):
        return os.path.join(self.tmp, *p)

    def test_byte_round_trip(self):
        with open(self.path("in.txt"), "w", encoding="utf-8", newline="") as f:
            f.write(TEXT)
        r = run_bt("prepare", "--input", self.path("in.txt"), "--out", self.path("out"),
                   "--val-fraction", "0", "--no-progress")
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        docs = split_blank(TEXT)
        self.assertEqual(len(docs), 4)
        want, offsets = byte_stream(docs)
        shard = self.path("out", "train-00000.h5")
        with h5py.File(shard, "r") as f:
            self.assertEqual(f["tokens"].dtype, np.uint16)
            self.assertEqual(f["tokens"].ndim, 1)
            self.assertIsNotNone(f["tokens"].chunks)
            self.assertEqual(f["tokens"][:].tolist(), want)
            self.assertEqual(f["doc_offsets"].dtype, np.uint64)
            self.assertEqual(f["doc_offsets"][:].tolist(), offsets)
            a = f.attrs
            self.assertEqual(a["format"], "bt-tokens")
            self.assertEqual(int(a["version"]), 1)
            self.assertEqual(int(a["vocab_size"]), 257)
            self.assertEqual(int(a["eos_id"]), 256)
            self.assertEqual(a["tokenizer"], "byte")
        self.assertFalse(os.path.exists(self.path("out", "val-00000.h5")))
        with open(self.path("out", "manifest.json")) as f:
            m = json.load(f)
        self.assertEqual(m["tokenizer"], "byte")
        self.assertEqual(m["vocab_size"], 257)
        self.assertEqual(m["eos_id"], 256)
        self.assertEqual(len(m["shards"]), 1)
        s = m["shards"][0]
        self.assertEqual(s["file"], "train-00000.h5")
        self.assertEqual(s["tokens"], len(want))
        self.assertEqual(s["documents"], len(docs))
        self.assertEqual(s["sha256"], sha256(shard))
        with open(self.path("out", "tokenizer.json")) as f:
            self.assertEqual(json.load(f)["kind"], "byte")
        self.assertEqual([n for n in os.listdir(self.path("out")) if n.endswith(".tmp")], [])

        h = subprocess.run(["h5dump", "-H", shard], capture_output=True, timeout=60)
        self.assertEqual(h.returncode, 0, h.stderr.decode())
        header = h.stdout.decode()
        for name in ("tokens", "doc_offsets", "format", "vocab_size", "eos_id", "tokenizer", "H5T_STD_U16LE"):
            self.assertIn(name, header)

    def test_splits_shards_and_stdin_jsonl(self):
        words = ["alpha", "beta", "gamma", "delta", "\u00e9t\u00e9", "x"]
        docs = [" ".join(words[(i * 7 + k) % len(words)] for k in range(1 + i % 9)) + f" {i}" for i in range(200)]
        jsonl = "".join(json.dumps({"text": d, "meta": i}) + "\n" for i, d in enumerate(docs))
        r = run_bt("prepare", "--input", "-", "--format", "jsonl", "--out", self.path("j"),
                   "--val-fraction", "0.25", "--shard-tokens", "500", "--seed", "3", "--no-progress",
                   stdin=jsonl.encode())
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        with open(self.path("j", "manifest.json")) as f:
            m = json.load(f)
        train = [self.path("j", s["file"]) for s in m["shards"] if s["split"] == "train"]
        val = [self.path("j", s["file"]) for s in m["shards"] if s["split"] == "val"]
        self.assertGreater(len(train), 2)
        self.assertGreaterEqual(len(val), 1)
        self.assertEqual(sorted(train), sorted(self.path("j", n) for n in os.listdir(self.path("j"))
                                              if n.startswith("train-")))
        got_train, got_val = read_docs(sorted(train)), read_docs(sorted(val))
        self.assertEqual(sorted(got_train + got_val), sorted(docs))
        self.assertTrue(20 <= len(got_val) <= 80, len(got_val))
        # Each split keeps input order.
        pos = {d: i for i, d in enumerate(docs)}
        self.assertEqual([pos[d] for d in got_train], sorted(pos[d] for d in got_train))
        for s in m["shards"]:
            self.assertEqual(s["sha256"], sha256(self.path("j", s["file"])))
            self.assertLessEqual(s["tokens"], 1000)

    def test_trained_spm_shards(self):
        lines = []
        for i in range(3000):
            lines.append(" ".join(["the", "king", "said", "unto", "them", "and", "the", "people"][: 3 + i % 6]) + f" {i % 17}.")
            if i % 5 == 4:
                lines.append("")
        with open(self.path("c.txt"), "w") as f:
            f.write("\n".join(lines))
        r = run_bt("prepare", "--input", self.path("c.txt"), "--tokenizer", "train-spm:320",
                   "--out", self.path("s"), "--no-progress")
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        with open(self.path("s", "manifest.json")) as f:
            m = json.load(f)
        self.assertEqual(m["tokenizer"], "spm:" + sha256(self.path("s", "tokenizer.model")))
        with h5py.File(self.path("s", "train-00000.h5"), "r") as f:
            self.assertEqual(f.attrs["tokenizer"], m["tokenizer"])
            vocab, eos = int(f.attrs["vocab_size"]), int(f.attrs["eos_id"])
            toks = f["tokens"][:]
            self.assertLessEqual(vocab, 320)
            self.assertLess(int(toks.max()), vocab)
            self.assertEqual(int(toks[-1]), eos)
            self.assertEqual(int((toks == eos).sum()), f["doc_offsets"].shape[0])

    def test_errors_are_one_line(self):
        r = run_bt("prepare", "--input", self.path("missing.txt"), "--out", self.path("o"))
        self.assertNotEqual(r.returncode, 0)
        err = r.stderr.decode().strip()
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn("missing.txt", err)
        with open(self.path("empty.txt"), "w") as f:
            f.write("\n  \n")
        r = run_bt("prepare", "--input", self.path("empty.txt"), "--out", self.path("o"), "--no-progress")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("empty corpus", r.stderr.decode())
        self.assertFalse(os.path.exists(self.path("o", "manifest.json")))


if __name__ == "__main__":
    if not BT or not os.path.exists(BT):
        print("BT_BINARY must name the bt executable", file=sys.stderr)
        sys.exit(1)
    prog = unittest.main(exit=False, verbosity=2)
    sys.exit(0 if prog.result.wasSuccessful() else 1)

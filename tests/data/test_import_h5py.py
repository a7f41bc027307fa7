#!/usr/bin/env python3
"""`bt prepare --format megatron|nanogpt|npy|llmc`, checked end to end against the published layouts:
numpy writes each format the way its framework does (Megatron-LM's indexed_dataset.py _IndexWriter,
nanoGPT's prepare.py memmap, numpy.save, llm.c's dev/data/data_common.py write_datafile), `bt
prepare` imports it, and h5py reads the shards back: every token and every document boundary must
equal what the documented rules (data/import.h, docs/data.md) give, the val split must be by
whole documents, the manifest must match the files, an interrupted import must resume to the same
bytes, and damaged inputs must fail with one line naming the file.
Env: BT_BINARY = path of the `bt` executable."""
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest

import h5py
import numpy as np

BT = os.environ.get("BT_BINARY", "")
EOS = 0
VOCAB = 50277


# ---- writers, following the published layouts ----------------------------------------------------

MEGATRON_DTYPE_CODE = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.uint16: 8}


def write_megatron(prefix, docs, dtype=np.uint16, modes=False, doc_index=None):
    """Megatron-LM _IndexWriter: header, sizes int32, byte pointers int64, document index int64."""
    arrs = [np.asarray(d, dtype=dtype) for d in docs]
    with open(prefix + ".bin", "wb") as f:
        for a in arrs:
            f.write(a.tobytes(order="C"))
    sizes = np.array([len(a) for a in arrs], dtype=np.int32)
    item = np.dtype(dtype).itemsize
    pointers = np.zeros(len(arrs), dtype=np.int64)
    if len(arrs) > 1:
        pointers[1:] = np.cumsum(sizes[:-1].astype(np.int64) * item)
    if doc_index is None:
        doc_index = list(range(len(arrs) + 1))
    doc_index = np.array(doc_index, dtype=np.int64)
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", MEGATRON_DTYPE_CODE[dtype]))
        f.write(struct.pack("<Q", len(sizes)))
        f.write(struct.pack("<Q", len(doc_index)))
        f.write(sizes.tobytes(order="C"))
        f.write(pointers.tobytes(order="C"))
        f.write(doc_index.tobytes(order="C"))
        if modes:
            f.write(np.zeros(len(sizes), dtype=np.int8).tobytes())


def write_nanogpt(path, tokens):
    """nanoGPT prepare.py: np.memmap(path, dtype=np.uint16, mode='w+', shape=(n,))."""
    arr = np.memmap(path, dtype=np.uint16, mode="w+", shape=(len(tokens),))
    arr[:] = np.asarray(tokens, dtype=np.uint16)
    arr.flush()
    del arr


def write_llmc(path, tokens, llama3=False):
    """llm.c data_common.py write_datafile: 256 int32 header (magic, version, count), then tokens."""
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1] = (20240801, 7) if llama3 else (20240520, 1)
    header[2] = len(tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype=np.uint32 if llama3 else np.uint16).tobytes())


# ---- the documented rules ------------------------------------------------------------------------


def megatron_docs(seq_lists, append=True, max_tokens=0, eos=EOS):
    out, total = [], 0
    for seqs in seq_lists:
        for s in seqs:
            s = list(s)
            if max_tokens and total >= max_tokens:
                return out
            cut = max_tokens and total + len(s) > max_tokens
            if cut:
                s = s[: max_tokens - total]
            total += len(s)
            out.append(s + [eos] if (append or cut) else s)
    return out


def split_docs(stream, eos=EOS):
    docs, cur = [], []
    for t in stream:
        cur.append(t)
        if t == eos:
            if len(cur) > 1:
                docs.append(cur)
            cur = []
    if cur:
        docs.append(cur + [eos])
    return docs


def random_docs(rng, n, lo=0, hi=400, vocab=VOCAB, eos=EOS):
    docs = []
    for _ in range(n):
        d = rng.integers(1, vocab, size=int(rng.integers(lo, hi))).tolist()
        docs.append([t for t in d if t != eos])
    return docs


# ---- reading the output --------------------------------------------------------------------------


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_split(out, split):
    docs, dtypes = [], set()
    names = sorted(n for n in os.listdir(out) if n.startswith(split + "-") and n.endswith(".h5"))
    for n in names:
        with h5py.File(os.path.join(out, n), "r") as f:
            toks = f["tokens"][:]
            dtypes.add(toks.dtype)
            offs = f["doc_offsets"][:].tolist() + [len(toks)]
            assert offs[0] == 0
            toks = toks.tolist()
            eos = int(f.attrs["eos_id"])
            for a, b in zip(offs[:-1], offs[1:]):
                assert b > a and toks[b - 1] == eos, f"{n}: document at {a} does not end with EOS"
                docs.append(toks[a:b])
    return docs, names, dtypes


class ImportTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="bt_test_import_")
        self.rng = np.random.default_rng(7)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def p(self, *parts):
        return os.path.join(self.tmp, *parts)

    def bt(self, *args, check=True, timeout=120):
        r = subprocess.run([BT, *args], capture_output=True, timeout=timeout)
        if check and r.returncode != 0:
            self.fail(f"bt {' '.join(args)} failed: {r.stderr.decode()}")
        return r

    def prepare(self, out, inputs, *extra, tokenizer=f"ids:{VOCAB}", eos=EOS, check=True):
        args = ["prepare", "--out", self.p(out), "--no-progress", "--tokenizer", tokenizer]
        if eos is not None:
            args += ["--eos-id", str(eos)]
        for i in inputs:
            args += ["--input", i]
        return self.bt(*args, *extra, check=check)

    def check_output(self, out, expected, vocab=VOCAB, eos=EOS, wide=False):
        """Every document, in order, across train and val; the manifest; the checksums."""
        out = self.p(out)
        train, tnames, tdt = read_split(out, "train")
        val, vnames, vdt = read_split(out, "val")
        for d in tdt | vdt:
            self.assertEqual(d, np.uint32 if wide else np.uint16)
        # The splits are order-preserving sub-sequences of the documents that together hold them
        # all; duplicates hash alike, so a greedy merge is exact.
        i = j = 0
        for doc in expected:
            if i < len(train) and train[i] == doc:
                i += 1
            elif j < len(val) and val[j] == doc:
                j += 1
            else:
                self.fail(f"document {i + j} ({doc[:8]}...) is not next in train or val")
        self.assertEqual((i, j), (len(train), len(val)), "extra documents in the shards")
        with open(os.path.join(out, "manifest.json")) as f:
            m = json.load(f)
        self.assertEqual(m["vocab_size"], vocab)
        self.assertEqual(m["eos_id"], eos)
        self.assertEqual(m["splits"]["train"]["documents"], len(train))
        self.assertEqual(m["splits"]["val"]["documents"], len(val))
        self.assertEqual(m["splits"]["train"]["tokens"], sum(map(len, train)))
        self.assertEqual(sorted(s["file"] for s in m["shards"]), sorted(tnames + vnames))
        for s in m["shards"]:
            path = os.path.join(out, s["file"])
            self.assertEqual(s["sha256"], sha256(path))
            self.assertEqual(s["bytes"], os.path.getsize(path))
            with h5py.File(path, "r") as f:
                self.assertEqual(s["tokens"], f["tokens"].shape[0])
                self.assertEqual(s["documents"], f["doc_offsets"].shape[0])
                self.assertEqual(f.attrs["format"], "bt-tokens")
                self.assertEqual(int(f.attrs["vocab_size"]), vocab)
        self.assertEqual(tnames, [f"train-{k:05d}.h5" for k in range(len(tnames))])
        self.assertFalse(os.path.exists(os.path.join(out, ".import")), "the work directory was left behind")
        return train, val, m

    # ---- formats ----

    def test_megatron_pythia_layout(self):
        """uint16, one sequence per document, no EOS in the data: EOS appended (the official pipeline)."""
        a = random_docs(self.rng, 300)
        a[5] = []  # an empty sequence becomes a lone EOS document
        b = random_docs(self.rng, 200)
        write_megatron(self.p("a"), a)
        write_megatron(self.p("b"), b, modes=True)  # multimodal files carry int8 modes after the index
        self.prepare("o", [self.p("a"), self.p("b.idx")], "--shard-tokens", "5000", "--val-fraction", "0.1",
                     "--threads", "2")
        exp = megatron_docs([a, b])
        train, val, m = self.check_output("o", exp)
        self.assertGreater(len(val), 10)
        self.assertGreater(m["splits"]["train"]["shards"], 5)
        self.assertEqual(m["import"]["source_tokens"], sum(map(len, a + b)))

    def test_long_documents_streamed_in_pieces_give_the_same_bytes(self):
        """Documents above a limit (16 M tokens; lowered here) are hashed, then written, in pieces."""
        docs = random_docs(self.rng, 300, lo=1, hi=3000)
        write_megatron(self.p("m"), docs)
        args = ("--shard-tokens", "20000", "--val-fraction", "0.2", "--threads", "2")
        self.prepare("whole", [self.p("m")], *args)
        env = dict(os.environ, BT_IMPORT_BIG_DOC_TOKENS="50")
        cmd = [BT, "prepare", "--out", self.p("pieces"), "--input", self.p("m"), "--tokenizer", f"ids:{VOCAB}",
               "--eos-id", str(EOS), "--no-progress", *args]
        r = subprocess.run(cmd, env=env, capture_output=True)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.check_output("pieces", megatron_docs([docs]))
        names = sorted(os.listdir(self.p("whole")))
        self.assertEqual(names, sorted(os.listdir(self.p("pieces"))))
        for n in names:
            self.assertEqual(sha256(self.p("whole", n)), sha256(self.p("pieces", n)), n)

    def test_megatron_dtypes_and_present_eos(self):
        docs = [d + [EOS] for d in random_docs(self.rng, 100, lo=1)]
        write_megatron(self.p("i32"), docs, dtype=np.int32, doc_index=[0, 50, 100])
        self.prepare("o", [self.p("i32")], "--doc-eos", "present", "--shard-tokens", "3000")
        self.check_output("o", megatron_docs([docs], append=False))
        # A sequence without its EOS under --doc-eos present: one line naming the file.
        docs[3] = docs[3][:-1]
        write_megatron(self.p("bad"), docs, dtype=np.int32)
        r = self.prepare("o2", [self.p("bad")], "--doc-eos", "present", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assert_one_line(r, "bad.bin", "sequence 3 does not end with EOS")

    def test_megatron_max_tokens(self):
        docs = random_docs(self.rng, 50, lo=10)
        write_megatron(self.p("m"), docs)
        n = sum(map(len, docs[:20])) + 7  # cuts document 20
        self.prepare("o", [self.p("m")], "--max-tokens", str(n), "--val-fraction", "0")
        train, val, m = self.check_output("o", megatron_docs([docs], max_tokens=n))
        self.assertEqual(len(train), 21)
        self.assertEqual(len(train[-1]), 8)
        self.assertEqual(m["import"]["source_tokens"], n)

    def test_nanogpt_split_on_eos(self):
        docs = random_docs(self.rng, 400, lo=1)
        stream = [t for d in docs for t in d + [EOS]]
        stream += [EOS, EOS] + [5, 6, 7]  # an empty document, and a last one without EOS
        write_nanogpt(self.p("train.bin"), stream)
        self.prepare("o", [self.p("train.bin")], "--split-on-eos", "--shard-tokens", "4000", "--threads", "2")
        train, _, m = self.check_output("o", split_docs(stream))
        self.assertEqual(m["import"]["dropped_empty"], 2)  # [EOS, EOS] after the last full document
        self.assertEqual(m["input_format"], "nanogpt")
        # One document per file without --split-on-eos.
        self.prepare("one", [self.p("train.bin")], "--val-fraction", "0")
        self.check_output("one", [stream + [EOS]])

    def test_document_spanning_many_units(self):
        """A document longer than many units: the units inside it are empty, nothing is scanned twice."""
        long_doc = [int(x) for x in self.rng.integers(1, VOCAB, size=60000)]
        stream = [5, 6, EOS] + long_doc + [EOS, 7, EOS] + long_doc[:100]
        write_nanogpt(self.p("l.bin"), stream)
        self.prepare("o", [self.p("l.bin")], "--split-on-eos", "--shard-tokens", "1000", "--val-fraction", "0")
        train, _, m = self.check_output("o", split_docs(stream))
        self.assertEqual([len(d) for d in train], [3, 60001, 2, 101])

    def test_npy_arrays(self):
        docs = random_docs(self.rng, 100, lo=1)
        stream = [t for d in docs for t in d + [EOS]]
        np.save(self.p("t32.npy"), np.array(stream, dtype=np.int32))
        np.save(self.p("t16.npy"), np.array(stream[:1000], dtype=np.uint16))
        self.prepare("o", [self.p("t32.npy"), self.p("t16.npy")], "--split-on-eos", "--shard-tokens", "2000")
        self.check_output("o", split_docs(stream + stream[:1000]))
        # Two files, each one document.
        self.prepare("o2", [self.p("t32.npy"), self.p("t16.npy")], "--format", "npy", "--val-fraction", "0")
        self.check_output("o2", [stream + [EOS], stream[:1000] + [EOS]])
        np.save(self.p("f.npy"), np.zeros(4, dtype=np.float32))
        r = self.prepare("o3", [self.p("f.npy")], check=False)
        self.assert_one_line(r, "f.npy", "not an integer type")
        np.save(self.p("2d.npy"), np.zeros((2, 3), dtype=np.int32))
        r = self.prepare("o3", [self.p("2d.npy")], check=False)
        self.assert_one_line(r, "2d.npy", "not 1-D")

    def test_llmc_shards(self):
        """llm.c puts EOT before every document and cuts documents at shard boundaries."""
        docs = random_docs(self.rng, 300, lo=1)
        stream = [t for d in docs for t in [EOS] + d]
        cut = len(stream) // 2 + 3
        write_llmc(self.p("fw_000000.bin"), stream[:cut])
        write_llmc(self.p("fw_000001.bin"), stream[cut:])
        self.prepare("o", [self.p("fw_000000.bin"), self.p("fw_000001.bin")], "--split-on-eos",
                     "--shard-tokens", "3000")
        train, val, _ = self.check_output("o", split_docs(stream))
        self.assertEqual(len(train) + len(val), len(docs))
        self.assertEqual(sorted(map(tuple, train + val)), sorted(tuple(d + [EOS]) for d in docs))

    def test_llmc_llama3_uint32(self):
        vocab = 128256
        docs = random_docs(self.rng, 50, lo=1, vocab=vocab, eos=128001)
        stream = [t for d in docs for t in [128000] + d + [128001]]
        write_llmc(self.p("l3.bin"), stream, llama3=True)
        self.prepare("o", [self.p("l3.bin")], "--split-on-eos", tokenizer=f"ids:{vocab}", eos=128001)
        self.check_output("o", split_docs(stream, eos=128001), vocab=vocab, eos=128001, wide=True)

    def test_auto_detects_formats(self):
        write_megatron(self.p("m"), random_docs(self.rng, 10, lo=1))
        write_llmc(self.p("l.bin"), [1, 2, EOS])
        write_nanogpt(self.p("n.bin"), [1, 2, EOS])
        for inp, fmt in ((self.p("m.bin"), "megatron"), (self.p("l.bin"), "llmc"), (self.p("n.bin"), "nanogpt")):
            self.prepare("o_" + fmt, [inp], "--val-fraction", "0")
            with open(self.p("o_" + fmt, "manifest.json")) as f:
                self.assertEqual(json.load(f)["input_format"], fmt)

    # ---- damaged inputs ----

    def assert_one_line(self, r, name, what):
        self.assertNotEqual(r.returncode, 0)
        err = r.stderr.decode().strip()
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn(name, err)
        self.assertIn(what, err)

    def test_errors_name_the_file(self):
        docs = random_docs(self.rng, 20, lo=1)
        write_megatron(self.p("m"), docs)
        idx, binf = read_bytes(self.p("m.idx")), read_bytes(self.p("m.bin"))
        os.makedirs(self.p("t"))
        # A truncated .idx (cut inside the arrays, and inside the header).
        for n, what in ((len(idx) - 9, "truncated"), (20, "truncated"), (5, "truncated")):
            with open(self.p("t", "m.idx"), "wb") as f:
                f.write(idx[:n])
            with open(self.p("t", "m.bin"), "wb") as f:
                f.write(binf)
            self.assert_one_line(self.prepare("o", [self.p("t", "m")], check=False), "m.idx", what)
        # A .bin shorter than the index says.
        with open(self.p("t", "m.idx"), "wb") as f:
            f.write(idx)
        with open(self.p("t", "m.bin"), "wb") as f:
            f.write(binf[:-2])
        self.assert_one_line(self.prepare("o", [self.p("t", "m")], check=False), "m.bin",
                             "shorter than its index says")
        # Wrong magic (Megatron, llm.c, npy).
        with open(self.p("t", "m.idx"), "wb") as f:
            f.write(b"TNTIDX\x00\x00" + idx[8:])
        self.assert_one_line(self.prepare("o", [self.p("t", "m")], check=False), "m.idx", "wrong magic")
        write_llmc(self.p("l.bin"), [1, 2, 3])
        data = bytearray(read_bytes(self.p("l.bin")))
        data[0:4] = struct.pack("<i", 20240521)
        write_bytes(self.p("l.bin"), data)
        self.assert_one_line(self.prepare("o", [self.p("l.bin")], "--format", "llmc", check=False), "l.bin",
                             "wrong magic")
        write_llmc(self.p("short.bin"), [1, 2, 3])
        os.truncate(self.p("short.bin"), 1024 + 4)
        self.assert_one_line(self.prepare("o", [self.p("short.bin")], check=False), "short.bin", "truncated")
        write_bytes(self.p("x.npy"), b"\x93NUMPX" + bytes(100))
        self.assert_one_line(self.prepare("o", [self.p("x.npy")], check=False), "x.npy", "wrong magic")
        # A token outside the vocabulary.
        write_megatron(self.p("v"), [[1, 2, 3], [4, VOCAB + 5]])
        self.assert_one_line(self.prepare("o", [self.p("v")], check=False), "v.bin", "outside the vocabulary")
        # A missing tokenizer.
        r = self.bt("prepare", "--out", self.p("o"), "--input", self.p("m"), "--no-progress", check=False)
        self.assert_one_line(r, "--tokenizer", "needs --tokenizer")
        self.assertFalse(os.path.exists(self.p("o", "manifest.json")))

    # ---- resume ----

    def test_resume_after_kill_gives_identical_shards(self):
        docs = random_docs(self.rng, 4000, lo=1, hi=1200)
        write_megatron(self.p("big"), docs)
        args = ("--shard-tokens", "40000", "--val-fraction", "0.05", "--threads", "2")
        self.prepare("fresh", [self.p("big")], *args)
        fresh = {n: sha256(self.p("fresh", n)) for n in os.listdir(self.p("fresh"))}
        # Killed at a random point (SIGKILL: no cleanup), then run again.
        for delay in (0.05, 0.2):
            out = f"killed{delay}"
            cmd = [BT, "prepare", "--out", self.p(out), "--input", self.p("big"), "--tokenizer", f"ids:{VOCAB}",
                   "--eos-id", str(EOS), "--no-progress", *args]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            r = self.prepare(out, [self.p("big")], *args)
            again = {n: sha256(self.p(out, n)) for n in os.listdir(self.p(out))}
            self.assertEqual(again, fresh, f"resumed output differs (kill after {delay} s)")
        # Deterministically part-way: the test hook exits like a kill after 3 units.
        env = dict(os.environ, BT_IMPORT_EXIT_AFTER_UNITS="3")
        cmd = [BT, "prepare", "--out", self.p("hook"), "--input", self.p("big"), "--tokenizer", f"ids:{VOCAB}",
               "--eos-id", str(EOS), "--no-progress", *args]
        r = subprocess.run(cmd, env=env, capture_output=True)
        self.assertEqual(r.returncode, 137)
        self.assertFalse(os.path.exists(self.p("hook", "manifest.json")))
        r = self.prepare("hook", [self.p("big")], *args)
        self.assertIn("already done", r.stdout.decode())
        self.assertEqual({n: sha256(self.p("hook", n)) for n in os.listdir(self.p("hook"))}, fresh)
        # Other options: the leftovers are not reused.
        r = self.prepare("hook", [self.p("big")], "--force", "--shard-tokens", "50000")
        self.assertNotIn("already done", r.stdout.decode())


if __name__ == "__main__":
    if not BT:
        print("BT_BINARY is not set; skipping")
        sys.exit(0)
    unittest.main(verbosity=2)

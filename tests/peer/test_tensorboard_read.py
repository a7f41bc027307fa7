"""TensorBoard event files written by `bt train` (docs/design.md §8), read back independently of our C++.

Runs a 3-step tiny training (BT_BINARY, log_every 1) and reads <out_dir>/tensorboard/
events.out.tfevents.*: TFRecord framing with both masked CRC-32Cs checked by a pure-Python CRC,
tensorflow.Event protobufs decoded by a pure-Python wire-format reader, written from the protobuf
and TFRecord specifications and not from train/tensorboard.cpp. Checks: the first record is
file_version "brain.Event:2"; train/loss, train/lr, train/grad_norm and train/tokens_per_s are
there at steps 1, 2, 3 with the values metrics.jsonl has (as float32); val/loss matches
metrics.jsonl's val_loss where either has one. When the `tensorboard` or `tensorflow` package is
importable, its own reader must see the same scalars.

`python3 test_tensorboard_read.py PATH` only reads PATH (an event file or a directory of them)
and prints its scalars."""
import glob
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

# ---- CRC-32C (Castagnoli), reflected polynomial 0x82F63B78 ----
_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc32c(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---- protobuf wire format ----
def _varint(buf, pos):
    v, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("bad varint")
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, pos


def fields(buf):
    """Yields (field_number, wire_type, value): int for varint, bytes for fixed32/64 and
    length-delimited."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, pos = _varint(buf, pos)
        elif wt in (1, 5):
            n = 8 if wt == 1 else 4
            if pos + n > len(buf):
                raise ValueError("truncated fixed field")
            v, pos = buf[pos:pos + n], pos + n
        elif wt == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("truncated length-delimited field")
            v, pos = buf[pos:pos + n], pos + n
        else:
            raise ValueError(f"unexpected wire type {wt}")
        yield field, wt, v


def decode_event(buf):
    """tensorflow.Event: wall_time=1 double, step=2 int64, file_version=3 string, summary=5
    Summary { repeated Value value=1 { tag=1 string, simple_value=2 float } }."""
    ev = {"values": []}
    for f, wt, v in fields(buf):
        if f == 1 and wt == 1:
            ev["wall_time"] = struct.unpack("<d", v)[0]
        elif f == 2 and wt == 0:
            ev["step"] = v - (1 << 64) if v >= 1 << 63 else v
        elif f == 3 and wt == 2:
            ev["file_version"] = v.decode("utf-8")
        elif f == 5 and wt == 2:
            for sf, swt, sv in fields(v):
                assert (sf, swt) == (1, 2), f"unexpected Summary field {sf} (wire type {swt})"
                tag, val = None, None
                for vf, vwt, vv in fields(sv):
                    if (vf, vwt) == (1, 2):
                        tag = vv.decode("utf-8")
                    elif (vf, vwt) == (2, 5):
                        val = struct.unpack("<f", vv)[0]
                    else:
                        raise AssertionError(f"unexpected Summary.Value field {vf} (wire type {vwt})")
                assert tag is not None and val is not None, "Summary.Value without tag or simple_value"
                ev["values"].append((tag, val))
        else:
            raise AssertionError(f"unexpected Event field {f} (wire type {wt})")
    return ev


def read_records(path):
    """TFRecords: uint64 length LE, masked crc32c(length), data, masked crc32c(data)."""
    with open(path, "rb") as fh:
        buf = fh.read()
    pos, out = 0, []
    while pos < len(buf):
        assert pos + 12 <= len(buf), f"{path}: truncated record header at byte {pos}"
        header = buf[pos:pos + 8]
        (n,) = struct.unpack("<Q", header)
        (hcrc,) = struct.unpack("<I", buf[pos + 8:pos + 12])
        assert hcrc == masked_crc32c(header), f"{path}: bad length CRC at byte {pos}"
        assert pos + 12 + n + 4 <= len(buf), f"{path}: truncated record at byte {pos}"
        data = buf[pos + 12:pos + 12 + n]
        (dcrc,) = struct.unpack("<I", buf[pos + 12 + n:pos + 16 + n])
        assert dcrc == masked_crc32c(data), f"{path}: bad data CRC at byte {pos}"
        out.append(data)
        pos += 16 + n
    return out


def read_scalars(path):
    """{tag: [(step, value, wall_time)]} of one event file, checking its first record."""
    events = [decode_event(r) for r in read_records(path)]
    assert events, f"{path}: empty event file"
    assert events[0].get("file_version") == "brain.Event:2", f"{path}: first record is {events[0]}"
    scalars = {}
    for ev in events[1:]:
        for tag, val in ev["values"]:
            scalars.setdefault(tag, []).append((ev.get("step", 0), val, ev.get("wall_time")))
    return scalars


def library_scalars(path):
    """The same file through TensorBoard's or TensorFlow's reader, or None when neither exists."""
    try:
        from tensorboard.backend.event_processing import event_accumulator
    except Exception:
        event_accumulator = None
    if event_accumulator is not None:
        acc = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.SCALARS: 0})
        acc.Reload()
        return "tensorboard", {t: [(s.step, s.value) for s in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    try:
        import tensorflow as tf
    except Exception:
        return None, None
    out = {}
    for e in tf.compat.v1.train.summary_iterator(path):
        for v in e.summary.value:
            out.setdefault(v.tag, []).append((e.step, v.simple_value))
    return "tensorflow", out


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def same_f32(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == f32(b)


def self_test():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA and crc32c(b"\xff" * 32) == 0x62A8AB43  # RFC 3720 B.4
    try:
        import crcmod.predefined
        assert crcmod.predefined.mkCrcFun("crc-32c")(b"blockformer") == crc32c(b"blockformer")
    except ImportError:
        pass


def main():
    self_test()
    if len(sys.argv) > 1:
        p = sys.argv[1]
        files = sorted(glob.glob(os.path.join(p, "events.out.tfevents.*"))) if os.path.isdir(p) else [p]
        for f in files:
            print(f)
            for tag, pts in sorted(read_scalars(f).items()):
                print(f"  {tag}: " + ", ".join(f"{s}={v:.6g}" for s, v, _ in pts))
        return

    b = os.environ.get("BT_BINARY")
    if not b or not os.path.exists(b):
        raise SystemExit("BT_BINARY is not set to the bt executable (run through ctest)")
    src = os.environ.get("BT_SOURCE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run")
        args = [b, "train", "--config", os.path.join(src, "configs", "tiny", "block_b4.yaml"), "train.steps=3",
                "train.log_every=1", "train.global_batch=2", "train.micro_batch=2", "train.checkpoint_every=100",
                "model.context_length=32", "data.train=", "data.val=", "data.synthetic=repeat:37",
                "train.device=cpu", f"train.out_dir={out}"]
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
        r = subprocess.run(args, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"bt train failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        files = sorted(glob.glob(os.path.join(out, "tensorboard", "events.out.tfevents.*")))
        if not files:
            raise SystemExit(f"FAIL: bt train wrote no TensorBoard event file {out}/tensorboard/events.out.tfevents.*"
                             " -- the TensorBoardWriter (train/tensorboard.h) is not wired into the trainer yet")
        assert len(files) == 1, f"a single-process run wrote {len(files)} event files: {files}"
        scalars = read_scalars(files[0])
        with open(os.path.join(out, "metrics.jsonl")) as fh:
            metrics = [json.loads(line) for line in fh if line.strip()]

        expected = {}  # tag -> [(step, value)] from metrics.jsonl
        for m in metrics:
            for key, tag in (("loss", "train/loss"), ("lr", "train/lr"), ("grad_norm", "train/grad_norm"),
                             ("tokens_per_s", "train/tokens_per_s"), ("val_loss", "val/loss")):
                if key in m:
                    expected.setdefault(tag, []).append((m["step"], m[key]))
        for tag in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s"):
            assert tag in scalars, f"tag {tag} missing; the file has {sorted(scalars)}"
            assert [s for s, _, _ in scalars[tag]] == [1, 2, 3], f"{tag} steps {[s for s, _, _ in scalars[tag]]}"
        for tag in sorted(set(expected) | ({"val/loss"} & set(scalars))):
            got = [(s, v) for s, v, _ in scalars.get(tag, [])]
            want = expected.get(tag, [])
            assert len(got) == len(want) and all(gs == ws and same_f32(gv, wv) for (gs, gv), (ws, wv)
                                                 in zip(got, want)), \
                f"{tag}: event file {got} != metrics.jsonl {want}"
        walls = [w for pts in scalars.values() for _, _, w in pts]
        import time
        assert all(w is not None and abs(w - time.time()) < 3600 for w in walls), f"wall times {walls}"

        lib, lib_scalars = library_scalars(files[0])
        if lib is None:
            print("note: neither tensorboard nor tensorflow is importable; checked with the pure-Python reader only")
        else:
            ours = {t: [(s, v) for s, v, _ in pts] for t, pts in scalars.items()}
            assert set(lib_scalars) == set(ours), f"{lib} sees tags {sorted(lib_scalars)}, we see {sorted(ours)}"
            for t in ours:
                assert [s for s, _ in lib_scalars[t]] == [s for s, _ in ours[t]] and all(
                    same_f32(a, b) for (_, a), (_, b) in zip(lib_scalars[t], ours[t])), f"{lib} reads {t} differently"
            print(f"{lib}'s reader agrees")
        print(f"OK: {files[0]}: " + ", ".join(f"{t} x{len(p)}" for t, p in sorted(scalars.items())))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The hf: byte-level BPE tokenizer against the Python `tokenizers` package (the reference).

Three tokenizers are trained with the package on a generated multilingual corpus and saved as
tokenizer.json: one shaped like GPT-NeoX / Pythia's (NFC normalizer, ByteLevel pre-tokenizer,
special <|endoftext|> and <|padding|>, the runs of spaces as normalized added tokens), one like
GPT-2's with add_prefix_space, and one with a Split regex + ByteLevel(use_regex=False) and
NFKC + Lowercase normalizers. On 12k lines of varied text (letters and marks of many scripts,
decomposed accents, digits of several kinds, runs of spaces, tabs and newlines, Unicode spaces,
contractions, emoji sequences, CJK, code, special tokens in the text, random code points, and
invalid UTF-8 bytes) `bt tokenize` must give exactly the package's ids (for invalid UTF-8: the ids
of bytes.decode("utf-8", "replace")), and decode(encode(x)) == x wherever the package round-trips.
Then `bt prepare --tokenizer hf:PATH` must write those ids into its shards and keep the file.
Env: BT_BINARY = path of the `bt` executable."""
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import unittest

import h5py

try:
    import tokenizers
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
except ImportError:  # launch/install-deps.sh installs it into build/venv
    tokenizers = None

BT = os.environ.get("BT_BINARY", "")
N_LINES = 12000

WORDS = {
    "latin": "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "had they you were their one all we can her has there been if more when will would who so no Hello World Python "
    "tokenizer Transformer block decoder attention THE Of AND McDonald iPhone".split(),
    "accents": "café naïve résumé Größe straße façade Ærø smörgåsbord jalapeño São Dvořák Łódź İstanbul ﬁle Ǆemal "
    "coöperate élève".split(),
    "greek": "αλφα βήτα Γειά σου κόσμε λόγος ΟΔΥΣΣΕΥΣ".split(),
    "cyrillic": "привет мир Москва ёжик съешь ЁЛКА".split(),
    "rtl": "مرحبا بالعالم السلام عليكم שלום עולם".split(),
    "indic": "नमस्ते दुनिया हिन्दी தமிழ் বাংলা".split(),
    "thai": "สวัสดี ชาวโลก".split(),
    "cjk": "日本語 中文 漢字 東京 北京 こんにちは カタカナ 한국어 안녕하세요 ｶﾀｶﾅ".split(),
    "emoji": ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇯🇵", "❤️", "🤖", "✨", "🎉", "☕", "🏳️‍🌈"],
    "digits": ["0", "7", "42", "1234567", "3.14159", "1,000,000", "２０２４", "٣٤٥", "²³", "Ⅻ", "½", "१२३", "0x1F"],
    "contractions": ["it's", "don't", "we're", "they've", "I'm", "we'll", "he'd", "IT'S", "Don'T", "'s", "'ll", "o'clock"],
    "marks": ["e\u0301", "a\u0308", "n\u0303", "A\u030a", "Z\u0351\u0364\u0353", "\u0915\u094d\u0937", "o\u0302\u0323"],
    "punct": ["!", "?", "...", "—", "–", "«", "»", "“", "”", "(", ")", "[", "]", "{", "}", "#", "$", "%", "&", "*", "@",
              "~", "`", "^", "|", "\\", "/", "<", ">", "::", "->", "=>", "!=", "<=", ";", ",", ".", "'", '"', "¿", "¡"],
    "code": ["def f(x):\n    return x * 2", "for (int i = 0; i < n; ++i) {", "}\n", "if x == 1:", "#include <stdio.h>",
             "    ", "\t", "x += 1;", "print('hi')", "<div class=\"a\">"],
    "special": ["<|endoftext|>", "<|padding|>", "<|endoftext|><|endoftext|>", "<|endof", "|>"],
}
SEPS = [" "] * 30 + ["  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u2003", "\u3000", "\u0085", "\u180e",
                     "\u200b", "\u2028", " " * 9, " " * 30, "\n" * 5, "\t\t", "\f", "\v", ""]
INVALID = [b"\x80", b"\xbf", b"\xc0\xaf", b"\xe2\x82", b"\xf0\x9f\x98", b"\xed\xa0\x80", b"\xf5", b"\xff", b"\xfe\xff",
           b"\xc3", b"\xe0\x80\x80", b"\xf4\x90\x80\x80", b"\xc3\x28"]
KINDS = list(WORDS)
WEIGHTS = [30, 4, 2, 2, 2, 2, 1, 4, 2, 5, 3, 2, 8, 3, 1]


def random_char(rng):
    while True:
        c = rng.randrange(0x110000) if rng.random() < 0.3 else rng.randrange(0x3000)
        if not 0xD800 <= c <= 0xDFFF:
            return chr(c)


def make_line(rng):
    """One sample as bytes."""
    parts = []
    for _ in range(rng.randrange(1, 25)):
        kind = rng.choices(KINDS, WEIGHTS)[0]
        w = rng.choice(WORDS[kind])
        if kind == "latin" and rng.random() < 0.1:
            w = w.upper() if rng.random() < 0.5 else w.capitalize()
        parts.append(w)
        parts.append(rng.choice(SEPS))
    if rng.random() < 0.08:
        parts.insert(rng.randrange(len(parts) + 1), "".join(random_char(rng) for _ in range(rng.randrange(1, 6))))
    if rng.random() < 0.1:
        parts.insert(0, rng.choice([" ", "  ", "\n", "\t"]))
    data = "".join(parts).encode("utf-8")
    if rng.random() < 0.06:  # invalid UTF-8 somewhere
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(data) + 1)
            data = data[:at] + rng.choice(INVALID) + data[at:]
    return data


NEOX_SPACES = [" " * n for n in range(24, 1, -1)]
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def train_tokenizers(corpus, out_dir):
    """Returns {name: path of tokenizer.json}."""
    paths = {}
    # GPT-NeoX / Pythia shape.
    t = tokenizers.ByteLevelBPETokenizer(add_prefix_space=False, unicode_normalizer="nfc")
    t.train_from_iterator(corpus, vocab_size=3000, min_frequency=2, special_tokens=["<|endoftext|>", "<|padding|>"],
                          show_progress=False)
    t.add_tokens([AddedToken(s, normalized=True, special=False) for s in NEOX_SPACES])
    paths["neox"] = os.path.join(out_dir, "neox.json")
    t.save(paths["neox"])
    # GPT-2 shape with a prefix space.
    t = tokenizers.ByteLevelBPETokenizer(add_prefix_space=True)
    t.train_from_iterator(corpus, vocab_size=2000, min_frequency=2, special_tokens=["<|endoftext|>"],
                          show_progress=False)
    paths["gpt2_prefix"] = os.path.join(out_dir, "gpt2_prefix.json")
    t.save(paths["gpt2_prefix"])
    # Split regex + ByteLevel without its regex; NFKC + Lowercase.
    t = Tokenizer(models.BPE())
    t.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=2500, min_frequency=2, show_progress=False,
                                                      special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    paths["split_lower"] = os.path.join(out_dir, "split_lower.json")
    t.save(paths["split_lower"])
    return paths


@unittest.skipIf(tokenizers is None, "the Python tokenizers package is not installed (launch/install-deps.sh)")
class BpeAgainstTokenizers(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="bt_test_bpe_")
        rng = random.Random(1234)
        corpus = [make_line(rng).decode("utf-8", "replace") for _ in range(15000)]
        cls.paths = train_tokenizers(corpus, cls.tmp)
        rng = random.Random(99)
        cls.lines = [make_line(rng) for _ in range(N_LINES)]
        cls.hex = os.path.join(cls.tmp, "lines.hex")
        with open(cls.hex, "w") as f:
            for b in cls.lines:
                f.write(b.hex() + "\n")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def ours(self, path):
        r = subprocess.run([BT, "tokenize", "--tokenizer", "hf:" + path, "--input", self.hex, "--hex"],
                           capture_output=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        out = [json.loads(l) for l in r.stdout.decode().splitlines()]
        self.assertEqual(len(out), len(self.lines))
        return out

    def check(self, name, min_round_trips=0.5):
        path = self.paths[name]
        ref = Tokenizer.from_file(path)
        texts = [b.decode("utf-8", "replace") for b in self.lines]
        theirs = [e.ids for e in ref.encode_batch(texts)]
        back = ref.decode_batch(theirs)
        ours = self.ours(path)
        bad = [i for i in range(len(texts)) if ours[i]["ids"] != theirs[i]]
        for i in bad[:5]:
            print(f"{name}: line {i} {self.lines[i]!r}\n  theirs {theirs[i]}\n  ours   {ours[i]['ids']}",
                  file=sys.stderr)
        self.assertEqual(len(bad), 0, f"{name}: {len(bad)} of {len(texts)} lines differ")
        round_trips = [i for i in range(len(texts)) if back[i] == texts[i]]
        self.assertGreater(len(round_trips), len(texts) * min_round_trips, f"{name}: too few lines round-trip")
        for i in round_trips:
            self.assertEqual(bytes.fromhex(ours[i]["hex"]), texts[i].encode("utf-8"), f"{name}: line {i} decodes wrong")
        # Where the package does not round-trip (NFC, special tokens), our decode still matches its decode.
        for i in range(len(texts)):
            self.assertEqual(bytes.fromhex(ours[i]["hex"]).decode("utf-8", "replace"), back[i])
        n_invalid = sum(1 for b in self.lines if b.decode("utf-8", "replace").encode("utf-8") != b)
        self.assertGreater(n_invalid, 200)

    def test_neox_shape(self):
        self.check("neox")

    def test_gpt2_add_prefix_space(self):
        self.check("gpt2_prefix", min_round_trips=0.03)  # only lines that start with a space round-trip

    def test_split_regex_nfkc_lowercase(self):
        self.check("split_lower", min_round_trips=0.0)  # lowercased: few lines round-trip

    def test_prepare_writes_its_ids_and_keeps_the_file(self):
        path = self.paths["neox"]
        ref = Tokenizer.from_file(path)
        docs = [b.decode("utf-8", "replace").replace("\r", " ") for b in self.lines[:500]]
        docs = [d for d in docs if d.strip()]
        src = os.path.join(self.tmp, "docs.jsonl")
        with open(src, "w") as f:
            for d in docs:
                f.write(json.dumps({"text": d}) + "\n")
        out = os.path.join(self.tmp, "prep")
        r = subprocess.run([BT, "prepare", "--input", src, "--tokenizer", "hf:" + path, "--out", out,
                            "--val-fraction", "0", "--no-progress"], capture_output=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        eos = ref.token_to_id("<|endoftext|>")
        with h5py.File(os.path.join(out, "train-00000.h5"), "r") as f:
            self.assertEqual(f.attrs["tokenizer"], "hf:" + digest)
            self.assertEqual(int(f.attrs["eos_id"]), eos)
            self.assertEqual(int(f.attrs["vocab_size"]), ref.get_vocab_size(with_added_tokens=True))
            toks = f["tokens"][:].tolist()
            offs = f["doc_offsets"][:].tolist() + [len(toks)]
        got = [toks[a:b] for a, b in zip(offs[:-1], offs[1:])]
        self.assertEqual(got, [ref.encode(d).ids + [eos] for d in docs])
        with open(os.path.join(out, "hf_tokenizer.json"), "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), digest)
        with open(os.path.join(out, "tokenizer.json")) as f:
            meta = json.load(f)
        self.assertEqual((meta["kind"], meta["name"], meta["eos_id"]), ("hf", "hf:" + digest, eos))
        # The prepared directory alone can tokenize again.
        r = subprocess.run([BT, "tokenize", "--tokenizer", out, "--text", docs[0]], capture_output=True)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertEqual(json.loads(r.stdout)["ids"], ref.encode(docs[0]).ids)

    def test_refused_with_one_line(self):
        bad = os.path.join(self.tmp, "wordpiece.json")
        with open(self.paths["neox"]) as f:
            j = json.load(f)
        j["model"]["type"] = "WordPiece"
        with open(bad, "w") as f:
            json.dump(j, f)
        r = subprocess.run([BT, "tokenize", "--tokenizer", "hf:" + bad, "--text", "x"], capture_output=True)
        self.assertNotEqual(r.returncode, 0)
        err = r.stderr.decode().strip()
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn("wordpiece.json", err)
        self.assertIn("WordPiece", err)


if __name__ == "__main__":
    if not BT:
        print("BT_BINARY is not set; skipping")
        sys.exit(0)
    unittest.main(verbosity=2)

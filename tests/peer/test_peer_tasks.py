"""Peer test, zero-shot tasks (docs/evaluation.md): `bt eval --task` against PyTorch and
lm-evaluation-harness on the same weights.

A random HF GPTNeoXForCausalLM (byte-tokenizer vocabulary, weights scaled so that its
predictions are far from uniform) is saved with save_pretrained and evaluated by `bt eval --task
all` on the hand-written task files of tests/tasks (plus a longer wikitext page with non-ASCII
text), with --max-length 28 so that long requests are truncated from the left and wikitext pages
span several rolling windows.

(a) Every loglikelihood bt reports (each choice of each multiple-choice question, each lambada
    continuation with its is_greedy, each wikitext page's rolling sum) equals the one computed
    here from GPTNeoXForCausalLM's logits for the same requests, built by this file from the
    harness's rules (TemplateLM._encode_pair, get_rolling_token_windows, left truncation to
    max_length + 1 tokens): in float32 within 1e-5 (or 5e-8 relative for sums beyond 200 nats,
    float32's own resolution there), and in double (bt --precision fp64, HF in float64 with its
    rotary tables recomputed in float64) within 1e-9.
(b) Where lm-eval 0.4 is installed (launch/install-deps.sh installs it into the peer venv), the
    harness itself runs the same local task files (its own task YAMLs, with the dataset pointed at
    the JSONL files) through HFLM with the same tokenizer: request by request, its prompts
    (arguments) are bt's and its loglikelihoods and is_greedy equal bt's (within 1e-5, or two
    float32 ulps of HFLM's float32 sums); and every metric bt reports equals the harness's
    (accuracies exactly, perplexities within 1e-6 relative and the bootstrap standard error within
    1e-5: bt replays the harness's random resampling).
Both with the byte tokenizer (`--tokenizer byte`, an HF tokenizer with the same ids on the
harness's side) and with a byte-level BPE shaped like Pythia's (ByteLevel pre-tokenizer, EOS
<|endoftext|> = 0), trained here with the `tokenizers` package on the task texts and read by bt as
`--tokenizer hf:tokenizer.json`: its merges cross the context / continuation boundary, so the
continuation tokens come from encode(context + continuation) as the harness takes them."""
import copy
import json
import math
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_util as pu  # noqa: E402

pu.require_torch_and_transformers()
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import GPTNeoXForCausalLM  # noqa: E402

torch.set_num_threads(2)
torch.manual_seed(0)

EOT = 256
MAX_LEN = 28
TASKS = ["lambada_openai", "wikitext", "hellaswag", "piqa", "arc_easy", "arc_challenge", "sciq", "winogrande"]
SPLITS = {"lambada_openai": "test", "wikitext": "test", "hellaswag": "validation", "piqa": "validation",
          "arc_easy": "test", "arc_challenge": "test", "sciq": "test", "winogrande": "validation"}
MCFG = {"vocab_size": 257, "context_length": 64, "rotary_pct": 0.25, "rotary_base": 10000, "layernorm_eps": 1e-5,
        "decoder": {"layers": 2, "dim": 64, "heads": 2, "ffn_dim": 128}}


def sharpen_(model):
    """Far from uniform predictions: LayerNorm weights and biases moved off 1 / 0 (N(0, 0.1) added),
    matrices scaled by 3, in parameter order (torch's RNG decides the values)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
            else:
                p.mul_(3.0)


def src_dir():
    return os.environ.get("BT_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))


def byte_encode(s):
    return list(s.encode())


def encode_pair(context, continuation, enc=byte_encode, eot=EOT):
    """TemplateLM.loglikelihood + _encode_pair (default: the byte tokenizer, UTF-8 bytes, EOT 256)."""
    if context == "":
        return [eot], enc(continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = enc(context + continuation)
    ctx = enc(context)
    return ctx, whole[len(ctx):]


def rolling_windows(tokens, max_len, eot=EOT):
    """utils.get_rolling_token_windows(tokens, EOT, max_len, 1) + make_disjoint_window."""
    out = []
    if not tokens:
        return out
    first = min(max_len, len(tokens))
    out.append(([eot], tokens[:first]))
    predicted = first
    while predicted < len(tokens):
        pred = min(len(tokens) - predicted, max_len)
        end = predicted + pred
        a = tokens[end - max_len - 1:end - 1]
        out.append((a[:len(a) - (pred - 1)], tokens[end - pred:end]))
        predicted = end
    return out


def hf_loglikelihood(model, ctx, cont):
    """(log P(cont | ctx), is_greedy) as HFLM._loglikelihood_tokens computes it, in float64."""
    full = (ctx + cont)[-(MAX_LEN + 1):]
    inp = torch.tensor([full[:-1]], dtype=torch.long)
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=inp).logits[0].double(), dim=-1)
    sel = logp[len(full) - 1 - len(cont):len(full) - 1]
    target = torch.tensor(cont, dtype=torch.long)
    return float(sel.gather(1, target[:, None]).sum()), bool((sel.argmax(-1) == target).all())


def exact_rotary(module):
    """HF computes inv_freq and the cos / sin tables in float32; recompute them in float64."""
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding
    for m in module.modules():
        if isinstance(m, GPTNeoXRotaryEmbedding):
            m.inv_freq = 1.0 / (m.base ** (torch.arange(0, m.dim, 2, dtype=torch.float64) / m.dim))
            m._set_cos_sin_cache(m.max_position_embeddings, m.inv_freq.device, torch.float64)


def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    vocab["<|endoftext|>"] = EOT
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")


LONG_PAGE = (" = Das Café = \n The café 's owner said : \" it 's ( really ) fine \" , and the price rose "
             "from 3 @.@ 5 to 4 @,@ 000 euros @-@ a lot . \n = = History = = \n Opened in 1 @,@ 9 5 0 . \n ")


def task_dir(tmp):
    """tests/tasks, with a long wikitext page added (several windows, the detokenizer's cases), and
    arc_challenge rewritten from AI2's nested layout (which bt also reads) into the HF layout the
    harness's YAML reads."""
    d = os.path.join(tmp, "tasks")
    shutil.copytree(os.path.join(src_dir(), "tests", "tasks"), d)
    with open(os.path.join(d, "wikitext.jsonl"), "a") as f:
        f.write(json.dumps({"page": LONG_PAGE}) + "\n")
    path = os.path.join(d, "arc_challenge.jsonl")
    with open(path) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    with open(path, "w") as f:
        for r in recs:
            q = r["question"]
            f.write(json.dumps({"id": r["id"], "question": q["stem"],
                                "choices": {"text": [c["text"] for c in q["choices"]],
                                            "label": [c["label"] for c in q["choices"]]},
                                "answerKey": r["answerKey"]}) + "\n")
    return d


def bpe_tokenizer(tasks_dir, path):
    """A byte-level BPE like Pythia's (EOS <|endoftext|> = 0), trained on the task files' text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    texts = []
    for name in os.listdir(tasks_dir):
        with open(os.path.join(tasks_dir, name)) as f:
            texts += [v for line in f if line.strip() for v in json.loads(line).values() if isinstance(v, str)]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts * 20, trainers.BpeTrainer(vocab_size=330, special_tokens=["<|endoftext|>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.save(path)
    from transformers import PreTrainedTokenizerFast
    hf = PreTrainedTokenizerFast(tokenizer_file=path, eos_token="<|endoftext|>")
    assert hf.eos_token_id == 0 and len(hf) > 300, (hf.eos_token_id, len(hf))
    return hf


def run_harness(model, tokenizer, tmp, tasks_dir):
    """The harness's own tasks over the local files; None when lm-eval is not installed."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except Exception as e:  # not installed, or a dependency that does not import
        print(f"lm-eval not importable ({e}); skipping the harness comparison")
        return None
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    harness_tasks = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
    yamls = {"lambada_openai": "lambada/lambada_openai.yaml", "wikitext": "wikitext/wikitext.yaml",
             "hellaswag": "hellaswag/hellaswag.yaml", "piqa": "piqa/piqa.yaml", "arc_easy": "arc/arc_easy.yaml",
             "arc_challenge": "arc/arc_challenge.yaml", "sciq": "sciq/sciq.yaml",
             "winogrande": "winogrande/default.yaml"}
    ydir = os.path.join(tmp, "yaml")
    os.makedirs(ydir, exist_ok=True)
    for t in TASKS:
        split = SPLITS[t]
        data = os.path.abspath(os.path.join(tasks_dir, t + ".jsonl"))
        with open(os.path.join(ydir, f"bt_{t}.yaml"), "w") as f:
            f.write(f"include: {os.path.join(harness_tasks, yamls[t])}\n"
                    f"task: bt_{t}\n"
                    "dataset_path: json\n"
                    "dataset_name: null\n"
                    f"dataset_kwargs:\n  data_files:\n    {split}: {data}\n"
                    "training_split: null\n"
                    f"validation_split: {'validation' if split == 'validation' else 'null'}\n"
                    f"test_split: {'test' if split == 'test' else 'null'}\n")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=MAX_LEN, backend="causal")
    res = lm_eval.simple_evaluate(model=lm, tasks=[f"bt_{t}" for t in TASKS], task_manager=TaskManager(include_path=ydir),
                                  bootstrap_iters=1000, log_samples=True)
    samples = {t: sorted(res["samples"][f"bt_{t}"], key=lambda s: s["doc_id"]) for t in TASKS}
    return {t: res["results"][f"bt_{t}"] for t in TASKS}, samples


def check(tmp, tasks_dir, kind):
    """bt against GPTNeoXForCausalLM and the harness with tokenizer `kind` (byte | bpe)."""
    work = os.path.join(tmp, kind)
    os.makedirs(work)
    if kind == "byte":
        hf_tok, spec, vocab = byte_tokenizer(), "byte", MCFG["vocab_size"]
    else:
        path = os.path.join(work, "tokenizer.json")
        hf_tok = bpe_tokenizer(tasks_dir, path)
        spec, vocab = "hf:" + path, len(hf_tok)
    enc = (lambda s: hf_tok.encode(s, add_special_tokens=False))
    eot = hf_tok.eos_token_id
    mcfg = dict(MCFG, vocab_size=vocab)
    model = GPTNeoXForCausalLM(pu.neox_config(mcfg["decoder"], mcfg)).float().eval()
    sharpen_(model)
    hf_dir = os.path.join(work, "hf")
    model.save_pretrained(hf_dir, safe_serialization=True)
    d = mcfg["decoder"]

    def bt_eval(precision):
        out = os.path.join(work, "out_" + precision)
        pu.run_bt(["eval", "--ckpt", os.path.join(hf_dir, "model.safetensors"), "--config",
                   os.path.join(src_dir(), "configs", "tiny", "vanilla.yaml"), "--tokenizer", spec, "--device", "cpu",
                   "--precision", precision, "--task", "all", "--task-data", tasks_dir, "--max-length", MAX_LEN,
                   "--batch-size", 3, "--output", out, "--log-samples", "--bootstrap-iters", 1000, "--json",
                   f"model.vocab_size={mcfg['vocab_size']}", f"model.context_length={mcfg['context_length']}",
                   f"model.decoder.layers={d['layers']}", f"model.decoder.dim={d['dim']}",
                   f"model.decoder.heads={d['heads']}", f"model.decoder.ffn_dim={d['ffn_dim']}"])
        return out

    # (a) every loglikelihood against GPTNeoXForCausalLM, in float32 and in float64
    exact = copy.deepcopy(model).double()
    exact_rotary(exact)
    for precision, ref_model, tol, rel in (("fp32", model, 1e-5, 5e-8), ("fp64", exact, 1e-9, 0.0)):
        out = bt_eval(precision)
        worst, greedy_checked, max_windows, n = 0.0, 0, 0, 0
        for t in TASKS:
            with open(os.path.join(out, f"samples_{t}.jsonl")) as f:
                samples = [json.loads(line) for line in f]
            for s in samples:
                pairs = []
                if t == "wikitext":
                    windows = rolling_windows(enc(s["arguments"][0][0]), MAX_LEN, eot)
                    assert len(s["windows"]) == len(windows), (len(s["windows"]), len(windows))
                    max_windows = max(max_windows, len(windows))
                    pairs.append((s["resps"][0][0], sum(hf_loglikelihood(ref_model, c, x)[0] for c, x in windows)))
                else:
                    for (ctx, cont), resp, ntok in zip(s["arguments"], s["resps"], s["tokens"]):
                        c, x = encode_pair(ctx, cont, enc, eot)
                        assert [len(c), len(x)] == ntok, (t, ctx, cont, ntok, len(c), len(x))
                        ll, greedy = hf_loglikelihood(ref_model, c, x)
                        pairs.append((resp[0], ll))
                        if resp[1] is not None:
                            assert resp[1] == greedy, (t, ctx, cont, resp, greedy)
                            greedy_checked += 1
                for ours_ll, ref_ll in pairs:
                    worst = max(worst, abs(ours_ll - ref_ll) / max(tol, rel * abs(ref_ll)) * tol)
                    n += 1
        pu.check_close(f"{kind} {precision}: {n} loglikelihoods (bt vs GPTNeoXForCausalLM)", worst, 0.0, tol)
        assert greedy_checked == 3, greedy_checked
        assert max_windows >= (4 if kind == "byte" else 2), max_windows
    with open(os.path.join(work, "out_fp32", "results.json")) as f:
        ours = json.load(f)["results"]

    # (b) the harness itself
    harness = run_harness(model, hf_tok, work, tasks_dir)
    if harness is not None:
        theirs, their_samples = harness
        # Request by request: the harness's own prompts (its task YAMLs and utils) are ours, and
        # its loglikelihoods and is_greedy (HFLM, batches of 4) equal ours.
        worst, n = 0.0, 0
        for t in TASKS:
            with open(os.path.join(work, "out_fp32", f"samples_{t}.jsonl")) as f:
                mine = [json.loads(line) for line in f]
            assert len(mine) == len(their_samples[t]), (t, len(mine), len(their_samples[t]))
            for d, (s, h) in enumerate(zip(mine, their_samples[t])):
                assert h["doc_id"] == d, (t, d, h["doc_id"])
                if t == "wikitext":
                    assert [s["arguments"][0][0]] == list(h["arguments"][0]), (t, d)
                    pairs = [(s["resps"][0][0], h["resps"][0][0])]
                else:
                    assert [list(a) for a in s["arguments"]] == [list(a) for a in h["arguments"]], \
                        (t, d, s["arguments"], h["arguments"])
                    pairs = []
                    for resp, hr in zip(s["resps"], h["resps"]):
                        ll, greedy = hr[0]
                        pairs.append((resp[0], ll))
                        if resp[1] is not None:
                            assert resp[1] == greedy, (t, d, resp, hr)
                # HFLM sums a continuation's log-probabilities in float32: up to two float32 ulps
                # (2.4e-7 relative; 1.2e-5 at -139 nats) beyond the 1e-5.
                for a, b in pairs:
                    worst = max(worst, abs(a - b) / max(1e-5, 2.4e-7 * abs(b)) * 1e-5)
                    n += 1
        pu.check_close(f"{kind}: {n} loglikelihoods (bt vs lm-eval's HFLM, its own requests)", worst, 0.0, 1e-5)
        for t in TASKS:
            for key, value in ours[t].items():
                if key == "alias":
                    continue
                ref = theirs[t][key]
                print(f"{kind} {t} {key}: bt {value} harness {ref}")
                if isinstance(value, str) or isinstance(ref, str):
                    assert value == ref, (t, key, value, ref)
                elif key.startswith("acc"):
                    assert abs(value - ref) < 1e-12, (t, key, value, ref)
                else:
                    # exp() of a mean of float32 loglikelihoods: 1e-6 relative is ~1e-6 nats
                    assert math.isclose(value, ref, rel_tol=1e-5 if "stderr" in key else 1e-6), (t, key, value, ref)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tasks_dir = task_dir(tmp)
        for kind in ("byte", "bpe"):
            check(tmp, tasks_dir, kind)
    print("peer tasks: OK")


if __name__ == "__main__":
    main()

"""Shared helpers of the peer tests (docs/design.md §9.3): run `bt` (BT_BINARY) to train a tiny model and
write a checkpoint, evaluate token windows with `bt eval --tokens-file --dump-logits`, and read
the results back for comparison with a PyTorch reference built from HF GPT-NeoX modules."""
import json
import os
import subprocess
import sys

import numpy as np


def require_torch_and_transformers():
    """The peer tests need torch and HF transformers; skip (exit 0) only when they are missing."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        import safetensors.torch  # noqa: F401
    except Exception as e:  # ImportError, or a transformers that refuses this torch
        print(f"SKIP: PyTorch / transformers / safetensors not importable ({e}); "
              "launch/test.sh installs them into build/venv")
        sys.exit(0)


def bt_binary():
    b = os.environ.get("BT_BINARY")
    if not b or not os.path.exists(b):
        raise SystemExit("BT_BINARY is not set to the bt executable (run through ctest)")
    return b


def run_bt(args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    r = subprocess.run([bt_binary()] + [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"bt {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout


def tiny_overrides(kind, out_dir, L=32, V=256, steps=3):
    """A few-second training run on synthetic data whose checkpoint is far enough from the init
    (lr 1e-2, no warmup) that biases and LayerNorm weights are not 0 / 1."""
    common = [f"model.vocab_size={V}", f"model.context_length={L}", "data.train=", "data.val=",
              "data.synthetic=repeat:37", "train.micro_batch=4", "train.global_batch=4", f"train.steps={steps}",
              f"train.checkpoint_every={steps}", f"train.out_dir={out_dir}", "train.device=cpu",
              "train.precision=fp32", "optim.lr=1.0e-2", "optim.warmup_steps=1", "train.eval_every=1000",
              "train.log_every=1"]
    if kind == "vanilla":
        return common + ["model.decoder.layers=2", "model.decoder.dim=64", "model.decoder.heads=2",
                         "model.decoder.ffn_dim=256"]
    return common + ["model.embedder.dim=16", "model.block_decoder.layers=2", "model.block_decoder.dim=64",
                     "model.block_decoder.heads=2", "model.block_decoder.ffn_dim=256",
                     "model.token_decoder.layers=2", "model.token_decoder.dim=64", "model.token_decoder.heads=2",
                     "model.token_decoder.ffn_dim=256", "model.token_decoder.prefix_length=2",
                     "data.random_pad_first_block=false", "data.pad_to_block_boundary=false"]


def train_tiny(kind, tmp, extra=()):
    """extra: more overrides (after the tiny ones), e.g. the official variants."""
    src = os.environ.get("BT_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
    cfg = os.path.join(src, "configs", "tiny", "vanilla.yaml" if kind == "vanilla" else "block_b4.yaml")
    out = os.path.join(tmp, "run")
    run_bt(["train", "--config", cfg] + tiny_overrides(kind, out) + list(extra))
    return os.path.join(out, "checkpoints", "latest")


# Overrides for the official variants of the block model (embedder projection_method, token decoder
# decoding_strategy); the tiny block model has D_B = 64, L_B = 4.
VARIANTS = {
    ("concat", "prefix"): [],
    ("concat", "summation"): ["model.token_decoder.decoding_strategy=summation", "model.token_decoder.prefix_length=4"],
    ("projection_layer", "prefix"): ["model.embedder.projection_method=projection_layer", "model.embedder.dim=24"],
    ("projection_layer", "summation"): ["model.embedder.projection_method=projection_layer", "model.embedder.dim=24",
                                        "model.token_decoder.decoding_strategy=summation",
                                        "model.token_decoder.prefix_length=4"],
}


def load_yaml(path):
    import yaml
    with open(path) as f:
        return yaml.safe_load(f)


def bt_eval(ckpt, tokens, tmp, extra=()):
    """Our loss and logits on tokens [B, L] (int32): (json dict, logits [rows, V] float32)."""
    tok_file = os.path.join(tmp, "tokens.bin")
    logit_file = os.path.join(tmp, "logits.bin")
    np.ascontiguousarray(tokens, dtype="<i4").tofile(tok_file)
    out = run_bt(["eval", "--ckpt", ckpt, "--tokens-file", tok_file, "--dump-logits", logit_file, "--json",
                  "--device", "cpu"] + list(extra))
    res = json.loads(out.strip().splitlines()[-1])
    return res, np.fromfile(logit_file, dtype="<f4")


def neox_config(d, m):
    """GPTNeoXConfig for one decoder section `d` of our model config `m`."""
    from transformers import GPTNeoXConfig
    return GPTNeoXConfig(vocab_size=m["vocab_size"], hidden_size=d["dim"], num_hidden_layers=d["layers"],
                         num_attention_heads=d["heads"], intermediate_size=d["ffn_dim"],
                         rotary_pct=m["rotary_pct"], rotary_emb_base=m["rotary_base"],
                         layer_norm_eps=m["layernorm_eps"], max_position_embeddings=max(2048, m["context_length"]),
                         hidden_act="gelu", use_parallel_residual=True, tie_word_embeddings=False,
                         attention_dropout=0.0, hidden_dropout=0.0)


def check_close(name, ours, ref, tol):
    diff = float(np.max(np.abs(np.asarray(ours, dtype=np.float64) - np.asarray(ref, dtype=np.float64))))
    print(f"{name}: max |ours - pytorch| = {diff:.3e} (tolerance {tol:g})")
    if not diff <= tol:
        raise AssertionError(f"{name} differs from PyTorch by {diff:.3e} > {tol:g}")

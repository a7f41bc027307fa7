"""Peer test, padded batches (docs/design.md §9.3, docs/architecture.md "Pads"): windows built the way the
official data pipeline builds them (several documents per window, front pads from
random_pad_first_block, pads after each EOS from pad_to_block_boundary, attention_mask = 0 on
pads), run by `bt eval --precision fp64 --mask-file --grads` and by the official composition over
HF GPT-NeoX modules (official_ref.py) in float64, for each official variant (embedder concat and
projection_layer, token decoder prefix and summation): the loss and the gradient of every parameter
agree within 1e-6 relative. The same windows with pads left visible to attention (what bt did
before) give a loss that differs by far more, so the comparison can tell the two apart. The
vanilla model: HF GPTNeoXForCausalLM with the same attention_mask."""
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_util as pu  # noqa: E402

pu.require_torch_and_transformers()
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import GPTNeoXForCausalLM  # noqa: E402

import official_ref as ofr  # noqa: E402

torch.set_num_threads(2)
TOL = 1e-6


def documents(rng, V, eos, n, lo=1, hi=19):
    """n documents of random lengths lo..hi over ids [0, V) without EOS."""
    ids = [i for i in range(V) if i != eos]
    return [list(rng.choice(ids, size=int(rng.integers(lo, hi + 1)))) for _ in range(n)]


def write_inputs(tmp, tokens, mask):
    tf, mf = os.path.join(tmp, "tokens.bin"), os.path.join(tmp, "mask.bin")
    np.ascontiguousarray(tokens, dtype="<i4").tofile(tf)
    np.ascontiguousarray(mask, dtype=np.uint8).tofile(mf)
    return tf, mf


def bt_loss_and_grads(ckpt, tokens, mask, tmp, extra=()):
    import json
    tf, mf = write_inputs(tmp, tokens, mask)
    gfile = os.path.join(tmp, "grads.safetensors")
    out = pu.run_bt(["eval", "--ckpt", ckpt, "--tokens-file", tf, "--mask-file", mf, "--grads", gfile,
                     "--precision", "fp64", "--device", "cpu", "--json", "--batch-size", str(tokens.shape[0])]
                    + list(extra))
    return json.loads(out.strip().splitlines()[-1]), gfile


def check_block(ckpt, tmp, tag, seed=5):
    cfg_path = os.path.join(ckpt, "config.yaml")
    m = pu.load_yaml(cfg_path)["model"]
    L, V, LB = m["context_length"], m["vocab_size"], m["block_length"]
    eos = V - 1  # the synthetic stream's EOS; the pad and the summation BOS are EOS, as for Pythia
    rng = np.random.default_rng(seed)
    tokens, mask = ofr.official_windows(documents(rng, V, eos, 80, hi=9), L, LB, eos, eos, rng)
    tokens, mask = tokens[:4], mask[:4]
    assert (mask == 0).sum() >= 12, "too few pads to test anything"
    ours, gfile = bt_loss_and_grads(ckpt, tokens, mask, tmp)

    ref = ofr.BlockTransformerRef(m, bos_id=eos, pad_id=eos).double()
    state = load_file(os.path.join(ckpt, "model.safetensors"))
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert list(unexpected) == [] and list(missing) == ["block_decoder.gpt_neox.embed_in.weight"], (missing,
                                                                                                     unexpected)
    ids, am = torch.from_numpy(tokens.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))
    loss, _, n = ref(ids, am)
    assert n == ours["targets"], f"targets: ours {ours['targets']}, official {n}"
    loss.backward()
    rel = abs(ours["loss"] - float(loss)) / float(loss)
    print(f"{tag}: loss ours {ours['loss']:.12f} official {float(loss):.12f} (relative {rel:.2e}), {n} targets")
    assert rel <= TOL, f"{tag}: loss differs by {rel:.3e} relative"
    worst = ofr.compare_grads(ref, gfile, TOL)
    print(f"{tag}: every parameter gradient within {worst[0]:.2e} relative (worst {worst[1]})")
    with torch.no_grad():
        visible, _, _ = ref(ids, am, hide_pads=False)
    gap = abs(float(visible) - ours["loss"]) / ours["loss"]
    print(f"{tag}: with pads visible to attention the official loss would be {float(visible):.9f} "
          f"({gap:.1e} relative from ours)")
    assert gap > 10 * TOL, "pads visible or hidden give the same loss: the test cannot tell them apart"


def check_vanilla(ckpt, tmp):
    m = pu.load_yaml(os.path.join(ckpt, "config.yaml"))["model"]
    L, V = m["context_length"], m["vocab_size"]
    eos = V - 1
    rng = np.random.default_rng(9)
    tokens, mask = ofr.official_windows(documents(rng, V, eos, 80), L, 4, eos, eos, rng, front=False)
    keep = mask[:, 0] == 1  # a window that starts with pads has queries with no visible key (see backend.h)
    tokens, mask = tokens[keep][:3], mask[keep][:3]
    assert (mask == 0).sum() >= 8
    ours, gfile = bt_loss_and_grads(ckpt, tokens, mask, tmp)
    cfg = pu.neox_config(m["decoder"], m)
    model = GPTNeoXForCausalLM(cfg).double()
    model.load_state_dict({k: v for k, v in load_file(os.path.join(ckpt, "model.safetensors")).items()}, strict=True)
    ids, am = torch.from_numpy(tokens.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))
    labels = ids.masked_fill(am == 0, -100)
    out = model(input_ids=ids, attention_mask=am, labels=labels)
    out.loss.backward()
    rel = abs(ours["loss"] - float(out.loss)) / float(out.loss)
    print(f"vanilla: loss ours {ours['loss']:.12f} HF {float(out.loss):.12f} (relative {rel:.2e})")
    assert rel <= TOL
    worst = ofr.compare_grads(model, gfile, TOL, skip=())
    print(f"vanilla: every parameter gradient within {worst[0]:.2e} relative (worst {worst[1]})")
    with torch.no_grad():
        lg = model(input_ids=ids).logits
        visible = F.cross_entropy(lg[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))
    assert abs(float(visible) - ours["loss"]) / ours["loss"] > 100 * TOL


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for (method, strategy), extra in pu.VARIANTS.items():
            ckpt = pu.train_tiny("block", os.path.join(tmp, f"{method}_{strategy}"), extra)
            check_block(ckpt, tmp, f"block {method}/{strategy}")
        check_vanilla(pu.train_tiny("vanilla", os.path.join(tmp, "v")), tmp)
    print("peer pads: OK")


if __name__ == "__main__":
    main()

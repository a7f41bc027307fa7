"""Peer test, vanilla model (docs/design.md §9.3): a checkpoint written by `bt train` loads into HF
GPTNeoXForCausalLM with strict names and shapes, and its logits (and loss) on the same tokens match
ours within 1e-4; and the other way round, weights saved by HF (save_pretrained, safetensors) are
loaded by `bt eval` and give the same loss."""
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

torch.set_num_threads(2)
torch.manual_seed(0)


def hf_model(mcfg):
    model = GPTNeoXForCausalLM(pu.neox_config(mcfg["decoder"], mcfg)).float().eval()
    return model


def hf_logits_and_loss(model, tokens):
    ids = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        logits = model(input_ids=ids).logits  # [B, L, V]
    V = logits.shape[-1]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    return logits.numpy(), float(loss)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = pu.train_tiny("vanilla", tmp)
        mcfg = pu.load_yaml(os.path.join(ckpt, "config.yaml"))["model"]
        L, V = mcfg["context_length"], mcfg["vocab_size"]
        rng = np.random.default_rng(1)
        tokens = rng.integers(0, V, size=(3, L), dtype=np.int32)

        # (a) bt -> PyTorch: strict load, logits and loss.
        model = hf_model(mcfg)
        state = load_file(os.path.join(ckpt, "model.safetensors"))
        model.load_state_dict(state, strict=True)
        ref_logits, ref_loss = hf_logits_and_loss(model, tokens)
        ours, our_logits = pu.bt_eval(ckpt, tokens, tmp)
        pu.check_close("vanilla logits (bt checkpoint in GPTNeoXForCausalLM)", our_logits.reshape(ref_logits.shape),
                       ref_logits, 1e-4)
        pu.check_close("vanilla loss", ours["loss"], ref_loss, 1e-4)

        # (b) PyTorch -> bt: HF's own safetensors file (fresh random init), evaluated by bt.
        fresh = hf_model(mcfg)
        with torch.no_grad():  # move LayerNorm/bias parameters off 1/0 so that every tensor matters
            for n, p in fresh.named_parameters():
                if p.dim() == 1:
                    p.add_(0.1 * torch.randn_like(p))
        hf_dir = os.path.join(tmp, "hf")
        fresh.save_pretrained(hf_dir, safe_serialization=True)
        ref_logits, ref_loss = hf_logits_and_loss(fresh, tokens)
        ours, our_logits = pu.bt_eval(os.path.join(hf_dir, "model.safetensors"), tokens, tmp,
                                      ["--config", os.path.join(ckpt, "config.yaml")])
        pu.check_close("vanilla logits (HF weights in bt)", our_logits.reshape(ref_logits.shape), ref_logits, 1e-4)
        pu.check_close("vanilla loss (HF weights in bt)", ours["loss"], ref_loss, 1e-4)
    print("peer vanilla: OK")


if __name__ == "__main__":
    main()

"""Peer test, uptraining (docs/architecture.md "Uptraining"): `bt train --init-only` with
load_from_vanilla writes the starting weights of a block model initialised from a vanilla HF
GPT-NeoX safetensors file; the same procedure, written here from the official code's rules
(load_block_from_vanilla_checkpoint in itsnamgyu/block-transformer model/utils.py) and applied to
the official module tree holding bt's fresh init, must give every tensor bit for bit: methods
partition (with the mean embedder projection and the identity expansion layer), skip and
duplicate. The tensors the procedure leaves alone keep the fresh init."""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_util as pu  # noqa: E402

pu.require_torch_and_transformers()
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM  # noqa: E402

import official_ref as ofr  # noqa: E402

torch.set_num_threads(2)
torch.manual_seed(0)
V, D, L, LB, R = 256, 64, 32, 4, 2


def official_rules(block, vanilla, method, mean_projection, identity_expansion):
    """The official load_from_vanilla procedure on the module trees (our wording of its rules)."""
    with torch.no_grad():
        block.embedder.embeddings.load_state_dict(vanilla.gpt_neox.embed_in.state_dict())
        if mean_projection:  # every output channel averages its own input channel over the block
            w = block.embedder.projection_layer.weight  # [D_B, E, L_B]
            w.copy_((torch.eye(w.shape[0]) / LB).unsqueeze(-1).repeat(1, 1, w.shape[-1]))
            block.embedder.projection_layer.bias.zero_()
        vl = len(vanilla.gpt_neox.layers)
        bl = len(block.block_decoder.gpt_neox.layers)
        tl = len(block.token_decoder.gpt_neox.layers)
        src_b = {"partition": lambda i: i, "skip": lambda i: 2 * i, "duplicate": lambda i: i}[method]
        src_t = {"partition": lambda i: bl + i, "skip": lambda i: 2 * i, "duplicate": lambda i: i}[method]
        assert {"partition": bl + tl == vl, "skip": 2 * bl == vl == 2 * tl, "duplicate": bl == vl == tl}[method]
        for i in range(bl):
            block.block_decoder.gpt_neox.layers[i].load_state_dict(vanilla.gpt_neox.layers[src_b(i)].state_dict())
        block.token_decoder.gpt_neox.embed_in.load_state_dict(vanilla.gpt_neox.embed_in.state_dict())
        for i in range(tl):
            block.token_decoder.gpt_neox.layers[i].load_state_dict(vanilla.gpt_neox.layers[src_t(i)].state_dict())
        if identity_expansion:  # each of the `ratio` expanded vectors is the context embedding
            w = block.token_decoder.expansion_layer.weight  # [ratio * D_T, D_B, 1]
            w.copy_(torch.eye(w.shape[1]).unsqueeze(-1).repeat(block.token_decoder.ratio, 1, 1))
            block.token_decoder.expansion_layer.bias.zero_()
        block.token_decoder.gpt_neox.final_layer_norm.load_state_dict(
            vanilla.gpt_neox.final_layer_norm.state_dict())
        block.token_decoder.embed_out.load_state_dict(vanilla.embed_out.state_dict())


def vanilla_file(tmp, layers, heads_in_config=2):
    cfg = GPTNeoXConfig(vocab_size=V, hidden_size=D, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=4 * D, rotary_pct=0.25, max_position_embeddings=2048,
                        use_parallel_residual=True, tie_word_embeddings=False)
    model = GPTNeoXForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for p in model.parameters():  # generic values: LayerNorm weights off 1, biases off 0
            p.add_(0.05 * torch.randn_like(p))
    d = os.path.join(tmp, f"vanilla_{layers}_{heads_in_config}")
    os.makedirs(d, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(d, "model.safetensors"),
              metadata={"format": "pt"})
    cfg.num_attention_heads = heads_in_config  # what bt reads from config.json (the weights do not say)
    cfg.to_json_file(os.path.join(d, "config.json"))
    return model, os.path.join(d, "model.safetensors")


def block_overrides(out, layers_b, layers_t, extra):
    return pu.tiny_overrides("block", out) + [
        f"model.embedder.dim={D}", "model.embedder.projection_method=projection_layer",
        f"model.block_decoder.layers={layers_b}", f"model.token_decoder.layers={layers_t}"] + list(extra)


def bt_init(tmp, name, layers_b, layers_t, extra):
    src = os.environ.get("BT_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
    out = os.path.join(tmp, name)
    cmd = [pu.bt_binary(), "train", "--config", os.path.join(src, "configs", "tiny", "block_b4.yaml"),
           "--init-only"] + block_overrides(out, layers_b, layers_t, extra)
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"
    ckpt = os.path.join(out, "checkpoints", "latest")
    return ckpt, r.stdout + r.stderr


def check(tmp, method, layers_v, layers_b, layers_t, mean_projection, identity_expansion, heads_in_config=2):
    vanilla, vfile = vanilla_file(tmp, layers_v, heads_in_config)
    base, _ = bt_init(tmp, f"base_{method}", layers_b, layers_t, [])
    flags = [f"load_from_vanilla.method={method}",
             f"load_from_vanilla.initialize_mean_embedder_projection={str(mean_projection).lower()}",
             f"load_from_vanilla.initialize_identity_expansion_layer={str(identity_expansion).lower()}"]
    up, log = bt_init(tmp, f"up_{method}", layers_b, layers_t,
                      ["load_from_vanilla.enable=true", f"load_from_vanilla.checkpoint_path={vfile}"] + flags)
    m = pu.load_yaml(os.path.join(up, "config.yaml"))["model"]
    ref = ofr.BlockTransformerRef(m).float()
    missing, unexpected = ref.load_state_dict(load_file(os.path.join(base, "model.safetensors")), strict=False)
    assert list(unexpected) == [] and list(missing) == ["block_decoder.gpt_neox.embed_in.weight"]
    official_rules(ref, vanilla, method, mean_projection, identity_expansion)
    ours = load_file(os.path.join(up, "model.safetensors"))
    expect = ref.state_dict()
    changed = 0
    for name, t in ours.items():
        e = expect[name].reshape(t.shape)
        assert torch.equal(t, e), f"{method}: {name} differs from the official procedure " \
                                  f"(max diff {float((t - e).abs().max()):.3e})"
        changed += not torch.equal(t, load_file(os.path.join(base, "model.safetensors"))[name])
    print(f"{method}: all {len(ours)} tensors equal the official procedure bit for bit ({changed} set from the "
          f"vanilla model or by the init rules)")
    return log


def main():
    with tempfile.TemporaryDirectory() as tmp:
        check(tmp, "partition", 4, 2, 2, True, True)
        log = check(tmp, "skip", 4, 2, 2, False, False, heads_in_config=4)
        assert "heads" in log and "load_from_vanilla" in log, f"no warning about the heads:\n{log}"
        check(tmp, "duplicate", 2, 2, 2, False, True)
    print("peer uptrain: OK")


if __name__ == "__main__":
    main()

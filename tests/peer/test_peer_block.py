"""Peer test, Block Transformer (docs/design.md §9.3). The reference is built from HF GPT-NeoX modules and
composed the way the official implementation (itsnamgyu/block-transformer) composes them:

  embedder       LookupEmbedder: nn.Embedding(V, D_B / L_B) as `embeddings`, L_B lookups
                 concatenated per block (projection_method "concat", n_embedding_tokens 1)
  block_decoder  GPTNeoXBlockDecoder: a GPTNeoXModel as `gpt_neox` over inputs_embeds (its
                 embed_in exists but is unused), no embed_out
  token_decoder  GPTNeoXTokenDecoder: `gpt_neox` (GPTNeoXModel), `embed_out` (Linear, no bias) and
                 `expansion_layer` (Conv1d(D_B, R * D_T, kernel 1)), decoding strategy "prefix":
                 input [P_1..P_R, e(t_1)..e(t_{L_B-1})], outputs from position R-1 predict t_1..t_{L_B}
  alignment      the context embedding of block i conditions block i+1; the last is unused

(a) A checkpoint written by `bt train` loads into this module tree (the only missing tensor is the
block decoder's unused embed_in) and the loss (and logits) on the same batch match ours within 1e-4.
(b) The reference's own state_dict, saved with safetensors (embed_in included), is loaded by
`bt eval`, which reports and ignores the extra tensor, and gives the same loss."""
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_util as pu  # noqa: E402

pu.require_torch_and_transformers()
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import GPTNeoXModel  # noqa: E402

torch.set_num_threads(2)
torch.manual_seed(0)


class LookupEmbedder(nn.Module):
    def __init__(self, V, E):
        super().__init__()
        self.embeddings = nn.Embedding(V, E)


class BlockDecoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gpt_neox = GPTNeoXModel(cfg)


class TokenDecoder(nn.Module):
    def __init__(self, cfg, DB, R):
        super().__init__()
        self.gpt_neox = GPTNeoXModel(cfg)
        self.embed_out = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.expansion_layer = nn.Conv1d(in_channels=DB, out_channels=cfg.hidden_size * R, kernel_size=1)
        self.R = R

    def expand_block_embeddings(self, block_embeddings):  # [rows, 1, D_B] -> [rows, R, D_T]
        x = self.expansion_layer(block_embeddings.transpose(1, 2)).transpose(1, 2)
        return x.reshape(x.shape[0], -1, self.gpt_neox.config.hidden_size)


class BlockTransformerRef(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.LB = m["block_length"]
        bd, td = m["block_decoder"], m["token_decoder"]
        self.embedder = LookupEmbedder(m["vocab_size"], m["embedder"]["dim"])
        self.block_decoder = BlockDecoder(pu.neox_config(bd, m))
        self.token_decoder = TokenDecoder(pu.neox_config(td, m), bd["dim"], td["prefix_length"])

    def forward(self, input_ids):  # [B, L] -> logits [B, N-1, L_B, V], loss
        B, L = input_ids.shape
        LB, N = self.LB, L // self.LB
        ids = input_ids.view(B, N, LB)
        # embedder: [B*N, L_B, E] -> concat -> [B, N, D_B]
        emb = self.embedder.embeddings(ids.view(-1, LB))
        emb = emb.view(emb.shape[0], -1).view(B, N, -1)
        hidden = self.block_decoder.gpt_neox(inputs_embeds=emb, attention_mask=torch.ones(B, N)).last_hidden_state
        ctx = hidden[:, :-1, :].reshape(B * (N - 1), 1, -1)  # block i conditions block i+1
        targets = ids[:, 1:, :].reshape(-1, LB)  # [rows, L_B]
        td = self.token_decoder
        prefix = td.expand_block_embeddings(ctx)  # [rows, R, D_T]
        tok = td.gpt_neox.embed_in(targets[:, :-1])  # [rows, L_B - 1, D_T]
        x = torch.cat([prefix, tok], dim=1)
        h = td.gpt_neox(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2])).last_hidden_state
        logits = td.embed_out(h[:, td.R - 1:, :])  # [rows, L_B, V]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits.view(B, N - 1, LB, -1), loss


def main():
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = pu.train_tiny("block", tmp)
        cfg_path = os.path.join(ckpt, "config.yaml")
        m = pu.load_yaml(cfg_path)["model"]
        L, V = m["context_length"], m["vocab_size"]
        rng = np.random.default_rng(2)
        tokens = rng.integers(0, V, size=(3, L), dtype=np.int32)
        ids = torch.from_numpy(tokens.astype(np.int64))

        # (a) bt -> PyTorch
        ref = BlockTransformerRef(m).float().eval()
        state = load_file(os.path.join(ckpt, "model.safetensors"))
        missing, unexpected = ref.load_state_dict(state, strict=False)
        assert list(unexpected) == [], f"tensors in bt's checkpoint that the official tree lacks: {unexpected}"
        assert list(missing) == ["block_decoder.gpt_neox.embed_in.weight"], f"missing from bt's checkpoint: {missing}"
        for k, v in state.items():
            assert tuple(v.shape) == tuple(ref.state_dict()[k].shape), k
        with torch.no_grad():
            ref_logits, ref_loss = ref(ids)
        ours, our_logits = pu.bt_eval(ckpt, tokens, tmp)
        pu.check_close("block loss (bt checkpoint in the official module tree)", ours["loss"], float(ref_loss), 1e-4)
        pu.check_close("block logits", our_logits.reshape(ref_logits.shape), ref_logits.numpy(), 1e-4)

        # (b) PyTorch -> bt: the reference's full state_dict (unused embed_in included).
        fresh = BlockTransformerRef(m).float().eval()
        with torch.no_grad():
            for n, p in fresh.named_parameters():
                if p.dim() == 1:
                    p.add_(0.1 * torch.randn_like(p))
        st = {k: v.contiguous() for k, v in fresh.state_dict().items()}
        assert "block_decoder.gpt_neox.embed_in.weight" in st
        wfile = os.path.join(tmp, "official.safetensors")
        save_file(st, wfile, metadata={"format": "pt"})
        with torch.no_grad():
            ref_logits, ref_loss = fresh(ids)
        ours, our_logits = pu.bt_eval(wfile, tokens, tmp, ["--config", cfg_path])
        pu.check_close("block loss (official-layout weights in bt)", ours["loss"], float(ref_loss), 1e-4)
        pu.check_close("block logits (official-layout weights in bt)", our_logits.reshape(ref_logits.shape),
                       ref_logits.numpy(), 1e-4)
        # The per-position losses are reported for block models.
        assert len(ours["loss_by_position"]) == m["block_length"]
    print("peer block: OK")


if __name__ == "__main__":
    main()

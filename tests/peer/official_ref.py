"""The official Block Transformer (itsnamgyu/block-transformer at 17842dd, with HF transformers
4.39.3) re-implemented for the peer tests as a composition of HF GPT-NeoX modules, from the rules
its code follows (written here in our words; nothing is imported from it):

  data           TokenizedCorpusDataset with random_pad_first_block / pad_to_block_boundary: each
                 document gets 0..L_B-1 pad tokens in front and, after its EOS, pads up to the next
                 block boundary; attention_mask = 0 on pads, 1 on document tokens and EOS; labels =
                 input_ids with -100 where attention_mask = 0 (AddLabels); block_attention_mask =
                 attention_mask.any(block) (SplitBlocks).
  embedder       LookupEmbedder: nn.Embedding(V, E) as `embeddings` (padding_idx = the embedder
                 config's pad_token_id, None in the official configs), then projection_method
                 "concat" (the L_B vectors side by side, D_B = L_B * E) or "projection_layer"
                 (Conv1d(E, D_B, kernel L_B, stride L_B) with bias). attention_mask is not used.
  block_decoder  GPTNeoXBlockDecoder: a GPTNeoXModel as `gpt_neox` over inputs_embeds with
                 attention_mask = block_attention_mask (a block of only pads is hidden), position
                 ids 0..N-1.
  token_decoder  GPTNeoXTokenDecoder: `gpt_neox`, `embed_out` (no bias), `expansion_layer`
                 (Conv1d(D_B, ratio * D_T, 1)). For the block after each context embedding the
                 input is [BOS, t_1 .. t_{L_B}] with attention_mask [1, m_1 .. m_{L_B}];
                 discard_redundant_tokens drops the last column; decoding_strategy "prefix" puts
                 the `ratio` expanded vectors in front of e(t_1) .. e(t_{L_B-1}) (mask 1 for them),
                 "summation" (ratio = L_B) adds the j-th expanded vector to e(BOS), e(t_1), ...
                 e(t_{L_B-1}). The outputs that predict t_1 .. t_{L_B} are kept where t_j is
                 content (not a pad id, or mask 1) and the loss is the mean cross-entropy over them.

Everything runs in the dtype of the module (float64 in the gradient tests)."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GPTNeoXModel

import peer_util as pu


class LookupEmbedder(nn.Module):
    def __init__(self, V, E, LB, DB, method):
        super().__init__()
        self.embeddings = nn.Embedding(V, E)
        self.method = method
        if method == "projection_layer":
            self.projection_layer = nn.Conv1d(E, DB, kernel_size=LB, stride=LB)

    def forward(self, ids):  # [rows, L_B] -> [rows, D_B]
        x = self.embeddings(ids)  # [rows, L_B, E]
        if self.method == "concat":
            return x.reshape(x.shape[0], -1)
        return self.projection_layer(x.transpose(1, 2)).transpose(1, 2).reshape(x.shape[0], -1)


class BlockDecoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gpt_neox = GPTNeoXModel(cfg)


class TokenDecoder(nn.Module):
    def __init__(self, cfg, DB, ratio, strategy, bos_id):
        super().__init__()
        self.gpt_neox = GPTNeoXModel(cfg)
        self.embed_out = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.expansion_layer = nn.Conv1d(in_channels=DB, out_channels=cfg.hidden_size * ratio, kernel_size=1)
        self.ratio, self.strategy, self.bos_id = ratio, strategy, bos_id

    def expand(self, ctx):  # [rows, D_B] -> [rows, ratio, D_T]
        x = self.expansion_layer(ctx.unsqueeze(-1)).transpose(1, 2)
        return x.reshape(x.shape[0], -1, self.gpt_neox.config.hidden_size)


def strategy_of(m):
    return m["token_decoder"].get("decoding_strategy", "prefix")


def method_of(m):
    return m["embedder"].get("projection_method", "concat")


class BlockTransformerRef(nn.Module):
    """The official composition for our model config `m` (the `model` section of config.yaml).
    bos_id: the token decoder's BOS (summation only); pad_id: the data's pad token."""

    def __init__(self, m, bos_id=0, pad_id=0):
        super().__init__()
        self.LB = m["block_length"]
        bd, td = m["block_decoder"], m["token_decoder"]
        strategy = strategy_of(m)
        ratio = self.LB if strategy == "summation" else td["prefix_length"]
        self.embedder = LookupEmbedder(m["vocab_size"], m["embedder"]["dim"], self.LB, bd["dim"], method_of(m))
        self.block_decoder = BlockDecoder(pu.neox_config(bd, m))
        self.token_decoder = TokenDecoder(pu.neox_config(td, m), bd["dim"], ratio, strategy, bos_id)
        self.pad_id = pad_id

    def forward(self, input_ids, attention_mask=None, hide_pads=True):
        """input_ids, attention_mask [B, L] -> (loss, logits [B, N-1, L_B, V], number of targets).
        hide_pads=False gives every stack an all-ones attention_mask (pads visible, as bt had it
        before) while pads stay out of the loss."""
        B, L = input_ids.shape
        LB, N = self.LB, L // self.LB
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        ids = input_ids.view(B, N, LB)
        am = attention_mask.view(B, N, LB)
        bam = am.any(dim=-1).long()
        emb = self.embedder(ids.reshape(-1, LB)).view(B, N, -1)
        if not hide_pads:
            bam = torch.ones_like(bam)
        hidden = self.block_decoder.gpt_neox(inputs_embeds=emb, attention_mask=bam).last_hidden_state
        ctx = hidden[:, :-1, :].reshape(B * (N - 1), -1)  # block i conditions block i + 1
        tgt = ids[:, 1:, :].reshape(-1, LB)
        tam = am[:, 1:, :].reshape(-1, LB)
        labels = tgt.masked_fill(tam == 0, -100)
        rows = tgt.shape[0]
        td = self.token_decoder
        # [BOS, t_1 .. t_LB] with mask [1, m_1 .. m_LB]; discard_redundant_tokens drops the last column.
        inp = torch.cat([tgt.new_full((rows, 1), td.bos_id), tgt], dim=1)
        msk = torch.cat([tam.new_ones((rows, 1)), tam], dim=1)
        content = (inp != self.pad_id) | (msk == 1)
        inp, msk = inp[:, :-1], msk[:, :-1]
        keep = content[:, 1:]  # the outputs that predict content tokens
        expanded = td.expand(ctx)
        if td.strategy == "prefix":
            x = torch.cat([expanded, td.gpt_neox.embed_in(inp[:, 1:])], dim=1)
            xm = torch.cat([msk.new_ones((rows, td.ratio)), msk[:, 1:]], dim=1)
            first = td.ratio - 1
        else:
            x = td.gpt_neox.embed_in(inp) + expanded[:, :LB, :]
            xm = msk
            first = 0
        if not hide_pads:
            xm = torch.ones_like(xm)
        h = td.gpt_neox(inputs_embeds=x, attention_mask=xm).last_hidden_state[:, first:, :]
        logits = td.embed_out(h)  # [rows, L_B, V]
        sel = keep & (labels != -100)
        loss = F.cross_entropy(logits[sel], labels[sel])
        return loss, logits.view(B, N - 1, LB, -1), int(sel.sum())


def official_windows(docs, L, LB, eos_id, pad_id, rng, front=True, boundary=True):
    """Windows [n, L] and attention_mask [n, L] as the official TokenizedCorpusDataset builds them
    from `docs` (lists of token ids without EOS): front pads 0..L_B-1 drawn from rng, the document,
    EOS, pads up to the block boundary; the padded stream cut into windows of L (tail dropped)."""
    toks, mask = [], []
    for d in docs:
        if front:
            k = int(rng.integers(0, LB))
            toks += [pad_id] * k
            mask += [0] * k
        toks += list(d) + [eos_id]
        mask += [1] * (len(d) + 1)
        if boundary:
            k = (-len(toks)) % LB
            toks += [pad_id] * k
            mask += [0] * k
    n = len(toks) // L
    t = np.array(toks[:n * L], dtype=np.int32).reshape(n, L)
    m = np.array(mask[:n * L], dtype=np.uint8).reshape(n, L)
    return t, m


def compare_grads(ref_module, grad_file, tol, skip=("block_decoder.gpt_neox.embed_in.weight",)):
    """Every parameter gradient of `ref_module` (after backward) against bt's --grads file:
    max |ours - ref| / max |ref| per tensor <= tol. Returns the worst (ratio, name)."""
    from safetensors.torch import load_file
    ours = load_file(grad_file)
    named = dict(ref_module.named_parameters())
    missing = [n for n in named if n not in ours and n not in skip]
    assert not missing, f"bt wrote no gradient for {missing}"
    extra = [n for n in ours if n not in named]
    assert not extra, f"bt wrote gradients for tensors the official tree lacks: {extra}"
    worst = (0.0, "")
    for name, g in ours.items():
        ref = named[name].grad
        ref = torch.zeros_like(named[name]) if ref is None else ref
        ref = ref.detach().double().reshape(g.shape)
        scale = float(ref.abs().max())
        diff = float((g.double() - ref).abs().max())
        r = diff / max(scale, 1e-30)
        if scale == 0.0:
            r = diff
        if r > worst[0]:
            worst = (r, name)
        if not r <= tol:
            raise AssertionError(f"gradient of {name}: max |ours - pytorch| / max |pytorch| = {r:.3e} > {tol:g}")
    return worst

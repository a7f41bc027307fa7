"""Training-step throughput of the PyTorch reference on the same model, for a side-by-side
comparison with `bt bench train` (docs/benchmarks.md).

The block model is the official module composition over HF GPT-NeoX modules (the peer test's
reference, tests/peer/test_peer_block.py); the vanilla model is HF GPTNeoXForCausalLM. Both
train in fp32 on the CPU with torch.optim.AdamW, random tokens, median of --steps timed steps.

    build/venv/bin/python3 bench/torch_train_step.py --config configs/tiny/block_b4.yaml
"""
import argparse
import os
import subprocess
import sys
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "peer"))
import peer_util as pu  # noqa: E402

pu.require_torch_and_transformers()
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import GPTNeoXForCausalLM  # noqa: E402

import test_peer_block as tpb  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--bt", default=os.environ.get("BT_BINARY", os.path.join(ROOT, "build", "release", "bt")))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    # The resolved config (defaults filled in) from bt itself.
    cfg = yaml.safe_load(subprocess.run([a.bt, "train", "--config", a.config, "--print-config"], check=True,
                                        stdout=subprocess.PIPE, text=True).stdout)
    m, t = cfg["model"], cfg["train"]
    B, L, V = t["micro_batch"], m["context_length"], m["vocab_size"]
    if m["kind"] == "block":
        model = tpb.BlockTransformerRef(m)
        step_loss = lambda ids: model(ids)[1]  # noqa: E731
    else:
        model = GPTNeoXForCausalLM(pu.neox_config(m["decoder"], m))

        def step_loss(ids):
            logits = model(input_ids=ids).logits
            return F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ids = torch.randint(0, V, (B, L))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = step_loss(ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    n = sum(p.numel() for p in model.parameters())
    print(f"torch train: {cfg['name']} ({m['kind']}), torch {torch.__version__} fp32 CPU, {a.threads} threads, "
          f"micro batch {B} x {L} tokens, {n / 1e6:.2f}M parameters")
    print(f"  step {med * 1e3:.1f} ms (median of {len(times)}, min {times[0] * 1e3:.1f}, max {times[-1] * 1e3:.1f}) | "
          f"{B * L / med:.0f} tokens/s")


if __name__ == "__main__":
    main()

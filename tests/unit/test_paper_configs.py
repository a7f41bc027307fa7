"""configs/paper against the official training configs, key by key (docs/configs.md, "The files").

OFFICIAL holds, file by file, what the official configs say: the non-default keys of
itsnamgyu/block-transformer's conf/trainer/<file> at commit 17842dd (the files' infrastructure keys,
IGNORED below, left out), plus, for the vanilla models, the widths of the Hugging Face config their
`model_name_or_path` names (PYTHIA). `official_resolved` applies what the official code does to a
file before training (util/config.py preprocess_config, model/utils.py): the head-dim rule for
attention heads, intermediate_size = 4 x hidden_size for block models, the padding options on when
absent, the base HF config for what a file leaves out, the DeepSpeed / HF Trainer defaults
(COMMON). MAP names the bt key each official key becomes. The test resolves every file in
configs/paper with `bt train --config FILE --print-config` and compares:
- every file in configs/paper has a row (ours have one too: OURS, an official row plus the keys
  that differ, with the reason);
- every official key of a row is in MAP or in IGNORED (a new official key needs a decision);
- every mapped value equals bt's resolved value, except the documented EXCEPTIONS.
Rows for official files that configs/paper does not have (yet) are listed, not failed.
Env: BT_BINARY, BT_SOURCE_DIR.
"""
import os
import subprocess
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import check, finish  # noqa: E402

SRC = os.environ.get("BT_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BT = os.environ.get("BT_BINARY", os.path.join(SRC, "build", "release", "bt"))
SOURCE = "itsnamgyu/block-transformer@17842dd conf/trainer/"

# ---- the official values -----------------------------------------------------------------------

# The HF configs the official files name as model_name_or_path (huggingface.co/EleutherAI/<name>/config.json):
# the vanilla models are these; the block decoders start from pythia-410m-deduped and override widths.
PYTHIA = {
    "pythia-70m-deduped": dict(num_hidden_layers=6, hidden_size=512, num_attention_heads=8, intermediate_size=2048),
    "pythia-160m-deduped": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "pythia-410m-deduped": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096),
    "pythia-1b-deduped": dict(num_hidden_layers=16, hidden_size=2048, num_attention_heads=8, intermediate_size=8192),
}
PYTHIA_COMMON = dict(vocab_size=50304, max_position_embeddings=2048, rotary_pct=0.25, rotary_emb_base=10000,
                     layer_norm_eps=1e-5, initializer_range=0.02)
# What every official run gets without its file saying it: ds_configs/default_linear_warmup.config
# (AdamW, WarmupCosineLR with cos_min_ratio 0.1, linear warmup) and the HF TrainingArguments
# defaults it leaves to "auto" (adam_epsilon 1e-8, max_grad_norm 1.0).
COMMON = {"scheduler": "cosine", "cos_min_ratio": 0.1, "adam_epsilon": 1e-8, "max_grad_norm": 1.0}


def block(name, emb, bl, bd, tl, td, lr, steps, stop, total, per_device, warmup, save, logging, R=2,
          strategy="prefix", method="concat", pads=None, zero_shot=False, extra=None):
    """The keys of a block file of conf/trainer (those that vary between the files)."""
    row = {
        "name": name, "block_length": 4, "total_batch_size": total, "per_device_train_batch_size": per_device,
        "max_length": 2048, "embedder.cls": "lookup", "embedder.projection_method": method,
        "embedder.config.vocab_size": 50304, "embedder.config.hidden_size": emb,
        "block_decoder.model_name_or_path": "EleutherAI/pythia-410m-deduped",
        "block_decoder.config.num_hidden_layers": bl, "block_decoder.config.hidden_size": bd,
        "token_decoder.model_name_or_path": "EleutherAI/pythia-410m-deduped",
        "token_decoder.decoding_strategy": strategy,
        "token_decoder.config.num_hidden_layers": tl, "token_decoder.config.hidden_size": td,
        "learning_rate": lr, "adam_beta1": 0.9, "adam_beta2": 0.95, "weight_decay": 0.1, "precision": "bf16",
        "num_train_steps": steps, "stop_steps": stop, "num_warmup_steps": warmup, "save_steps": save,
        "save_total_limit": None, "logging_steps": logging,
    }
    if strategy == "prefix":
        row["token_decoder.expansion_ratio"] = R
    if pads is not None:  # the file names the padding options (else the official default applies)
        row["random_pad_first_block"] = pads
        row["pad_to_block_boundary"] = pads
    if zero_shot:
        row["zero_shot_eval.enable"] = True
        row["zero_shot_eval.tasks"] = "lambada_openai,wikitext,hellaswag,arc_easy,sciq"
        row["zero_shot_eval.eval_steps"] = 10000
    row.update(extra or {})
    return row


def vanilla(name, base, lr, per_device, model_config=None):
    row = {"name": name, "total_batch_size": 256, "per_device_train_batch_size": per_device, "max_length": 2048,
           "model": "gpt-neo-x", "model_name_or_path": "EleutherAI/" + base, "learning_rate": lr,
           "adam_beta1": 0.9, "adam_beta2": 0.95, "weight_decay": 0.1, "precision": "bf16", "num_train_steps": 572000,
           "stop_steps": 572000, "num_warmup_steps": 3000, "save_steps": 10000, "save_total_limit": None,
           "logging_steps": 200}
    for k, v in (model_config or {}).items():
        row["model_config." + k] = v
    return row


UPTRAIN = {"load_from_vanilla.enable": True, "load_from_vanilla.method": "partition",
           "load_from_vanilla.initialize_mean_embedder_projection": True,
           "load_from_vanilla.initialize_identity_expansion_layer": True}

# file -> (official file, its values)
OFFICIAL = {
    "block_main_b4_5": block("block_main_b4_5", 64, 3, 256, 3, 256, 1e-3, 572000, 572000, 256, 32, 3000, 10000, 200,
                             pads=True, zero_shot=True),
    "block_main_b4_19": block("block_main_b4_19", 128, 3, 512, 3, 512, 1e-3, 572000, 572000, 256, 32, 3000, 10000,
                              200, pads=True, zero_shot=True),
    "block_main_b4_85": block("block_main_b4_85", 192, 6, 768, 6, 768, 6e-4, 572000, 572000, 256, 8, 3000, 10000,
                              200, pads=True, zero_shot=True),
    "block_main_b4_300": block("block_main_b4_300", 256, 12, 1024, 12, 1024, 3e-4, 572000, 572000, 256, 8, 3000,
                               10000, 200, zero_shot=True),
    "block_main_b4_800": block("block_main_b4_800", 512, 8, 2048, 8, 2048, 3e-4, 286000, 286000, 512, 16, 1500, 5000,
                               100, zero_shot=True),
    "block_main_b4_1.2b": block("block_main_b4_1.2b", 512, 12, 2048, 12, 2048, 2e-4, 286000, 286000, 512, 16, 1500,
                                5000, 100, zero_shot=True),
    "block_main_b4_85_flop_v70": block("block_main_b4_85_flop_v70", 192, 6, 768, 6, 768, 6e-4, 266317, 266317, 256,
                                       16, 3000, 10000, 200),
    "block_main_b4_300_flop_v70": block("block_main_b4_300_flop_v70", 256, 12, 1024, 12, 1024, 3e-4, 98120, 98120,
                                        256, 8, 3000, 8000, 200),
    "block_main_b4_800_flop_v70": block("block_main_b4_800_flop_v70", 512, 8, 2048, 8, 2048, 3e-4, 19300, 19300, 512,
                                        16, 1500, 5000, 100),
    # the official file name ends in .yaml.yaml
    "block_main_b4_1.2b_flop_v70": block("block_main_b4_1.2b_flop_v70", 512, 12, 2048, 12, 2048, 2e-4, 13530, 13530,
                                         512, 16, 1500, 4000, 100),
    "block_megabyte_b4_5": block("block_megabyte_b4_5", 64, 5, 256, 4, 128, 1e-3, 572000, 572000, 256, 32, 3000,
                                 10000, 200, strategy="summation"),
    "block_megabyte_b4_19": block("block_megabyte_b4_19", 128, 5, 512, 4, 256, 1e-3, 572000, 572000, 256, 16, 3000,
                                  10000, 200, strategy="summation"),
    "block_megabyte_b4_85": block("block_megabyte_b4_85", 192, 11, 768, 4, 512, 6e-4, 572000, 572000, 256, 32, 3000,
                                  10000, 200, strategy="summation"),
    "block_ablation_b4_85_lookup_prefix": block("block_ablation_b4_85_lookup_prefix", 192, 6, 768, 6, 768, 6e-4,
                                                572000, 20000, 256, 16, 3000, 5000, 200, R=1),
    "block_vanilla_ablation_b1_85": block("block_vanilla_ablation_b1_85", 768, 6, 768, 6, 768, 6e-4, 572000, 572000,
                                          256, 16, 3000, 5000, 200, R=1, pads=True, extra={"block_length": 1}),
    "block_uptrain_b4_85_10": block("block_uptrain_b4_85_10", 768, 6, 768, 6, 768, 6e-4, 57200, 57200, 256, 16, 3000,
                                    5000, 200, method="projection_layer", pads=True, extra=UPTRAIN),
    "block_uptrain_b4_300_10": block("block_uptrain_b4_300_10", 1024, 12, 1024, 12, 1024, 3e-4, 57200, 57200, 256, 8,
                                     3000, 5000, 200, method="projection_layer", pads=True, extra=UPTRAIN),
    "block_uptrain_b4_800_10": block("block_uptrain_b4_800_10", 2048, 8, 2048, 8, 2048, 3e-4, 28600, 28600, 512, 8,
                                     1500, 1250, 100, method="projection_layer", pads=True,
                                     extra=dict(UPTRAIN, **{"load_from_vanilla.model_name_or_path":
                                                            "EleutherAI/pythia-1b-deduped"})),
    # The component ablations (RoBERTa / RoBERTa-CLS embedders, the T5 cross-attention token
    # decoder; their bt keys come with those components: MAP needs entries for the keys below
    # that it lacks when their files land in configs/paper).
    "block_ablation_b4_85_roberta_prefix": block(
        "block_ablation_b4_85_roberta_prefix", 256, 6, 768, 6, 768, 6e-4, 572000, 20000, 256, 16, 3000, 5000, 200, R=1,
        extra={"embedder.cls": "roberta", "embedder.projection_method": None, "embedder.config.num_hidden_layers": 3}),
    "block_ablation_b4_85_cls_sum": block(
        "block_ablation_b4_85_cls_sum", 256, 6, 768, 6, 768, 6e-4, 572000, 50000, 256, 16, 3000, 5000, 200,
        strategy="summation", extra={"embedder.cls": "roberta_cls", "embedder.projection_method": None,
                                     "embedder.n_cls_tokens": 3, "embedder.config.num_hidden_layers": 3}),
    "block_ablation_b4_85_cls_cross_attn": block(
        "block_ablation_b4_85_cls_cross_attn", 256, 6, 768, 0, 0, 6e-4, 572000, 50000, 256, 32, 3000, 5000, 200,
        strategy="cross_attention",
        extra={"embedder.cls": "roberta_cls", "embedder.projection_method": None, "embedder.n_cls_tokens": 3,
               "embedder.config.num_hidden_layers": 3, "token_decoder.cls": "t5",
               "token_decoder.model_name_or_path": "t5-small", "token_decoder.config.d_model": 768,
               "token_decoder.config.d_ff": 3072, "token_decoder.config.num_layers": 6,
               "token_decoder.config.num_decoder_layers": 6, "token_decoder.config.num_heads": 12,
               "token_decoder.config.vocab_size": 50304}),
    "vanilla_31": vanilla("vanilla_31", "pythia-410m-deduped", 1e-3, 32,
                          dict(num_hidden_layers=6, num_attention_heads=8, hidden_size=256)),
    "vanilla_70": vanilla("vanilla_70", "pythia-70m-deduped", 1e-3, 8),
    "vanilla_160": vanilla("vanilla_160", "pythia-160m-deduped", 6e-4, 8),
    "vanilla_410": vanilla("vanilla_410", "pythia-410m-deduped", 3e-4, 8),
}
for _name in ("block_ablation_b4_85_cls_cross_attn",):  # no GPT-NeoX token decoder in this one
    for _k in ("token_decoder.config.num_hidden_layers", "token_decoder.config.hidden_size"):
        del OFFICIAL[_name][_k]
for _name in ("block_ablation_b4_85_roberta_prefix", "block_ablation_b4_85_cls_sum",
              "block_ablation_b4_85_cls_cross_attn"):
    OFFICIAL[_name]["embedder.model_name_or_path"] = "roberta-base"
    del OFFICIAL[_name]["embedder.projection_method"]

# Ours: no official file; an official row with the keys that differ, and why.
OURS = {
    f"block_b{lb}_85": ("block_vanilla_ablation_b1_85",
                        {"name": f"block_b{lb}_85", "block_length": lb, "embedder.config.hidden_size": 768 // lb,
                         "token_decoder.expansion_ratio": 2},
                        "the block-length ablation L_B = 1, 2, 4, 8 with R = 2 at 85M, on the recipe of the official "
                        "L_B = 1 point")
    for lb in (1, 2, 4, 8)
}

# Documented differences (docs/configs.md): (file, bt key) -> why.
EXCEPTIONS = {
    ("vanilla_31", "model.decoder.ffn_dim"):
        "the official code keeps pythia-410m-deduped's intermediate_size 4096 (model_config sets layers, heads and "
        "width only): 40.0M parameters, not the 31M of the name and the paper; bt keeps 4 x 256 = 1024",
}

# Official keys that are infrastructure, or that say what bt always does: not compared.
IGNORED = {
    "block_decoder.model_name_or_path": "resolved: the base HF config of the decoder (its values are compared)",
    "token_decoder.model_name_or_path": "resolved: the base HF config of the decoder (its values are compared)",
    "embedder.model_name_or_path": "resolved into the embedder's config",
    "model_name_or_path": "resolved: the vanilla model is this HF config (its values are compared)",
    "model": "gpt-neo-x: bt's vanilla model is GPT-NeoX",
    "zero_shot_eval.enable": "train.eval_tasks non-empty",
    "load_from_vanilla.model_name_or_path": "HF pythia-1b-deduped: bt reads its model.safetensors "
                                            "(load_from_vanilla.checkpoint_path; runs/<vanilla>/... for ours)",
}
# Keys every official file has that are infrastructure or bt's only behaviour (left out of OFFICIAL).
INFRASTRUCTURE = ["wandb", "wandb_project", "wandb_entity", "wandb_run_name", "output_dir", "wandb_run_id",
                  "resume_from_checkpoint", "pythia_pile_idxmaps_path", "dataset (pythia_pile: data.train)",
                  "block_split (fixed, = block_length)", "gradient_accumulation_steps (null: from the batch sizes)",
                  "batch_size_rampup_steps (null)", "tokenizer (pythia)", "use_pretrained_weights (false: from scratch)",
                  "attn_implementation", "loss_name", "n_embedding_tokens (1)", "expansion_method (expansion_layer)",
                  "token_decoding_loss.enable (true: bt's only loss)", "block_decoding_loss.enable (false)",
                  "auto_encoding_loss.enable (false)", "adaptive_lr_auto_encoder (null)", "freeze (false)",
                  "dataloader_num_workers", "deepspeed (COMMON)", "load_from_vanilla.config_path",
                  "load_from_vanilla.checkpoint_path (the official machine's paths)"]


def head_rule(hidden):
    """util/config.py: num_attention_heads = hidden_size // head dim (32 up to 256, 64 up to 1536, else 128)."""
    return hidden // (32 if hidden <= 256 else 64 if hidden <= 1536 else 128)


def official_resolved(row):
    """The official file's values after the official code's preprocessing and defaults."""
    r = dict(row)
    for k, v in COMMON.items():
        r["common." + k] = v
    if "block_length" in r:  # block model
        r.setdefault("random_pad_first_block", True)  # util/config.py: the default when absent (today)
        r.setdefault("pad_to_block_boundary", True)
        for part in ("block_decoder", "token_decoder"):
            if part + ".config.hidden_size" not in r:
                continue
            h = r[part + ".config.hidden_size"]
            r.setdefault(part + ".config.num_attention_heads", head_rule(h))
            r.setdefault(part + ".config.intermediate_size", 4 * h)
        if r.get("token_decoder.decoding_strategy") == "summation":  # one expanded vector per input
            r.setdefault("token_decoder.expansion_ratio", r["block_length"])
        base = PYTHIA["pythia-410m-deduped"]
    else:
        base = dict(PYTHIA[r["model_name_or_path"].split("/")[1]])
        for k, v in list(r.items()):
            if k.startswith("model_config."):
                base[k[len("model_config."):]] = v
                del r[k]
        for k, v in base.items():
            r["vanilla." + k] = v
        # pretrain_vanilla_transformer.py packs plain windows: no padding options
        r["random_pad_first_block"] = False
        r["pad_to_block_boundary"] = False
    for k, v in PYTHIA_COMMON.items():
        r["hf." + k] = v
    return r


def opt(y, path):
    node = y
    for p in path.split("."):
        node = node[p]
    return node


# official key -> (bt key, how bt's value reads as the official one)
MAP = {
    "name": ("name", None),
    "block_length": ("model.block_length", None),
    "total_batch_size": ("train.global_batch", None),
    "per_device_train_batch_size": ("train.micro_batch", None),
    "max_length": ("model.context_length", None),
    "random_pad_first_block": ("data.random_pad_first_block", None),
    "pad_to_block_boundary": ("data.pad_to_block_boundary", None),
    "embedder.cls": ("model.embedder.kind", None),
    "embedder.projection_method": ("model.embedder.projection_method", None),
    "embedder.config.vocab_size": ("model.vocab_size", None),
    "embedder.config.hidden_size": ("model.embedder.dim", None),
    "token_decoder.expansion_ratio": ("model.token_decoder.prefix_length", None),
    "token_decoder.decoding_strategy": ("model.token_decoder.decoding_strategy", None),
    "learning_rate": ("optim.lr", None),
    "adam_beta1": ("optim.betas", lambda b: b[0]),
    "adam_beta2": ("optim.betas", lambda b: b[1]),
    "weight_decay": ("optim.weight_decay", None),
    "precision": ("train.precision", None),
    "num_train_steps": ("train.steps", None),
    "stop_steps": ("train.stop_step", None),
    "num_warmup_steps": ("optim.warmup_steps", None),
    "save_steps": ("train.checkpoint_every", None),
    # null: HF keeps every checkpoint; bt's keep_checkpoints 0 keeps all
    "save_total_limit": ("train.keep_checkpoints", lambda k: None if k == 0 else k),
    "logging_steps": ("train.log_every", None),
    "zero_shot_eval.tasks": ("train.eval_tasks", None),
    "zero_shot_eval.eval_steps": ("train.eval_tasks_every", None),
    "load_from_vanilla.enable": ("load_from_vanilla.enable", None),
    "load_from_vanilla.method": ("load_from_vanilla.method", None),
    "load_from_vanilla.initialize_mean_embedder_projection":
        ("load_from_vanilla.initialize_mean_embedder_projection", None),
    "load_from_vanilla.initialize_identity_expansion_layer":
        ("load_from_vanilla.initialize_identity_expansion_layer", None),
    "common.scheduler": ("optim.schedule", None),
    "common.cos_min_ratio": ("optim.min_lr_ratio", None),
    "common.adam_epsilon": ("optim.eps", None),
    "common.max_grad_norm": ("optim.grad_clip", None),
    "hf.vocab_size": ("model.vocab_size", None),
    "hf.max_position_embeddings": ("model.context_length", None),
    "hf.rotary_pct": ("model.rotary_pct", None),
    "hf.rotary_emb_base": ("model.rotary_base", None),
    "hf.layer_norm_eps": ("model.layernorm_eps", None),
    "hf.initializer_range": ("model.init_std", None),
}
for _part in ("block_decoder", "token_decoder"):
    for _o, _b in (("num_hidden_layers", "layers"), ("hidden_size", "dim"), ("num_attention_heads", "heads"),
                   ("intermediate_size", "ffn_dim")):
        MAP[f"{_part}.config.{_o}"] = (f"model.{_part}.{_b}", None)
for _o, _b in (("num_hidden_layers", "layers"), ("hidden_size", "dim"), ("num_attention_heads", "heads"),
               ("intermediate_size", "ffn_dim")):
    MAP["vanilla." + _o] = ("model.decoder." + _b, None)


def resolved(path):
    p = subprocess.run([BT, "train", "--config", path, "--print-config"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    if p.returncode != 0:
        raise AssertionError(f"bt train --config {path} --print-config failed:\n{p.stdout}")
    return yaml.safe_load(p.stdout)


def same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    if b is None:
        return a is None or a == ""
    return a == b


def main():
    paper = os.path.join(SRC, "configs", "paper")
    files = sorted(f[:-5] for f in os.listdir(paper) if f.endswith(".yaml"))
    check("configs/paper has files", len(files) >= 20, f"{len(files)} files")
    for stem in files:
        if stem in OURS:
            base, diff, why = OURS[stem]
            row, source = dict(OFFICIAL[base], **diff), f"ours ({why}); recipe of {SOURCE}{base}.yaml"
        elif stem in OFFICIAL:
            row, source = OFFICIAL[stem], SOURCE + stem + (".yaml.yaml" if stem.endswith("1.2b_flop_v70") else ".yaml")
        else:
            check(f"{stem}: has a row in the official table", False,
                  "add its official values (with their source) to OFFICIAL, or to OURS with the reason")
            continue
        y = resolved(os.path.join(paper, stem + ".yaml"))
        want = official_resolved(row)
        compared, bad = 0, []
        for key, value in sorted(want.items()):
            if key in IGNORED:
                continue
            if key not in MAP:
                bad.append(f"official key '{key}' ({value!r}) has no bt key in MAP: map it or list it in IGNORED")
                continue
            bt_key, read = MAP[key]
            try:
                got = opt(y, bt_key)
            except (KeyError, TypeError):
                bad.append(f"{key} -> {bt_key}: not in the resolved config")
                continue
            if read:
                got = read(got)
            if (stem, bt_key) in EXCEPTIONS:
                if same(got, value):
                    bad.append(f"{bt_key} now equals the official {value!r}: drop the exception")
                continue
            compared += 1
            if not same(got, value):
                bad.append(f"{key} = {value!r} (official) but {bt_key} = {got!r}")
        # bt keys the official row leaves to bt: eval_tasks empty when the file has no zero_shot_eval.
        if "zero_shot_eval.tasks" not in want and y["train"]["eval_tasks"]:
            bad.append(f"train.eval_tasks = {y['train']['eval_tasks']!r} but the official file has no zero_shot_eval")
        check(f"{stem}: {compared} keys equal {source}", not bad, "; ".join(bad))
    missing = sorted(set(OFFICIAL) - set(files))
    print("official files not in configs/paper: " + (", ".join(missing) or "none"))
    print("not compared (infrastructure, or bt's only behaviour): " + ", ".join(INFRASTRUCTURE))
    for (f, k), why in EXCEPTIONS.items():
        print(f"exception {f} {k}: {why}")
    finish()


if __name__ == "__main__":
    main()

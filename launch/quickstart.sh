#!/usr/bin/env bash
# The main job of the README, on a fresh Debian 12 machine without a GPU: install, build,
# prepare a real corpus (the King James Bible from Debian's bible-kjv package), train the tiny
# Block Transformer on the CPU for a few minutes, and sample text from its checkpoint.
# Environment: STEPS (default 300), OUT (default out/quickstart), JOBS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS="${STEPS:-300}"
OUT="${OUT:-out/quickstart}"
JOBS="${JOBS:-2}"

echo "== 1/5 dependencies (apt)"
launch/install-deps.sh

echo "== 2/5 build"
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/release -j "$JOBS"
BT=build/release/bt

echo "== 3/5 corpus: the King James Bible, one document per chapter"
mkdir -p "$OUT"
if [ ! -s "$OUT/data/manifest.json" ]; then
  launch/quickstart-corpus.sh "$OUT/kjv.txt"
  "$BT" prepare --input "$OUT/kjv.txt" --tokenizer train-spm:4096 --val-fraction 0.02 --out "$OUT/data"
fi

echo "== 4/5 train configs/tiny/block_b4.yaml on the CPU for $STEPS steps"
"$BT" train --config configs/tiny/block_b4.yaml train.device=cpu train.steps="$STEPS" \
  train.eval_every=100 train.checkpoint_every=100 \
  data.train="$OUT/data/train-*.h5" data.val="$OUT/data/val-*.h5" \
  train.out_dir="$OUT/run" --resume auto

echo "== 5/5 sample from the checkpoint"
"$BT" generate --ckpt "$OUT/run/checkpoints/latest" --prompt "And God said" --max-new-tokens 64 \
  --temperature 0.8 --top-k 40 --seed 1
echo
echo "Next: $BT generate --ckpt $OUT/run/checkpoints/latest --prompt 'In the beginning' --max-new-tokens 200"

#!/usr/bin/env bash
# The README's first hour, on a fresh Debian 12 machine without a GPU: install what the build
# needs (apt), build bt, write a real corpus (the King James Bible from Debian's bible-kjv
# package), tokenize it into HDF5 shards with a SentencePiece model trained on it, train the tiny
# Block Transformer on the CPU for a few minutes, and sample text from its checkpoint.
#
# Prints one line per phase (on a terminal, the line shows the phase's latest progress while it
# runs); everything the tools print goes to $OUT/quickstart.log. Ends with a summary: the time
# taken, the validation loss, where the run and its TensorBoard logs are, and commands to try
# next. When a phase fails: the end of the log and its path. Running it again reuses the
# corpus and resumes the run (STEPS beyond the last run's trains further).
#
# Environment: STEPS (default 300), OUT (default out/quickstart), JOBS (build jobs, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS="${STEPS:-300}"
OUT="${OUT:-out/quickstart}"
JOBS="${JOBS:-2}"
if ! [[ "$STEPS" =~ ^[1-9][0-9]*$ ]]; then
  echo "quickstart: STEPS must be a positive integer (got '$STEPS')" >&2
  exit 2
fi
mkdir -p "$OUT"
LOG="$OUT/quickstart.log"
: >"$LOG"
BT=build/release/bt
RUN="$OUT/run"
t_start=$SECONDS

duration() {  # 75 -> 1m15s
  local s=$1
  if ((s >= 3600)); then
    printf '%dh%02dm' $((s / 3600)) $((s % 3600 / 60))
  elif ((s >= 60)); then
    printf '%dm%02ds' $((s / 60)) $((s % 60))
  else
    printf '%ds' "$s"
  fi
}

# On a terminal, a background loop rewrites the phase's line with the log's latest line.
ticker=""
stop_ticker() {
  if [[ -n "$ticker" ]]; then
    kill "$ticker" 2>/dev/null || true
    wait "$ticker" 2>/dev/null || true
    ticker=""
    printf '\r\033[K'
  fi
}
trap stop_ticker EXIT
start_ticker() {
  [[ -t 1 ]] || return 0
  local label=$1 cols
  cols=$(tput cols 2>/dev/null || echo 100)
  (
    while :; do
      latest=$(tail -c 4000 "$LOG" | tr '\r' '\n' | grep -v '^[[:space:]]*$' | tail -n 1 | tr -s ' ')
      printf '\r\033[K%s' "$(printf '%s  [%s] %s' "$label" "$(duration $((SECONDS - phase_t0)))" "$latest" |
        cut -c "1-$((cols - 1))")"
      sleep 1
    done
  ) &
  ticker=$!
}

# phase NAME DESCRIPTION COMMAND...: runs COMMAND with its output in the log; prints
# "NAME  DESCRIPTION  done in T" (plus $result when the caller's next step sets it), or the
# failure with the end of the log.
phase_t0=0
phase() {
  local name=$1 what=$2
  shift 2
  local label
  label=$(printf '%-9s%s' "$name" "$what")
  local first_line
  first_line=$(($(wc -l <"$LOG") + 1))
  printf '\n==== %s: %s\n$ %s\n' "$name" "$what" "$*" >>"$LOG"
  phase_t0=$SECONDS
  start_ticker "$label"
  local rc=0
  "$@" >>"$LOG" 2>&1 || rc=$?
  stop_ticker
  if [[ $rc -ne 0 ]]; then
    printf '%s  FAILED after %s (exit %d)\n' "$label" "$(duration $((SECONDS - phase_t0)))" "$rc"
    echo "---- the end of this phase's log:"
    tail -n "+$first_line" "$LOG" | tail -n 25 | sed 's/^/  /'
    echo "---- full log: $LOG"
    exit "$rc"
  fi
  printf '%s  done in %s' "$label" "$(duration $((SECONDS - phase_t0)))"
}
note() { printf '%s\n' "${1:+ ($1)}"; }  # ends a phase's line

install() {
  # sudo may need a password: ask for it on the terminal before the output goes to the log.
  if [[ "$(id -u)" -ne 0 ]] && ! launch/install-deps.sh --build-only --check >/dev/null; then
    echo "install  needs root for apt-get; sudo may ask for your password"
    sudo -v
  fi
  phase install "apt packages (launch/install-deps.sh --build-only)" launch/install-deps.sh --build-only
  note "$(grep -m1 '^installing:' "$LOG" | wc -w | awk '{ print ($1 > 1 ? $1 - 1 " packages installed" : "all present") }')"
}

configure_and_build() {
  cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release && cmake --build build/release -j "$JOBS" --target bt
}
build() {
  phase build "build/release/bt (cmake, Release)" configure_and_build
  note "$("$BT" --version | head -n 1)"
}

corpus() {
  if [[ -s "$OUT/data/manifest.json" ]]; then
    printf '%-9s%s  reused %s\n' corpus "the King James Bible" "$OUT/kjv.txt"
    return
  fi
  phase corpus "the King James Bible, one document per chapter" launch/quickstart-corpus.sh "$OUT/kjv.txt"
  note "$OUT/kjv.txt, $(($(wc -c <"$OUT/kjv.txt") / 1000)) kB"
}

prepare() {
  if [[ -s "$OUT/data/manifest.json" ]]; then
    printf '%-9s%s  reused %s\n' prepare "SentencePiece model and HDF5 shards" "$OUT/data"
    return
  fi
  phase prepare "train a SentencePiece model (4096 pieces), write HDF5 shards" \
    "$BT" prepare --input "$OUT/kjv.txt" --tokenizer train-spm:4096 --val-fraction 0.02 --out "$OUT/data"
  note "$(grep -m1 -o 'train [0-9]* tokens' "$LOG" || true), $OUT/data"
}

train() {
  phase train "configs/tiny/block_b4.yaml on the CPU, $STEPS steps" \
    "$BT" train --config configs/tiny/block_b4.yaml train.device=cpu train.steps="$STEPS" \
    train.eval_every=100 train.checkpoint_every=100 \
    data.train="$OUT/data/train-*.h5" data.val="$OUT/data/val-*.h5" \
    train.out_dir="$RUN" --resume auto
  local tps
  tps=$(grep -o '"tokens_per_s":[0-9.e+]*' "$RUN/metrics.jsonl" 2>/dev/null | tail -n 1 | cut -d: -f2)
  note "$(val_loss_text)${tps:+, $(printf '%.0f' "$tps") tokens/s}"
}

generate_sample() {
  "$BT" generate --ckpt "$RUN/checkpoints/latest" --prompt "And God said" --max-new-tokens 64 \
    --temperature 0.8 --top-k 40 --seed 1 >"$OUT/sample.txt"
}
sample() {
  phase sample "64 tokens after \"And God said\"" generate_sample
  note "$OUT/sample.txt"
  grep -v '^=== sample' "$OUT/sample.txt" | fold -s -w 96 | sed 's/^/         | /'
}

# "validation loss 4.521 at step 300 (from 6.213 at step 100)", from the run's metrics.jsonl.
val_loss_text() {
  local evals
  evals=$(grep '"val_loss":' "$RUN/metrics.jsonl" 2>/dev/null |
    sed -n 's/.*"step":\([0-9]*\).*"val_loss":\([-0-9.e+]*\).*/\1 \2/p' || true)
  if [[ -z "$evals" ]]; then
    echo "no validation loss in $RUN/metrics.jsonl"
    return
  fi
  awk 'NR == 1 { s0 = $1; v0 = $2 } { s = $1; v = $2 }
       END { printf "validation loss %.3f at step %d", v, s; if (s != s0) printf " (from %.3f at step %d)", v0, s0 }' \
    <<<"$evals"
}

# Decode throughput of the tiny block model against the tiny vanilla model of the same
# non-embedding size (bt bench infer: random weights, the decode-heavy setting 16:256, batch 16).
speed_line=""
bench_infer() {
  "$BT" bench infer --config configs/tiny/block_b4.yaml --vs configs/tiny/vanilla.yaml --device cpu --batch 16 \
    --settings decode --no-split --json "$OUT/bench_infer.json"
}
speed() {
  phase speed "decode throughput: tiny block vs tiny vanilla (bt bench infer)" bench_infer
  # bench_infer.json: one row per model, "model" then "tokens_per_s" among its fields.
  speed_line=$(awk -F'[:,]' '/"model":/ { gsub(/[ "]/, "", $2); m = $2 } /"tokens_per_s":/ { t[m] = $2 + 0 }
    END { b = t["tiny_block_b4"]; v = t["tiny_vanilla"]
          if (b > 0 && v > 0) printf "tiny block %.0f tokens/s vs tiny vanilla %.0f tokens/s: %.2fx", b, v, b / v }' \
    "$OUT/bench_infer.json")
  note "${speed_line:-see $LOG}"
}

install
build
corpus
prepare
train
sample
speed

cat <<EOF

quickstart done in $(duration $((SECONDS - t_start))): $(val_loss_text)
  run          $RUN  (config.yaml, metrics.jsonl, checkpoints/latest)
  TensorBoard  $RUN/tensorboard  (pip install tensorboard && tensorboard --logdir $RUN/tensorboard)
  full log     $LOG
next:
  $BT generate --ckpt $RUN/checkpoints/latest --prompt 'In the beginning' --max-new-tokens 200
  $BT eval --ckpt $RUN/checkpoints/latest --data "$OUT/data/val-*.h5"
  STEPS=2000 launch/quickstart.sh     # train on: resumes this run
  $BT train --config configs/tiny/vanilla.yaml data.train="$OUT/data/train-*.h5" data.val="$OUT/data/val-*.h5" train.device=cpu train.out_dir=$OUT/vanilla
  launch/test.sh                      # every test
decode speed (bt bench infer, random weights, batch 16, 16 prompt + 256 new tokens, CPU): ${speed_line:-not measured}
EOF

#!/usr/bin/env bash
# Runs on the GPU machine from a bundle made by launch/gpu-bundle.sh (copied there as run.sh):
# the GPU tests, then bf16 training benchmarks of block_main_b4_85 and vanilla_160 at L = 2048
# with the time per op group, then their decoding throughput in the paper's two settings at the
# largest batch that fits (bt bench infer --batch auto). Writes report.txt and the logs into the
# folder given as $1.
set -uo pipefail
out=$(realpath -m "${1:-gpu-report}")
here=/tmp/bt-gpu-bundle
rm -rf "$here"
mkdir -p "$here"
tar -C "$here" -xJf "$(cd "$(dirname "$0")" && pwd)/bundle.tar.xz" || { echo "cannot unpack the bundle" >&2; exit 1; }
mkdir -p "$out"
report=$out/report.txt
: >"$report"
say() { echo "$*" | tee -a "$report"; }

# cuBLASLt from the machine's CUDA toolkit, or from PyTorch's CUDA wheels.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -e "$d/libcublasLt.so.13" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
if ! [[ "${LD_LIBRARY_PATH:-}" == *cuda* ]]; then
  lt=$(find / -name 'libcublasLt.so.13*' -not -path '*/proc/*' 2>/dev/null | head -n 1)
  [ -n "$lt" ] && LD_LIBRARY_PATH="$(dirname "$lt"):${LD_LIBRARY_PATH:-}"
fi
export LD_LIBRARY_PATH="$here/lib:${LD_LIBRARY_PATH:-}"
export BT_SOURCE_DIR=$here BT_BINARY=$here/bin/bt OMP_NUM_THREADS=8

say "blockformer GPU bundle run, $(date -u +%FT%TZ)"
say "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 1)"
status=0
for t in bt_gpu_test_cuda_ops bt_gpu_test_cuda_model bt_gpu_test_cuda_train bt_gpu_test_cuda_cli \
  bt_gpu_test_cuda_decode bt_gpu_test_cuda_eval_tasks; do
  "$here/bin/$t" --gtest_brief=1 >"$out/$t.log" 2>&1
  rc=$?
  skipped=$(grep -c "SKIPPED \]" "$out/$t.log")
  say "$t: exit $rc, $(grep -E '^\[  (PASSED|FAILED)' "$out/$t.log" | tr '\n' ' ') skipped lines: $skipped"
  grep -E "^\[  FAILED  \]|Failure|worst" "$out/$t.log" | head -n 40 >>"$report"
  [ "$rc" -eq 0 ] && [ "$skipped" -eq 0 ] || status=1
done
for cfg in block_main_b4_85 vanilla_160; do
  say "== bench train $cfg (bf16, L = 2048)"
  timeout 150 "$here/bin/bt" bench train --config "$here/configs/paper/$cfg.yaml" train.device=cuda \
    train.precision=bf16 model.context_length=2048 --steps 5 --profile 2>&1 | tee -a "$report" || status=1
done
for setting in "prefill 2048:128" "decode 128:2048"; do
  read -r name spec <<<"$setting"
  say "== bench infer block_main_b4_85 vs vanilla_160, $name-heavy $spec (bf16, L = 2048, batch auto)"
  timeout 240 "$here/bin/bt" bench infer --config "$here/configs/paper/block_main_b4_85.yaml" \
    --vs "$here/configs/paper/vanilla_160.yaml" --device cuda --settings "$name" --"$name"-heavy "$spec" \
    --batch 16,auto --markdown model.context_length=2048 2>&1 | tee -a "$report" || status=1
done
say "status: $status"
exit "$status"

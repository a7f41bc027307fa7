#!/usr/bin/env bash
# The GPU check (docs/design.md §9.6): configure and build for sm_90 only (`cmake --preset gpu`), run the
# GPU tests (ctest -L gpu), then benchmark a bf16 training step of block_main_b4_85 and
# vanilla_160 at L = 2048 on one GPU. Prints a short report (pass/fail per test, tokens/s,
# memory) and writes it to a file. Sized to finish in under 8 minutes on one H200, build
# included.
#
#   launch/gpu-check.sh [report_file]        (default gpu-report.txt; exit status 0 = all passed)
#
# Needs: an NVIDIA GPU of sm_90 (H100/H200; for sm_80 use -DCMAKE_CUDA_ARCHITECTURES=80 by
# hand), the CUDA toolkit (nvcc, cuBLASLt), CMake >= 3.25, Ninja, a C++20 compiler.
# Libraries (HDF5, yaml-cpp, OpenBLAS, fmt, CLI11, nlohmann-json, SentencePiece, GoogleTest,
# pkg-config; MPI optional): from the system (apt-get install libhdf5-dev libyaml-cpp-dev
# libopenblas-dev libfmt-dev libcli11-dev nlohmann-json3-dev libsentencepiece-dev libgtest-dev
# pkgconf), or, when configuring against the system fails, from .deb files that
# launch/fetch-debs.sh downloaded on a machine of the same distribution release (folder .debs/
# in the checkout, or $BT_DEBS): they are unpacked with `dpkg-deb -x` into build/gpu-deps/root
# and CMAKE_PREFIX_PATH, PKG_CONFIG_PATH, HDF5_ROOT, PATH and LD_LIBRARY_PATH point there.
set -euo pipefail

report=$(realpath -m "${1:-gpu-report.txt}")
cd "$(dirname "$0")/.."
root_dir=$PWD
logs=$root_dir/build/gpu-logs
mkdir -p "$logs"
: >"$report"
t0=$SECONDS
status=0

say() { echo "$*" | tee -a "$report"; }
fail() {
  say "FAIL: $*"
  status=1
}
# The last lines of a log, indented, into the report.
tail_log() { tail -n "${2:-25}" "$1" | sed 's/^/    /' | tee -a "$report"; }

say "blockformer gpu-check, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(hostname)"
if command -v nvidia-smi >/dev/null; then
  say "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1)"
else
  say "GPU: nvidia-smi not found"
fi
say "CUDA: $(nvcc --version 2>/dev/null | tail -n 1 || echo 'nvcc not on PATH (CMake looks in /usr/local/cuda)')"

# ---- dependencies from .deb files (only when the system lacks them) ------------------------------
use_debs() {
  local debs=${BT_DEBS:-$root_dir/.debs}
  local prefix=$root_dir/build/gpu-deps/root
  local arch
  arch=$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)
  if ! compgen -G "$debs/*.deb" >/dev/null; then
    say "no .deb files in $debs: install the packages listed in this script, or run launch/fetch-debs.sh on a"
    say "machine of the same distribution release and copy its .debs/ folder here (or set BT_DEBS)"
    return 1
  fi
  say "configuring against the system failed; using the .deb files in $debs"
  rm -rf "$prefix"
  mkdir -p "$prefix"
  local d
  for d in "$debs"/*.deb; do
    dpkg-deb -x "$d" "$prefix"
  done
  # pkg-config files name /usr: point them at the unpacked tree.
  find "$prefix" -name '*.pc' -print0 | xargs -0 -r sed -i -E \
    -e "s#^(prefix|exec_prefix|libdir|includedir)=/usr#\\1=$prefix/usr#" -e "s#-([IL])/usr/#-\\1$prefix/usr/#g"
  local lib=$prefix/usr/lib/$arch
  export CMAKE_PREFIX_PATH="$prefix/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export PKG_CONFIG_PATH="$lib/pkgconfig:$lib/openblas-pthread/pkgconfig:$prefix/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  export LD_LIBRARY_PATH="$lib:$lib/openblas-pthread:$lib/hdf5/serial${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LIBRARY_PATH="$lib:$lib/openblas-pthread${LIBRARY_PATH:+:$LIBRARY_PATH}"
  export PATH="$prefix/usr/bin:$PATH"
  export HDF5_ROOT="$lib/hdf5/serial"
}

# ---- configure and build (sm_90 only) ------------------------------------------------------------
t=$SECONDS
if ! cmake --preset gpu >"$logs/configure.log" 2>&1; then
  tail -n 15 "$logs/configure.log"
  if use_debs; then
    rm -rf build/gpu
    if ! cmake --preset gpu >"$logs/configure.log" 2>&1; then
      fail "configure (cmake --preset gpu), see $logs/configure.log"
      tail_log "$logs/configure.log"
      exit 1
    fi
  else
    fail "configure (cmake --preset gpu), see $logs/configure.log"
    exit 1
  fi
fi
mapfile -t gpu_targets < <(find tests/gpu -maxdepth 1 -name 'test_*.cpp' -printf 'bt_gpu_%f\n' | sed 's/\.cpp$//' | sort)
if ! cmake --build build/gpu -j "$(nproc)" --target bt "${gpu_targets[@]}" >"$logs/build.log" 2>&1; then
  fail "build, see $logs/build.log"
  grep -E 'error|FAILED' "$logs/build.log" | head -n 20 | sed 's/^/    /' | tee -a "$report"
  exit 1
fi
say "build: ok in $((SECONDS - t)) s (targets bt ${gpu_targets[*]})"

# ---- GPU tests -----------------------------------------------------------------------------------
t=$SECONDS
if ctest --test-dir build/gpu -L gpu --output-on-failure --timeout 240 >"$logs/ctest.log" 2>&1; then
  ctest_ok=1
else
  ctest_ok=0
fi
passed=$(grep -cE 'Test +#[0-9]+: .* Passed' "$logs/ctest.log" || true)
failed=$(grep -cE 'Test +#[0-9]+: .*(\*\*\*Failed|\*\*\*Exception|\*\*\*Timeout|Not Run)' "$logs/ctest.log" || true)
skipped=$(grep -cE 'Test +#[0-9]+: .*Skipped' "$logs/ctest.log" || true)
say "gpu tests: $passed passed, $failed failed, $skipped skipped in $((SECONDS - t)) s"
grep -E 'Test +#[0-9]+: ' "$logs/ctest.log" |
  sed -E 's/^ *[0-9]+\/[0-9]+ Test +#[0-9]+: ([^ ]+) .*(Passed|\*\*\*Failed|\*\*\*Skipped|\*\*\*Exception[^ ]*|\*\*\*Timeout|Not Run)[^0-9]*([0-9.]+ sec)?.*/  \2  \1  \3/' |
  sed -E 's/\*\*\*//' | tee -a "$report"
# Lines the tests print about their own numbers (worst gradient errors, loss curves).
grep -E '^\S.*(worst gradient|loss cpu)' "$logs/ctest.log" | sed 's/^/    /' | tee -a "$report" || true
if [[ $ctest_ok != 1 || $failed != 0 ]]; then
  fail "gpu tests, see $logs/ctest.log"
  grep -E '^\S*(test_|tests/gpu).*Failure|Expected|Which is|: error|got ' "$logs/ctest.log" | head -n 30 |
    sed 's/^/    /' | tee -a "$report" || true
fi
if [[ $skipped != 0 && $passed == 0 ]]; then
  fail "every GPU test skipped: no usable GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
fi

# ---- training throughput -------------------------------------------------------------------------
bench() {
  local name=$1 cfg=$2 log=$logs/bench_$1.log mem=$logs/mem_$1.csv
  local poll=""
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$mem" 2>/dev/null &
    poll=$!
  fi
  local ok=1
  BT_CUDA_STATS=1 timeout 180 build/gpu/bt bench train --config "$cfg" model.context_length=2048 \
    train.device=cuda train.precision=bf16 >"$log" 2>&1 || ok=0
  if [[ -n $poll ]]; then
    kill "$poll" 2>/dev/null || true
    wait "$poll" 2>/dev/null || true
  fi
  if [[ $ok != 1 ]]; then
    fail "bench train $name ($cfg), see $log"
    tail_log "$log" 10
    return
  fi
  local tps step peak arena
  tps=$(grep -oE '[0-9.]+ tokens/s' "$log" | head -n 1 || true)
  step=$(grep -oE 'step [0-9.]+ ms' "$log" | head -n 1 || true)
  peak=$(sort -n "$mem" 2>/dev/null | tail -n 1 || true)
  arena=$(grep -oE 'arena [0-9]+ MiB used of [0-9]+ MiB' "$log" | head -n 1 || true)
  say "bench train $name (L=2048, bf16): ${tps:-? tokens/s}, ${step:-step ?}, peak GPU memory ${peak:-?} MiB (nvidia-smi), ${arena:-arena ?}"
  grep -E 'parameters|micro batch' "$log" | sed 's/^/    /' | tee -a "$report" || true
}
bench block_main_b4_85 configs/paper/block_main_b4_85.yaml
bench vanilla_160 configs/paper/vanilla_160.yaml

if [[ $status == 0 ]]; then
  say "gpu-check: PASS in $((SECONDS - t0)) s (logs in $logs)"
else
  say "gpu-check: FAIL in $((SECONDS - t0)) s (logs in $logs)"
fi
say "report: $report"
exit "$status"

#!/usr/bin/env bash
# Runs the libFuzzer targets of tests/fuzz (docs/testing.md) for as long as asked, and keeps what
# they find:
#   out/fuzz/<target>/corpus/    inputs that reached new code (grows from run to run; the seeds
#                                committed in tests/fuzz/corpus/<target> are read, never written)
#   out/fuzz/<target>/findings/  crash-*, timeout-*, oom-*, leak-* inputs; each run stops at its
#                                target's first finding (reproduce: build/fuzz/fuzz_<target> FILE)
#   out/fuzz/<target>/log        libFuzzer's output of the last run
# Builds the targets first (clang, build/fuzz) unless --ci is given. Ends with one line per
# target: executions, new corpus entries, peak memory, findings. Exit status 1 on any finding.
#
# usage: launch/fuzz.sh [--ci] [SECONDS] [TARGET...]
#   SECONDS   per target (default 60)
#   TARGET    config safetensors shard spm_model tokenizer_dir hf_tokenizer documents token_files
#             (default: all)
#   --ci      use the fuzzers already built in $BUILD, start from the seeds alone, fixed random
#             seed, at most CI_RUNS (5000) executions (ctest's fuzz.* tests run this way, a few
#             seconds per target)
# Environment: BUILD (default build/fuzz), OUT (default out/fuzz), JOBS (build jobs, default 2),
#   FUZZ_ARGS (more libFuzzer flags, e.g. "-jobs=4 -workers=4" on a bigger machine).
set -euo pipefail
cd "$(dirname "$0")/.."

ci=0
if [[ "${1:-}" == "--ci" ]]; then
  ci=1
  shift
fi
seconds="${1:-60}"
if [[ $# -gt 0 ]]; then shift; fi
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [[ "$seconds" -lt 1 ]]; then
  echo "$0: SECONDS must be a positive integer (got '$seconds'); usage: launch/fuzz.sh [--ci] [SECONDS] [TARGET...]" >&2
  exit 2
fi
all_targets=(config safetensors shard spm_model tokenizer_dir hf_tokenizer documents token_files)
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then targets=("${all_targets[@]}"); fi
for t in "${targets[@]}"; do
  if [[ ! -d "tests/fuzz/corpus/$t" ]]; then
    echo "$0: unknown target '$t'; the targets are: ${all_targets[*]}" >&2
    exit 2
  fi
done

BUILD="${BUILD:-build/fuzz}"
OUT="${OUT:-out/fuzz}"
JOBS="${JOBS:-2}"

if [[ $ci -eq 0 ]]; then
  cxx=$(command -v clang++-14 || command -v clang++ || true)
  cc=$(command -v clang-14 || command -v clang || true)
  if [[ -z "$cxx" || -z "$cc" ]]; then
    echo "$0: clang is missing; install it with launch/install-deps.sh (Debian packages clang-14 libclang-rt-14-dev)" >&2
    exit 1
  fi
  if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
    cmake -S tests/fuzz -B "$BUILD" -G Ninja -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_C_COMPILER="$cc" >/dev/null
  fi
  cmake --build "$BUILD" -j "$JOBS" >/dev/null
fi

# A finding is: a crash or sanitizer report (crash-*), an input running longer than 10 s
# (timeout-*), more than 2 GB of memory or one allocation above 512 MB (oom-*) -- every seed is
# under 16 kB, so no input should need that much -- or a leak (leak-*).
flags=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1)
# CI runs the same mutations every time: a fixed seed and at most CI_RUNS executions (whichever
# of SECONDS or CI_RUNS comes first), so a failure there is the code's, not luck's, and replays
# with `-seed=1 -runs=N` on any machine.
if [[ $ci -eq 1 ]]; then flags+=(-seed=1 -runs="${CI_RUNS:-5000}"); fi

status=0
summary=()
for t in "${targets[@]}"; do
  bin="$BUILD/fuzz_$t"
  if [[ ! -x "$bin" ]]; then
    echo "$0: $bin is not built (configure with -DBT_FUZZ=ON, or run launch/fuzz.sh without --ci)" >&2
    exit 1
  fi
  dir="$OUT/$t"
  if [[ $ci -eq 1 ]]; then rm -rf "$dir"; fi
  mkdir -p "$dir/corpus" "$dir/findings"
  dict=()
  if [[ -f "tests/fuzz/$t.dict" ]]; then dict=(-dict="tests/fuzz/$t.dict"); fi
  before=$(find "$dir/corpus" -type f | wc -l)
  rc=0
  # The targets' scratch files (in memory where /dev/shm exists), removed here even when a
  # finding stops a run.
  scratch=$(mktemp -d "$([[ -d /dev/shm && -w /dev/shm ]] && echo /dev/shm || echo "${TMPDIR:-/tmp}")/bt-fuzz-$t.XXXXXX")
  # The first corpus folder receives new entries; the seeds are only read.
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
  TMPDIR="$scratch" "$bin" "${flags[@]}" "${dict[@]}" -artifact_prefix="$dir/findings/" ${FUZZ_ARGS:-} \
    "$dir/corpus" "tests/fuzz/corpus/$t" >"$dir/log" 2>&1 || rc=$?
  rm -rf "$scratch"
  after=$(find "$dir/corpus" -type f | wc -l)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$dir/log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$dir/log" | tail -1)
  line=$(printf '%-14s %10s execs %7s/s  corpus %5d (+%d)  peak %5s MB' "$t" "${execs:-?}" "${rate:-?}" \
    "$after" $((after - before)) "${rss:-?}")
  if [[ $rc -ne 0 ]]; then
    status=1
    found=$(grep -o -m1 -E "Test unit written to .*" "$dir/log" | sed 's/Test unit written to //' || true)
    why=$(grep -m1 -E "==FUZZ FINDING==|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|terminate called" "$dir/log" || true)
    line="$line  FINDING: ${found:-see $dir/log} ${why:+-- $why}"
    if [[ $ci -eq 1 ]]; then tail -n 40 "$dir/log" >&2; fi
  else
    line="$line  no findings"
  fi
  summary+=("$line")
  echo "$line"
done
if [[ ${#targets[@]} -gt 1 ]]; then
  echo "---"
  printf '%s\n' "${summary[@]}"
fi
exit $status

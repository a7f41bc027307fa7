#!/usr/bin/env bash
# Installs every package blockformer needs to build, test and run on Debian 12 (apt only),
# and the Python venv (build/venv) that the PyTorch peer tests use. Safe to run again.
#   launch/install-deps.sh               everything: build, quickstart, tests, fuzzing, the venv
#   launch/install-deps.sh --build-only  what building and running bt needs (and the quickstart's
#                                        corpus), no test tools, no Python: launch/quickstart.sh
#   ... --check                          installs nothing; lists what is missing, exit 1 if anything
set -euo pipefail
cd "$(dirname "$0")/.."

build_only=0
check=0
for arg in "$@"; do
  case "$arg" in
    --build-only) build_only=1 ;;
    --check) check=1 ;;
    *) echo "usage: $0 [--build-only] [--check]" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

BUILD_PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libopenblas-dev libhdf5-dev libyaml-cpp-dev libcli11-dev nlohmann-json3-dev libfmt-dev
  libgtest-dev libopenmpi-dev openmpi-bin libsentencepiece-dev libpcre2-dev libicu-dev libssl-dev libxxhash-dev
  bible-kjv
)
# Tests: h5dump, the Python peer and reader tests, shellcheck, Slurm (tests/slurm), and clang with
# its libFuzzer and sanitizer runtimes for the fuzz targets (tests/fuzz); matplotlib and PyYAML for
# launch/plot.py (the plots of a bt sweep) and its test.
TEST_PACKAGES=(
  hdf5-tools python3 python3-venv python3-pip python3-numpy python3-h5py python3-torch python3-yaml
  python3-matplotlib shellcheck
  slurm-wlm munge
  clang-14 libclang-rt-14-dev
)
PACKAGES=("${BUILD_PACKAGES[@]}")
if [ "$build_only" -eq 0 ]; then PACKAGES+=("${TEST_PACKAGES[@]}"); fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "$check" -eq 1 ]; then
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "missing: ${missing[*]}"
    exit 1
  fi
  exit 0
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  # slurm-wlm and munge are for tests/slurm, which starts its own daemons: their services must not
  # start at install (without a slurm.conf slurmd's would fail the install). A policy-rc.d that
  # denies starts does that where the system has none (containers usually have one already).
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# launch/install-deps.sh: no service starts while it installs packages\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    trap '$SUDO rm -f "$policy"' EXIT
  fi
  # Waits for another apt or dpkg run to finish instead of failing on its lock.
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ "$build_only" -eq 1 ]; then exit 0; fi

# The peer tests compare against HF transformers on Debian's torch (1.13): a venv that sees the
# system packages, with transformers pinned to 4.39.3, the version the official Block Transformer
# code (itsnamgyu/block-transformer) pins in its requirements.txt (it also runs on torch 1.13).
TRANSFORMERS_VERSION=4.39.3
if [ ! -x build/venv/bin/python3 ]; then
  mkdir -p build
  /usr/bin/python3 -m venv --system-site-packages build/venv
fi
if [ "$(build/venv/bin/python3 -c "import transformers; print(transformers.__version__)" 2>/dev/null)" != "$TRANSFORMERS_VERSION" ]; then
  build/venv/bin/pip install -q --disable-pip-version-check "transformers==$TRANSFORMERS_VERSION" "safetensors>=0.4,<0.5"
fi
# The hf: tokenizer's test compares against the Python `tokenizers` package (transformers brings
# it; installed here for a venv made without it).
if ! build/venv/bin/python3 -c "import tokenizers" 2>/dev/null; then
  build/venv/bin/pip install -q --disable-pip-version-check "tokenizers>=0.15,<0.19"
fi

# lm-evaluation-harness 0.4.3 for the zero-shot peer test (tests/peer/test_peer_tasks.py, which
# skips its harness part without it). Its dependencies are held to what the venv already has
# (Debian's torch and numpy, the pinned transformers); lm-eval and peft are installed without
# dependency resolution because peft asks for torch >= 1.13.0 and Debian's is 1.13.0a0 (a
# pre-release, which pip ranks lower), though it runs. 0.4.3 is the first 0.4 release that does
# not fetch a metric from the HF Hub when it is imported. Best effort: a failure only warns.
if ! build/venv/bin/python3 -c "import lm_eval" 2>/dev/null; then
  constraints=build/lm-eval-constraints.txt
  {
    echo "torch==$(build/venv/bin/python3 -c 'import torch; print(torch.__version__)')"
    echo "numpy==$(build/venv/bin/python3 -c 'import numpy; print(numpy.__version__)')"
    echo "transformers==$(build/venv/bin/python3 -c 'import transformers; print(transformers.__version__)')"
    echo "accelerate>=0.26,<1.0"
    echo "huggingface-hub<1.0"
    echo "datasets<3"
    echo "pyarrow<17"
    echo "pandas<2.3"
  } > "$constraints"
  if build/venv/bin/pip install -q --disable-pip-version-check -c "$constraints" \
       "accelerate>=0.26,<1.0" "evaluate>=0.4.0" "datasets>=2.16.0" jsonlines numexpr "pybind11>=2.6.2" \
       pytablewriter "rouge-score>=0.0.4" "sacrebleu>=1.5.0" "scikit-learn>=0.24.1" sqlitedict tqdm-multiprocess \
       zstandard dill word2number more-itertools jinja2 &&
     build/venv/bin/pip install -q --disable-pip-version-check --no-deps "lm-eval==0.4.3" "peft==0.10.0" &&
     build/venv/bin/python3 -c "import lm_eval.models.huggingface" 2>/dev/null; then
    echo "lm-eval 0.4.3 installed in build/venv"
  else
    echo "warning: lm-eval 0.4.3 could not be installed in build/venv; tests/peer/test_peer_tasks.py will skip its harness comparison" >&2
  fi
fi

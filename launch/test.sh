#!/usr/bin/env bash
# The test command of the README: installs every dependency (apt), configures, builds, and runs
# all tests with ctest. GPU tests skip on a machine without a GPU. Usage: launch/test.sh [ctest args]
set -euo pipefail
cd "$(dirname "$0")/.."

launch/install-deps.sh

JOBS="${JOBS:-2}"
# BT_FUZZ: the libFuzzer targets (clang, build/release/fuzz), run a few seconds each (ctest -L fuzz).
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release -DBT_PYTHON="$PWD/build/venv/bin/python3" -DBT_FUZZ=ON
cmake --build build/release -j "$JOBS"
# mpirun refuses root unless told; CI runs as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# As root (CI) the Slurm launcher test must run, not skip: install-deps.sh installed Slurm.
if [ "$(id -u)" -eq 0 ]; then export BT_REQUIRE_SLURM=1; fi
ctest --test-dir build/release --output-on-failure -j "$JOBS" --timeout 900 "$@"

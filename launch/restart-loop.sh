#!/usr/bin/env bash
# Runs a training command until it succeeds, resuming from the latest checkpoint after a crash.
#
#   launch/restart-loop.sh launch/mpirun.sh 8 configs/paper/block_main_b4_85.yaml
#
# The command gets `--resume auto` appended, so every attempt continues from
# train.out_dir/checkpoints/latest. MAX_RESTARTS (default 20) bounds the attempts; RESTART_DELAY
# (default 30 s) waits between them (time for a failed node to be drained).
set -uo pipefail

MAX_RESTARTS="${MAX_RESTARTS:-20}"
RESTART_DELAY="${RESTART_DELAY:-30}"
if [ "$#" -lt 1 ]; then
  echo "usage: $0 COMMAND [ARGS ...]" >&2
  exit 2
fi

attempt=0
while true; do
  "$@" --resume auto
  rc=$?
  if [ "$rc" -eq 0 ]; then exit 0; fi
  attempt=$((attempt + 1))
  if [ "$attempt" -gt "$MAX_RESTARTS" ]; then
    echo "restart-loop: giving up after $MAX_RESTARTS restarts (last exit code $rc)" >&2
    exit "$rc"
  fi
  echo "restart-loop: exit code $rc; restart $attempt/$MAX_RESTARTS in ${RESTART_DELAY}s" >&2
  sleep "$RESTART_DELAY"
done

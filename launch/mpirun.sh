#!/usr/bin/env bash
# Data-parallel training with mpirun, one process per GPU (or per CPU socket on CPU runs).
#
#   launch/mpirun.sh 8 configs/paper/block_main_b4_85.yaml [section.key=value ...]      # one node, 8 GPUs
#   HOSTFILE=hosts launch/mpirun.sh 16 configs/paper/block_main_b4_300.yaml           # 2 nodes x 8 GPUs
#
# HOSTFILE lines look like "node01 slots=8". Environment passed to every rank: the NCCL
# variables below when set (see docs/distributed.md), OMP_NUM_THREADS, and BT_* variables.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$#" -lt 2 ]; then
  echo "usage: [HOSTFILE=hosts] $0 NPROCS CONFIG [section.key=value ...]" >&2
  exit 2
fi
NP="$1"
CONFIG="$2"
shift 2
BT="${BT:-build/release/bt}"
[ -x "$BT" ] || { echo "error: $BT not found; build first (cmake --preset release && cmake --build build/release)" >&2; exit 1; }

args=(-np "$NP" --bind-to none --map-by slot)
if [ -n "${HOSTFILE:-}" ]; then args+=(--hostfile "$HOSTFILE"); fi
# Export what the ranks need. NCCL_SOCKET_IFNAME / NCCL_IB_HCA pick the network; NCCL_DEBUG=INFO
# prints the topology NCCL found; NCCL_ASYNC_ERROR_HANDLING=1 makes a dead peer an error, not a hang.
for v in NCCL_DEBUG NCCL_SOCKET_IFNAME NCCL_IB_HCA NCCL_IB_DISABLE NCCL_P2P_DISABLE NCCL_NET_GDR_LEVEL \
         NCCL_ASYNC_ERROR_HANDLING NCCL_TIMEOUT_S BT_MPI_TIMEOUT_S OMP_NUM_THREADS CUDA_VISIBLE_DEVICES LD_LIBRARY_PATH PATH; do
  if [ -n "${!v:-}" ]; then args+=(-x "$v"); fi
done
if [ "$(id -u)" -eq 0 ]; then args+=(--allow-run-as-root); fi

exec mpirun "${args[@]}" "$BT" train --config "$CONFIG" "$@"

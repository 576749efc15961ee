#!/usr/bin/env bash
# N processes on this machine (CPU), as a multi-host run would: for testing the multi-process
# code path (per-process data shards, global batches, collectives over gloo).
#   launch/local_multiprocess.sh N CONFIG WORKDIR [--config.KEY=VALUE ...]
set -euo pipefail
n=$1 config=$2 workdir=$3
shift 3
port=$((20000 + RANDOM % 20000))
pids=()
for ((i = 0; i < n; i++)); do
  JAX_COORDINATOR_ADDRESS=127.0.0.1:$port JAX_NUM_PROCESSES=$n JAX_PROCESS_ID=$i \
    JAX_PLATFORMS=cpu .venv/bin/python -m reenact_jax.train --config="$config" \
    --workdir="$workdir" --distributed=on "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status

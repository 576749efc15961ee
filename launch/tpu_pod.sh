#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command on every host (JAX detects the pod).
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]
# WORKDIR must be shared by all hosts (a gs:// bucket or a shared filesystem); the data
# (config.data.dir) likewise. Each host reads only its own shard of the records.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]" >&2
  exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
extra=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  cd ~/reenact_jax && make setup >/dev/null &&
  .venv/bin/python -m reenact_jax.train --config=$config --workdir=$workdir --distributed=on $extra"

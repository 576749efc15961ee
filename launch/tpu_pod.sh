#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: ship this checkout to every worker, set it up, and run the same
# train command on all workers at once (JAX's multi-controller runtime: one process per host).
#
#   launch/tpu_pod.sh --tpu=NAME --zone=ZONE --config=configs/vox256.py --workdir=gs://bucket/run \
#       [--project=PROJECT] [--remote_dir=reenact_jax] [--dry_run] [-- --config.KEY=VALUE ...]
#
# The TPU VM must already exist (this script creates nothing: `gcloud compute tpus tpu-vm create
# NAME --zone=ZONE --accelerator-type=v4-32 --version=tpu-ubuntu2204-base` makes one). The
# workdir and config.data.dir must be readable by every host: a gs:// bucket or a shared
# filesystem. Rerunning the command after a preemption resumes from the newest checkpoint.
set -euo pipefail

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
tpu='' zone='' config='' workdir='' project='' remote_dir='reenact_jax' dry_run=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tpu=*) tpu=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --remote_dir=*) remote_dir=${1#*=} ;;
    --dry_run) dry_run=1 ;;
    --) shift; extra=("$@"); break ;;
    --config.*) extra+=("$1") ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
  shift
done
for name in tpu zone config workdir; do
  if [ -z "${!name}" ]; then echo "missing --$name" >&2; usage; fi
done
if [ ! -f "$config" ]; then echo "no config file $config (run from the repository root)" >&2; exit 2; fi

run() {  # Print, and run unless --dry_run.
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [ "$dry_run" = 0 ]; then "$@"; fi
}
gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
if [ -n "$project" ]; then where+=(--project="$project"); fi

# The slice must exist; never create one behind the user's back.
if [ "$dry_run" = 0 ] && ! "${gcloud_tpu[@]}" describe "$tpu" "${where[@]}" >/dev/null; then
  echo "TPU VM '$tpu' not found in zone $zone: create it first (see the header of $0)." >&2
  exit 1
fi

# Ship the code: the tracked files of this checkout (no .venv, no runs), to every worker.
archive=$(mktemp --suffix=.tar.gz)
trap 'rm -f "$archive"' EXIT
git ls-files -z | tar --null -czf "$archive" -T -
run "${gcloud_tpu[@]}" scp "$archive" "$tpu:/tmp/reenact_jax.tar.gz" "${where[@]}" --worker=all
train_args=$(printf ' %q' --config="$config" --workdir="$workdir" --distributed=on "${extra[@]}")
remote="set -e; mkdir -p ~/$remote_dir && cd ~/$remote_dir && tar -xzf /tmp/reenact_jax.tar.gz
make setup ACCELERATOR=tpu PYTHON=python3 >/tmp/reenact_jax_setup.log 2>&1 || {
  tail -20 /tmp/reenact_jax_setup.log; exit 1; }
exec .venv/bin/python -m reenact_jax.train$train_args"
run "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --worker=all --command="$remote"

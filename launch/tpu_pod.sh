#!/bin/bash
# Runs the same command on every worker of a Cloud TPU VM pod slice (multi-host TPU).
#
# Usage, from the repository root of your machine:
#   launch/tpu_pod.sh TPU_NAME ZONE [--project=P] [--repo=DIR] [--sync] -- \
#       python -m experiments.imc385 --flagfile=experiments/flags/imc385.flags \
#       --workdir=gs://bucket/runs/imc385
#
# - Each worker runs the command inside DIR (default: ~/mantra_jax), which must hold this
#   repository and its environment on every worker; --sync first copies the current directory
#   there on all workers (without .git, .venv and runs/; gcloud compute tpus tpu-vm scp).
# - jax.distributed: jax.distributed.initialize() recognises a Cloud TPU VM pod slice and reads
#   the worker list and this worker's index from the TPU metadata; no flags needed.
# - --workdir must be storage every worker sees (a gs:// bucket, or a shared filesystem):
#   every worker takes part in the Orbax checkpoints, and worker 0 writes logs and reports.
# - DRY_RUN=1 prints the gcloud commands instead of running them.
set -euo pipefail

usage() {
  sed -n '2,16p' "$0" >&2
  exit 2
}

[[ $# -ge 2 ]] || usage
TPU_NAME="$1"
ZONE="$2"
shift 2
PROJECT_ARGS=()
REPO_DIR='~/mantra_jax'
SYNC=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --project=*) PROJECT_ARGS=("--project=${1#--project=}") ;;
    --repo=*) REPO_DIR="${1#--repo=}" ;;
    --sync) SYNC=1 ;;
    --) shift; break ;;
    *) echo "unknown option $1 (put the command after --)" >&2; usage ;;
  esac
  shift
done
[[ $# -ge 1 ]] || usage

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

# The remote command: the repository directory, then the user's command, each word quoted so
# that it reaches the workers' shell unchanged.
quoted_command=$(printf '%q ' "$@")
remote="cd $REPO_DIR && export PYTHONUNBUFFERED=1 && $quoted_command"

if [[ $SYNC == 1 ]]; then
  archive="$(mktemp -d)/mantra_jax_code.tar.gz"
  run tar czf "$archive" --exclude=./.git --exclude=./.venv --exclude=./runs .
  run gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:/tmp/mantra_jax_code.tar.gz" \
    --zone="$ZONE" "${PROJECT_ARGS[@]}" --worker=all
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${PROJECT_ARGS[@]}" \
    --worker=all --command="mkdir -p $REPO_DIR && tar xzf /tmp/mantra_jax_code.tar.gz -C $REPO_DIR"
fi
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${PROJECT_ARGS[@]}" \
  --worker=all --command="$remote"

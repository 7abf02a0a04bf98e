#!/usr/bin/env bash
# Trains on a Cloud TPU VM (one host or a pod slice): create the VM if needed,
# copy this repository to every worker, install, run main.py on all workers.
#
#   TPU_NAME=cxr ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 \
#     launch/tpu_vm.sh --config=configs/stage2.py --workdir=/mnt/shared/s2
#   DRY_RUN=1 launch/tpu_vm.sh --config=...   # print the gcloud commands only
#
# Arguments are main.py flags; `--distributed=auto` is added, so every worker
# finds the others through the TPU metadata (jax.distributed.initialize()).
# On a multi-host slice (v4-16 and up) the workdir must be a folder every
# worker sees (a Filestore/NFS or gcsfuse mount): orbax writes each host's
# shards of a checkpoint there. Re-running the same command resumes from the
# latest checkpoint.
#
# Settings (environment variables):
#   TPU_NAME          VM name                        (cxr-jax)
#   ZONE              zone                           (us-central2-b)
#   ACCELERATOR_TYPE  e.g. v4-8, v4-32, v5litepod-8  (v4-8)
#   TPU_VERSION       runtime image                  (tpu-ubuntu2204-base)
#   PROJECT           gcloud project                 (gcloud's default)
#   SPOT=1            create a Spot VM               (0)
#   CREATE            auto: create unless it exists; 1: always; 0: never (auto)
#   SYNC              scp: copy this working tree (no .venv/.git/workdirs);
#                     git: clone GIT_URL at GIT_REF on the VM; none   (scp)
#   GIT_URL, GIT_REF  for SYNC=git                   (-, main)
#   REMOTE_DIR        folder on the VM               (cxr_jax)
#   SETUP=0           skip scripts/setup.sh + jax[tpu] install        (1)
#   REMOTE_PYTHON     interpreter for the VM's .venv; installed from the
#                     deadsnakes PPA if absent (the pins need >= 3.11,
#                     Ubuntu 22.04 images ship 3.10)             (python3.11)
#   DETACH=1          run under nohup (log: REMOTE_DIR/tpu_run.log) and
#                     return; otherwise stream every worker's output  (0)
#   DELETE=1          delete the VM when this script exits            (0)
#   DRY_RUN=1         print every command instead of running it       (0)
set -euo pipefail

TPU_NAME=${TPU_NAME:-cxr-jax}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-8}
TPU_VERSION=${TPU_VERSION:-tpu-ubuntu2204-base}
PROJECT=${PROJECT:-}
SPOT=${SPOT:-0}
CREATE=${CREATE:-auto}
SYNC=${SYNC:-scp}
GIT_URL=${GIT_URL:-}
GIT_REF=${GIT_REF:-main}
REMOTE_DIR=${REMOTE_DIR:-cxr_jax}
SETUP=${SETUP:-1}
REMOTE_PYTHON=${REMOTE_PYTHON:-python3.11}
DETACH=${DETACH:-0}
DELETE=${DELETE:-0}
DRY_RUN=${DRY_RUN:-0}
JAX_TPU='jax[tpu]==0.10.2'
LIBTPU_INDEX=https://storage.googleapis.com/jax-releases/libtpu_releases.html

REPO=$(cd "$(dirname "$0")/.." && pwd)
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[ -n "$PROJECT" ] && WHERE+=(--project="$PROJECT")

die() { echo "tpu_vm.sh: $*" >&2; exit 2; }
# Shell-quotes one word, readably: as is if safe, else in single quotes.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
quote_all() {
  local sep=''
  for w in "$@"; do printf '%s' "$sep"; quote "$w"; sep=' '; done
}
# Runs a command, or prints it (shell-quoted) when DRY_RUN=1.
run() {
  if [ "$DRY_RUN" = 1 ]; then
    quote_all "$@"
    echo
  else
    "$@"
  fi
}
on_all() { run "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="$1"; }

[ $# -gt 0 ] || die "usage: [ENV=...] $0 --config=configs/NAME.py[:preset] --workdir=DIR [--config.KEY=VALUE ...]"
[ "$DETACH$DELETE" != 11 ] || die "DETACH=1 and DELETE=1: the VM would be deleted under the detached run."
[ "$SYNC" != git ] || [ -n "$GIT_URL" ] || die "SYNC=git needs GIT_URL."

# 1. The VM.
exists() {
  [ "$DRY_RUN" != 1 ] &&
    "${GCLOUD[@]}" describe "$TPU_NAME" "${WHERE[@]}" >/dev/null 2>&1
}
create=("${GCLOUD[@]}" create "$TPU_NAME" "${WHERE[@]}"
        --accelerator-type="$ACCELERATOR_TYPE" --version="$TPU_VERSION")
[ "$SPOT" = 1 ] && create+=(--spot)
case "$CREATE" in
  1) run "${create[@]}" ;;
  auto) if exists; then echo "# $TPU_NAME exists; not creating it." >&2
        else run "${create[@]}"; fi ;;
  0) ;;
  *) die "CREATE=$CREATE: use auto, 1 or 0." ;;
esac
if [ "$DELETE" = 1 ]; then
  trap 'run "${GCLOUD[@]}" delete "$TPU_NAME" "${WHERE[@]}" --quiet' EXIT
fi

# 2. The code on every worker.
q_dir=$(quote "$REMOTE_DIR")
case "$SYNC" in
  scp)
    tarball=${TMPDIR:-/tmp}/cxr_jax_src.tar.gz
    run tar -czf "$tarball" -C "$REPO" --exclude=./.venv --exclude=./.git \
      --exclude=./workdirs --exclude=__pycache__ --exclude=./.pytest_cache .
    run "${GCLOUD[@]}" scp "$tarball" "$TPU_NAME:cxr_jax_src.tar.gz" \
      "${WHERE[@]}" --worker=all
    on_all "mkdir -p $q_dir && tar -xzf cxr_jax_src.tar.gz -C $q_dir"
    ;;
  git)
    q_url=$(quote "$GIT_URL"); q_ref=$(quote "$GIT_REF")
    on_all "{ [ -d $q_dir/.git ] || git clone $q_url $q_dir; } && cd $q_dir && git fetch -q origin && git checkout -q $q_ref && { git pull -q --ff-only || true; }"
    ;;
  none) ;;
  *) die "SYNC=$SYNC: use scp, git or none." ;;
esac

# 3. Python environment: the pinned requirements, then jax's TPU build.
if [ "$SETUP" = 1 ]; then
  py=$(quote "$REMOTE_PYTHON")
  get_py="sudo add-apt-repository -y ppa:deadsnakes/ppa && sudo apt-get update -q && sudo apt-get install -y -q $py $py-venv"
  on_all "{ command -v $py >/dev/null || { $get_py; }; } && cd $q_dir && PYTHON=$py bash scripts/setup.sh && .venv/bin/python -m pip install -q '$JAX_TPU' -f $LIBTPU_INDEX"
fi

# 4. Train on every worker (each one process; jax finds the others).
cmd="$(quote_all .venv/bin/python main.py "$@") --distributed=auto"
train="cd $q_dir && $cmd"
if [ "$DETACH" = 1 ]; then
  train="cd $q_dir && nohup $cmd > tpu_run.log 2>&1 < /dev/null &"
fi
on_all "$train"

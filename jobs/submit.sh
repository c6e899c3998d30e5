#!/usr/bin/env bash
# Submit the main job (`python -m pipeline`) to a running Ray cluster through the Jobs API.
#
#   jobs/submit.sh [hydra overrides...]
#   RAY_ADDRESS=http://127.0.0.1:8265 jobs/submit.sh dataset=folder dataset.root=/data/ucf101 run.output_dir=/shared/out
#
# RAY_ADDRESS: the cluster's dashboard (default http://127.0.0.1:8265; for a cluster made with
# cluster.yaml, `ray dashboard cluster.yaml` forwards it there). The token of
# `ray get-auth-token` (~/.ray/auth_token, or RAY_AUTH_TOKEN) authenticates the submission.
# The checkout's tracked files go up as the job's working_dir, as they are in the working tree
# (so the job runs this checkout's code, edits included; untracked files such as .env or
# credentials never leave this machine); run.output_dir should be a path every node shares.
# Extra `ray job submit` flags go in SUBMIT_FLAGS (e.g. SUBMIT_FLAGS=--no-wait).
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
RAY="${RAY:-ray}"
PYTHON="${JOB_PYTHON:-python}"
runtime_env='{"excludes": [".venv", "data", "outputs", ".git", "**/__pycache__", "*.egg-info"]}'
workdir=.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    workdir="$(mktemp -d)"
    trap 'rm -rf "$workdir"' EXIT
    git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$workdir"
else
    echo "jobs/submit.sh: not a git checkout: uploading this folder but for $runtime_env" >&2
fi
# shellcheck disable=SC2086
"$RAY" job submit --working-dir "$workdir" --runtime-env-json "$runtime_env" ${SUBMIT_FLAGS:-} \
    -- "$PYTHON" -m pipeline ray=cluster "$@"

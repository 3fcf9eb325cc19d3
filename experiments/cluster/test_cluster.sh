#!/usr/bin/env bash
# `make test-cluster`: start the local SLURM cluster, run tests/cluster against it, and tear it
# down on pass, failure or interrupt; fails if any of the cluster's processes outlives it.
#   experiments/cluster/test_cluster.sh [PYTHON] [PYTEST ARGS...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=${1:-.venv/bin/python}
shift || true
CLUSTER=experiments/cluster/local_slurm.sh
[[ $EUID -eq 0 ]] || { echo "test-cluster: error: needs root (it starts SLURM's daemons)" >&2; exit 2; }
tests=""

teardown() {
  local rc=$?
  trap - EXIT INT TERM
  # pytest and every kvbench it started share one process group: end what is left of it.
  if [[ -n $tests ]]; then kill -TERM -- "-$tests" 2>/dev/null || true; fi
  "$CLUSTER" stop || rc=1
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

start=$SECONDS
"$CLUSTER" start
eval "$("$CLUSTER" env)"
KVBENCH_CLUSTER_TESTS=1 setsid "$PY" -m pytest -q -rs tests/cluster "$@" &
tests=$!
wait "$tests"  # unlike a foreground command, `wait` lets a signal's trap run at once
echo "test-cluster: tests passed in $((SECONDS - start)) s (cluster start included)"

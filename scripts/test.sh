#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up, lint, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The Slurm tests submit jobs to a local cluster of two nodes (network namespaces, docs/clusters.md); as root we
# install and start it (Debian packages). If this machine cannot host a second node, the error is above, the
# one-node cluster runs the one-node tests, and tests/slurm/test_multinode.py fails in CI naming the reason.
if [ "$(id -u)" = 0 ]; then
  rc=0
  bash scripts/local_slurm.sh start --nodes 2 || rc=$?
  if [ "$rc" = 3 ]; then
    echo "test.sh: keeping the cluster that is running (tests/slurm/test_multinode.py needs two nodes)" >&2
  elif [ "$rc" != 0 ]; then
    echo "test.sh: the two-node cluster did not start (above); starting the one-node cluster" >&2
    bash scripts/local_slurm.sh stop
    bash scripts/local_slurm.sh start
  fi
else
  echo "not root: the local Slurm cluster is not started, tests/slurm will skip (CI runs as root)"
fi
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
export WANDB_SILENT=true
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -ra --durations=15 "$@"

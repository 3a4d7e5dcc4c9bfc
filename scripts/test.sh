#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up, lint, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The Slurm tests submit jobs to a one-node local cluster; as root we install and start it (Debian packages).
if [ "$(id -u)" = 0 ]; then
  bash scripts/local_slurm.sh start
else
  echo "not root: the local Slurm cluster is not started, tests/slurm will skip (CI runs as root)"
fi
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
export WANDB_SILENT=true
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -ra --durations=15 "$@"

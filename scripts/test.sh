#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up, lint, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
export WANDB_SILENT=true
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -ra --durations=15 "$@"

#!/usr/bin/env bash
# The main job on the embedded default, on CPU: set up, then pretrain the tiny Qwen3-MoE on generated text.
# Re-running resumes the run from its latest checkpoint; `rm -rf runs/pretrain_text_tiny` starts afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
export WANDB_SILENT=true
NPROC=${NPROC:-2}
.venv/bin/torchrun --nproc_per_node "$NPROC" -m train.pretrain experiment=pretrain_text_tiny \
  parallel.ep_size="$NPROC" "$@"
echo "run directory: runs/pretrain_text_tiny (metrics.jsonl, checkpoints/, wandb/)"

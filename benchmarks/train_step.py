"""Training-step throughput of the real engine (DeepSpeed + AutoEP + our losses) on synthetic tokens.

    .venv/bin/python -m benchmarks.train_step                                   # tiny configs, CPU
    .venv/bin/torchrun --nproc_per_node 2 -m benchmarks.train_step --ep 2       # EP=2 on 2 processes
    .venv/bin/python -m benchmarks.train_step --experts 8,16,32,64              # step time vs expert count
    python -m benchmarks.train_step --preset qwen3_30b_a3b_4l --device cuda     # GPU: 30B-A3B shape, 4 layers
    .venv/bin/python -m benchmarks.train_step --preset qwen3_5_moe_tiny --labelled 0.35 --lm-head all,labelled
                                                     # LM head on every position vs on the labelled ones only
    .venv/bin/python -m benchmarks.train_step --preset qwen3_5_moe_tiny --labelled 0.53 --mtp 0,1
                                                     # step time with a multi-token prediction layer vs without

Tokens are random (no data pipeline), so this measures the model step only. Each row: tokens/s (all ranks),
TFLOP/s per device from active-parameter FLOPs, MFU against the device peak, peak memory per rank.
Writes benchmarks/results/train_step_<name>.json from rank 0.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

PRESETS: dict[str, list[str]] = {
    "qwen3_moe_tiny": ["model=qwen3_moe_tiny"],
    "qwen3_5_moe_tiny": ["model=qwen3_5_moe_tiny"],
    # Qwen3-30B-A3B at full width and expert count, 4 of its 48 layers.
    "qwen3_30b_a3b_4l": ["model=qwen3_30b_a3b", "model.hf_config.num_hidden_layers=4",
                         "model.activation_checkpointing=false"],
    "qwen3_30b_a3b_8l": ["model=qwen3_30b_a3b", "model.hf_config.num_hidden_layers=8",
                         "model.activation_checkpointing=false"],
}


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from train.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"):
        return compose(config_name="pretrain", overrides=overrides)


def measure(overrides: list[str], micro_batch: int, seq_len: int, steps: int, warmup: int, dist_info,
            labelled: float = 1.0, lm_head: str = "labelled") -> dict:
    """`labelled`: the fraction of each row's positions (its tail, like an SFT answer) that carry a label;
    `lm_head`: "all" computes logits everywhere, "labelled" only where the loss reads them (as the loop does)."""
    from train.engine.deepspeed_setup import build_engine, resolve_dtype
    from train.engine.losses import labelled_logit_positions, moe_losses
    from train.engine.mtp_loss import MtpObjective
    from train.metrics.throughput import active_params_per_token, device_peak_tflops, training_flops
    from train.models.build import build_hf_config, build_model

    cfg = _compose([*overrides, f"trainer.micro_batch_size={micro_batch}", f"data.seq_len={seq_len}"])
    hf_config = build_hf_config(cfg.model, vocab_size=None if "vocab_size" in str(cfg.model.hf_config) else 4096)
    with torch.device(dist_info.device):  # initialise on the device: a 5B-parameter CPU init takes minutes
        model = build_model(cfg.model, hf_config, resolve_dtype(cfg.trainer.precision), seed=0)
    engine = build_engine(cfg, model)
    mtp = MtpObjective(engine.module) if cfg.model.mtp_layers else None
    text = hf_config.get_text_config()
    g = torch.Generator().manual_seed(dist_info.rank)
    ids = torch.randint(0, text.vocab_size, (micro_batch, seq_len), generator=g).to(dist_info.device)
    labels = ids.clone()
    labels[:, : round(seq_len * (1.0 - labelled))] = -100
    keep = labelled_logit_positions(labels) if lm_head == "labelled" else 0
    logits_per_step = int(keep.sum()) if lm_head == "labelled" else micro_batch * seq_len
    times = []
    if dist_info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(warmup + steps):
        if dist_info.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = engine(input_ids=ids, output_router_logits=True, use_cache=False, logits_to_keep=keep)
        router_logits, mtp_loss = out.router_logits, 0.0
        if mtp is not None:
            m = mtp(labels)
            router_logits, mtp_loss = router_logits + m.router_logits, cfg.loss.mtp_coef * m.loss
        loss = moe_losses(out.logits, labels, router_logits, text.num_experts, text.num_experts_per_tok,
                          cfg.loss.aux_coef, cfg.loss.z_coef).total + mtp_loss
        engine.backward(loss)
        engine.step()
        if dist_info.device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    tokens_per_s_rank = micro_batch * seq_len / step_s
    mtp_logits = int((labels[:, 2:] != -100).sum()) if mtp is not None else 0
    tflops = training_flops(hf_config, seq_len, cfg.model.mtp_layers).of(
        micro_batch * seq_len, logits_per_step + mtp_logits) / step_s / 1e12
    peak = device_peak_tflops(cfg.trainer.peak_tflops_per_device)
    if dist_info.device.type == "cuda":
        mem = torch.cuda.max_memory_allocated() / 2**30
    else:
        import resource

        mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "overrides": overrides, "labelled": labelled, "lm_head": lm_head, "micro_batch": micro_batch,
        "seq_len": seq_len, "ep_size": cfg.parallel.ep_size, "mtp_layers": cfg.model.mtp_layers,
        "world_size": dist_info.world_size, "num_experts": text.num_experts, "top_k": text.num_experts_per_tok,
        "active_params": active_params_per_token(hf_config), "step_ms": 1e3 * step_s,
        "tokens_per_s": tokens_per_s_rank * dist_info.world_size, "tflops_per_device": tflops,
        "peak_tflops_per_device": peak, "mfu": tflops / peak, "peak_memory_gib_rank0": mem,
        "precision": str(resolve_dtype(cfg.trainer.precision)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="qwen3_moe_tiny,qwen3_5_moe_tiny")
    ap.add_argument("--ep", type=int, default=1)
    ap.add_argument("--experts", default="", help="comma-separated expert counts to sweep (first preset)")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--zero", type=int, default=1)
    ap.add_argument("--labelled", type=float, default=1.0, help="fraction of positions with a label")
    ap.add_argument("--lm-head", default="labelled", help="comma-separated: all, labelled")
    ap.add_argument("--mtp", default="0", help="comma-separated model.mtp_layers to compare (Qwen3.5): 0, 1")
    ap.add_argument("--extra", default="", help="extra Hydra overrides, space separated")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    from train.engine.distributed import (
        configure_accelerator_env,
        destroy_process_group_at_exit,
        init_distributed,
    )

    configure_accelerator_env(".cache")
    dist_info = init_distributed("auto")
    common = [f"parallel.ep_size={args.ep}", f"deepspeed=zero{args.zero}", *filter(None, args.extra.split(" "))]
    runs: list[list[str]] = []
    presets = args.preset.split(",")
    if args.experts:
        key = "model.hf_config.text_config.num_experts" if "3_5" in presets[0] else "model.hf_config.num_experts"
        runs = [[*PRESETS[presets[0]], f"{key}={n}"] for n in args.experts.split(",")]
    else:
        runs = [PRESETS[p] for p in presets]
    mtp_settings = [[f"model.mtp_layers={n}", f"loss.mtp_coef={0.3 if int(n) else 0.0}"] for n in args.mtp.split(",")]
    runs = [[*r, *m] for r in runs for m in mtp_settings]
    rows = []
    heads = args.lm_head.split(",")
    for overrides, lm_head in itertools.product(runs, heads):
        row = measure([*overrides, *common], args.micro_batch, args.seq_len, args.steps, args.warmup, dist_info,
                      args.labelled, lm_head)
        rows.append(row)
        if dist_info.is_main:
            print(f"{' '.join(overrides):<50} head={lm_head:<8} E={row['num_experts']:<4} ep={row['ep_size']} "
                  f"mtp={row['mtp_layers']} step "
                  f"{row['step_ms']:8.1f} ms  {row['tokens_per_s']:9.0f} tok/s  {row['tflops_per_device']:7.3f} "
                  f"TFLOP/s  MFU {100 * row['mfu']:5.1f}%  mem {row['peak_memory_gib_rank0']:.2f} GiB", flush=True)
    if dist_info.is_main and len(heads) > 1:
        for i in range(0, len(rows), len(heads)):
            pair = rows[i:i + len(heads)]
            print(f"{' '.join(pair[0]['overrides'][:1])}: step time "
                  + ", ".join(f"{r['lm_head']} {r['step_ms'] / pair[0]['step_ms']:.2f}x" for r in pair)
                  + f" of {pair[0]['lm_head']} ({args.labelled:.0%} of positions labelled)")
    if dist_info.is_main and len(mtp_settings) > 1:
        base = rows[0]["step_ms"]
        print("step time vs model.mtp_layers=" + mtp_settings[0][0].split("=")[1] + ": " + ", ".join(
            f"mtp_layers={r['mtp_layers']} {r['step_ms'] / base:.2f}x" for r in rows))
    if dist_info.is_main:
        name = args.name or f"train_step_{dist_info.device.type}_ep{args.ep}" + ("_experts" if args.experts else "")
        out = Path(__file__).parent / "results" / f"{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"benchmark": "train_step", "torch": torch.__version__,
                                   "threads": torch.get_num_threads(), "machine": platform.machine(),
                                   "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows}, indent=2))
        print(f"wrote {out}")
    destroy_process_group_at_exit()


if __name__ == "__main__":
    main()

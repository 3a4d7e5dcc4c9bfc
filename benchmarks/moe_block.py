"""MoE block forward+backward time against a dense matmul of the same FLOPs, measured side by side.

    .venv/bin/python -m benchmarks.moe_block              # CPU, fp32, the issue's grid
    .venv/bin/python -m benchmarks.moe_block --device cuda --dtype bf16 --grid gpu

Implementations timed on the same tokens and weights (initialised like transformers, normal(0, 0.02), so the
router spreads tokens over the experts as in training; an all-zero router sends every token to the same k):
  ours            our training path: DeepSpeed AutoEP `AutoEPMoELayer`, EP=1 in one process, with
                  `parallel.experts_impl=auto` (train/models/autoep_local_experts.py on CPU, upstream on GPU)
  ours_upstream   the same layer with `parallel.experts_impl=upstream` (DeepSpeed's own path)
  ours_fused      upstream with `parallel.gate_up_impl=fused` (gate and up projections in one grouped GEMM)
  hf_eager        transformers' Qwen3MoeSparseMoeBlock, per-expert loop
  hf_grouped_mm   the same block with `_experts_implementation="grouped_mm"`
  hf_batched_mm   the same block with `_experts_implementation="batched_mm"`
  ds_native       deepspeed.moe.layer.MoE, top-k, drop_tokens=False
  dense_equal     a SwiGLU MLP of intermediate k*I over the same tokens (the routed-expert FLOPs, no routing)
MoE efficiency = dense_equal time / implementation time (1.0 = as fast as the machine's dense limit).
Repetitions are interleaved (one forward+backward of each implementation per round, dense first), so a shared,
drifting machine slows every implementation alike; the JSON keeps median and min per implementation and the
load average around each point. Writes benchmarks/results/moe_block_<device>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

GRIDS = {
    "cpu": [(128, 64, 64, 8, 2048), (256, 128, 128, 8, 2048), (512, 256, 128, 8, 1024), (1024, 512, 64, 4, 2048)],
    "gpu": [(2048, 768, 128, 8, 16384), (4096, 1024, 128, 10, 8192), (2048, 512, 256, 8, 16384),
            (1024, 512, 64, 4, 32768)],
}


class DenseEqual(nn.Module):
    def __init__(self, hidden: int, inter: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(hidden, 2 * inter, bias=False)
        self.down = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, u = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(g) * u)


class SwiGLUExpert(nn.Module):
    def __init__(self, hidden: int, inter: int) -> None:
        super().__init__()
        self.inner = DenseEqual(hidden, inter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def _config(h: int, i: int, e: int, k: int):
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(vocab_size=128, hidden_size=h, intermediate_size=4 * h, moe_intermediate_size=i,
                          num_hidden_layers=1, num_attention_heads=max(1, h // 64), num_key_value_heads=1,
                          num_experts=e, num_experts_per_tok=k, norm_topk_prob=True)


def _hf_block(cfg, impl: str, dtype: torch.dtype, device: str) -> nn.Module:
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    cfg = copy.deepcopy(cfg)
    cfg._experts_implementation = impl
    with torch.device(device):
        return Qwen3MoeSparseMoeBlock(cfg).to(dtype=dtype)


def _init_like_transformers(module: nn.Module, std: float) -> None:
    """The block's constructor leaves experts uninitialised and the router at zero; initialise as training does."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)


def _autoep_block(cfg, hf_block: nn.Module, dtype: torch.dtype, device: str, gate_up_impl: str = "separate",
                  experts_impl: str = "auto") -> nn.Module:
    """Let DeepSpeed AutoEP replace the block inside a one-layer model, and take the replacement out."""
    import deepspeed
    from transformers import Qwen3MoeForCausalLM

    from train.models.autoep_local_experts import use_local_experts
    from train.models.autoep_shims import patch_output_capture_registry

    patch_output_capture_registry()
    with torch.device(device):
        model = Qwen3MoeForCausalLM._from_config(cfg, dtype=dtype)
    model.model.layers[0].mlp.load_state_dict(hf_block.state_dict())
    # No optimizer and no DeepSpeed precision wrapper: only the replaced layer is timed, in the model's dtype.
    ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 0},
                 "expert_parallel": {"enabled": True, "autoep_size": 1, "preset_model": "qwen3_moe",
                                     "use_grouped_mm": True, "gate_up_impl": gate_up_impl}}
    engine, *_ = deepspeed.initialize(model=model, config=ds_config)
    use_local_experts(engine.module, experts_impl)
    return engine.module.model.layers[0].mlp.to(dtype)


def _ds_native(h: int, i: int, e: int, k: int, dtype: torch.dtype, device: str) -> nn.Module:
    from deepspeed.moe.layer import MoE

    return MoE(hidden_size=h, expert=SwiGLUExpert(h, i), num_experts=e, ep_size=1, k=k, drop_tokens=False,
               use_rts=False).to(device=device, dtype=dtype)


def _fwd_bwd(fn: nn.Module, x: torch.Tensor, device: str) -> float:
    """One forward+backward (seconds); gradients start empty, as after `zero_grad(set_to_none=True)`."""
    fn.zero_grad(set_to_none=True)
    xi = x.detach().requires_grad_(True)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn(xi)
    out = out[0] if isinstance(out, tuple) else out
    out.float().square().mean().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _routing_imbalance(block: nn.Module, x: torch.Tensor, e: int, k: int) -> float:
    """Most-loaded expert's routed rows over the mean (1.0 = perfectly even)."""
    with torch.no_grad():
        logits = block.gate(x.reshape(-1, x.shape[-1]))
        logits = logits[0] if isinstance(logits, tuple) else logits
        counts = torch.bincount(logits.topk(k, dim=-1).indices.reshape(-1), minlength=e).float()
    return (counts.max() / counts.mean()).item()


def run_point(h: int, i: int, e: int, k: int, t: int, dtype: torch.dtype, device: str, reps: int,
              skip: set[str], max_batched_gib: float) -> dict:
    torch.manual_seed(0)
    cfg = _config(h, i, e, k)
    x = torch.randn(1, t, h, device=device, dtype=dtype)
    eager = _hf_block(cfg, "eager", dtype, device)
    _init_like_transformers(eager, cfg.initializer_range)
    row: dict = {"hidden": h, "moe_intermediate": i, "experts": e, "top_k": k, "tokens": t,
                 "routing_max_over_mean": _routing_imbalance(eager, x, e, k),
                 "loadavg_1min_before": os.getloadavg()[0]}
    dense = DenseEqual(h, k * i).to(device=device, dtype=dtype)
    _init_like_transformers(dense, cfg.initializer_range)
    builders = {
        "ours": lambda: _autoep_block(cfg, eager, dtype, device),
        "ours_upstream": lambda: _autoep_block(cfg, eager, dtype, device, experts_impl="upstream"),
        "ours_fused": lambda: _autoep_block(cfg, eager, dtype, device, "fused", experts_impl="upstream"),
        "hf_eager": lambda: eager,
        "hf_grouped_mm": lambda: _hf_block(cfg, "grouped_mm", dtype, device),
        "hf_batched_mm": lambda: _hf_block(cfg, "batched_mm", dtype, device),
        "ds_native": lambda: _ds_native(h, i, e, k, dtype, device),
    }
    impls: dict[str, nn.Module] = {"dense_equal": dense}
    for name, build in builders.items():
        if name in skip:
            row[f"{name}_skipped"] = "--skip"
            continue
        if name == "hf_batched_mm":
            # batched_mm gathers one weight matrix per (token, expert) pair: gate_up + down, forward + grads.
            need_gib = t * k * 3 * h * i * x.element_size() * 3 / 2**30
            if need_gib > max_batched_gib:
                row[f"{name}_skipped"] = f"needs ~{need_gib:.1f} GiB of gathered weights (cap {max_batched_gib})"
                continue
        module = build()
        if name.startswith("hf_") and module is not eager:
            module.load_state_dict(eager.state_dict())
        if name == "ds_native":
            _init_like_transformers(module, cfg.initializer_range)
        impls[name] = module
    times: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(2):  # warm-up
        for module in impls.values():
            _fwd_bwd(module, x, device)
    for _ in range(reps):
        for name, module in impls.items():
            times[name].append(_fwd_bwd(module, x, device))
    dense_s = statistics.median(times["dense_equal"])
    dense_min = min(times["dense_equal"])
    for name, ts in times.items():
        row[f"{name}_ms"] = 1e3 * statistics.median(ts)
        row[f"{name}_min_ms"] = 1e3 * min(ts)
        if name != "dense_equal":
            row[f"{name}_eff"] = dense_s / statistics.median(ts)
            row[f"{name}_eff_of_mins"] = dense_min / min(ts)
    row["loadavg_1min_after"] = os.getloadavg()[0]
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--grid", default=None, choices=sorted(GRIDS))
    ap.add_argument("--reps", type=int, default=7, help="interleaved timed rounds per point (median and min kept)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    ap.add_argument("--skip", default="", help="comma-separated implementations to skip")
    ap.add_argument("--max-batched-gib", type=float, default=4.0, help="skip hf_batched_mm above this memory")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if args.device == "cpu" else "cuda")
    from train.engine.distributed import destroy_process_group_at_exit, init_distributed

    init_distributed("gloo" if args.device == "cpu" else "nccl")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    grid = GRIDS[args.grid or args.device]
    rows = []
    names = ["ours", "ours_upstream", "ours_fused", "hf_eager", "hf_grouped_mm", "hf_batched_mm", "ds_native"]
    print(f"{'point':<28}" + "".join(f"{n:>18}" for n in names) + f"{'dense':>10}")
    for point in grid:
        row = run_point(*point, dtype=dtype, device=args.device, reps=args.reps,
                        skip=set(filter(None, args.skip.split(","))), max_batched_gib=args.max_batched_gib)
        rows.append(row)
        label = "H{} I{} E{} K{} T{}".format(*point)
        cells = "".join(f"{row[n + '_ms']:>9.1f}ms {row[n + '_eff']:>4.2f}" if n + "_ms" in row else f"{'-':>18}"
                        for n in names)
        print(f"{label:<28}{cells}{row['dense_equal_ms']:>8.1f}ms", flush=True)
    result = {
        "benchmark": "moe_block_fwd_bwd", "device": args.device, "dtype": args.dtype,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or
        platform.machine(), "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "efficiency": "dense_equal_ms / impl_ms (medians); *_eff_of_mins: the same from the fastest rounds",
        "reps": args.reps, "cpu_count": os.cpu_count(), "rows": rows,
    }
    out = Path(args.out or Path(__file__).parent / "results" / f"moe_block_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    destroy_process_group_at_exit()


if __name__ == "__main__":
    main()

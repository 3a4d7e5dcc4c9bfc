"""The step loop: lr -> micro-steps (forward, losses, backward) -> step -> validation -> log -> checkpoint.

Everything else (schedule, losses, metrics, checkpoints, data position) is a thing this loop calls.
"""

from __future__ import annotations

import logging
import math
import resource
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from train.checkpoint.checkpointer import Checkpointer, rng_state
from train.engine import fault_injection
from train.engine.load_balance import LoadBalancingLoss
from train.engine.losses import labelled_logit_positions, moe_losses, touch_unused, vision_parameters
from train.engine.lr_schedule import get_lr
from train.engine.mtp_loss import MtpObjective
from train.engine.nonfinite import NonFinitePolicy
from train.engine.validation import ValidationSettings, evaluate
from train.metrics.expert_load import CollapseMonitor, ExpertLoad
from train.metrics.logger import MetricsLogger
from train.metrics.throughput import TrainingFlops

log = logging.getLogger(__name__)


@dataclass
class LoopSettings:
    max_steps: int
    log_every: int
    checkpoint_every: int
    stop_after_steps: int | None
    lr: float
    warmup_steps: int
    min_lr_ratio: float
    schedule: str
    decay_fraction: float
    aux_coef: float
    z_coef: float
    num_experts: int
    top_k: int
    flops: TrainingFlops
    peak_tflops: float
    balance: str = "micro_batch"
    nonfinite: str = "stop"
    max_nonfinite_skips: int = 0
    mtp_coef: float = 0.0  # > 0: the model has `model.mtp` (multi-token prediction) and its loss is added
    eval_every: int = 0  # validation every this many steps and at the last one (a multiple of log_every); 0: off
    meta: dict[str, Any] = field(default_factory=dict)
    memory: Any = None  # train.metrics.memory.PeakMemory: the peak each rank adds above its baseline


class StopRequest:
    """SIGTERM/SIGUSR1 (Slurm preemption) ask for a checkpoint and a clean exit at the end of the step."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise SystemExit(128 + signum)
        self.requested = True
        log.warning("signal %d: will checkpoint and exit after this step", signum)


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _peak_added_gib(memory, device: torch.device, world: int) -> float | None:
    """The largest peak any rank added above its baseline so far (one small all-reduce at logging time)."""
    if memory is None:
        return None
    value = torch.tensor([memory.added_gib()], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value.item())


def train_loop(engine, batches, settings: LoopSettings, metrics: MetricsLogger, checkpointer: Checkpointer,
               expert_load: ExpertLoad, collapse_monitor: CollapseMonitor, start_step: int,
               device: torch.device, validation=None) -> dict[str, Any]:
    """Run from `start_step` to `max_steps` (or until stopped); returns the last logged metrics.

    `validation` (data_pipelines.loader.HeldOutBatches) is evaluated every `eval_every` steps when given."""
    s = settings
    stop = StopRequest()
    nonfinite = NonFinitePolicy(s.nonfinite, s.max_nonfinite_skips)
    world = dist.get_world_size() if dist.is_initialized() else 1
    step = start_step
    steps_this_run = 0
    window_tokens, window_logits, window_t0, window_eval_s = 0, 0, time.perf_counter(), 0.0
    last: dict[str, Any] = {}
    val_settings = ValidationSettings(s.num_experts, s.top_k, s.aux_coef, s.z_coef)
    vision = vision_parameters(engine.module)
    balance = LoadBalancingLoss(s.balance, s.num_experts, s.top_k)
    mtp = MtpObjective(engine.module) if s.mtp_coef else None
    engine.train()
    while step < s.max_steps:
        lr = get_lr(step, s.lr, s.warmup_steps, s.max_steps, s.min_lr_ratio, s.schedule, s.decay_fraction)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        sums = torch.zeros(5, dtype=torch.float64)  # total, lm, aux, z, non-finite count
        mtp_sum = torch.zeros(1, dtype=torch.float64)
        micro_batches = batches.next_step()
        balance.start_step()
        bad_rows: list[int] = []  # packed-row indices of micro-batches with a non-finite loss
        for mb in micro_batches:  # {"inputs": model kwargs (ids, positions, images), "labels": ...}
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in mb["inputs"].items()}
            labels = mb["labels"].to(device)
            keep = labelled_logit_positions(labels)
            out = engine(**inputs, output_router_logits=True, use_cache=False, logits_to_keep=keep)
            router_logits, extra = out.router_logits, 0.0
            if mtp is not None:  # the MTP head reads this forward; its MoE layer is balanced with the trunk's
                m = mtp(labels)
                router_logits, extra = router_logits + m.router_logits, s.mtp_coef * m.loss
                mtp_sum += m.loss.detach().double().cpu()
                window_logits += m.logits
            aux, routed = balance(router_logits, mb.get("token_mask"))
            terms = moe_losses(out.logits, labels, router_logits, s.num_experts, s.top_k, s.aux_coef, s.z_coef,
                               aux=aux)
            total = fault_injection.poison_loss(terms.total + extra, step + 1)
            fault_injection.after_forward(step + 1)
            engine.backward(total + touch_unused(vision, "pixel_values" not in inputs))
            engine.step()
            values = torch.stack([total, terms.lm, terms.aux, terms.z]).detach().double().cpu()
            sums[:4] += values
            if not torch.isfinite(values).all():
                sums[4] += 1
                bad_rows += mb.get("rows", [])
            expert_load.update(routed)
            window_tokens += mb["labels"].numel()
            window_logits += keep.sum()  # a tensor: no device sync per micro-batch
        step += 1
        steps_this_run += 1
        flags = torch.tensor([sums[4].item(), float(stop.requested), float(not engine.was_step_applied())],
                             dtype=torch.float64)
        reduced = torch.cat([sums[:4], flags, mtp_sum]).to(device)
        if world > 1:
            dist.all_reduce(reduced)
        reduced = reduced.cpu()
        if reduced[4] > 0 or reduced[6] > 0:  # NaN/Inf loss or gradients on some rank: skip or stop (policy)
            rows = bad_rows if reduced[4] > 0 else [r for mb in micro_batches for r in mb.get("rows", [])]
            nonfinite.handle(step, int(reduced[4]), applied=bool(reduced[6] == 0), rows=rows)
        mean = reduced[:4] / (world * len(micro_batches))
        val: dict[str, float] = {}
        if validation is not None and s.eval_every and (step % s.eval_every == 0 or step == s.max_steps):
            val = evaluate(engine, validation, val_settings, device)
            window_eval_s += val["val/seconds"]
        if step % s.log_every == 0 or step == s.max_steps:
            elapsed = time.perf_counter() - window_t0 - window_eval_s  # throughput of training alone
            # rows differ in length after trimming, and in labelled positions
            counts = torch.tensor([float(window_tokens), float(window_logits)], dtype=torch.float64, device=device)
            if world > 1:
                dist.all_reduce(counts)
            tokens, logits = counts.tolist()
            added = _peak_added_gib(s.memory, device, world)
            tokens_per_s = tokens / elapsed
            grad_norm = engine.get_global_grad_norm()
            last = {
                "loss": float(mean[0]), "lm_loss": float(mean[1]), "aux_loss": float(mean[2]),
                "z_loss": float(mean[3]), "lr": lr,
                "grad_norm": float(grad_norm) if grad_norm is not None else math.nan,
                "tokens": int(tokens), "tokens_per_s": tokens_per_s,
                "tflops_per_device": s.flops.of(tokens, logits) / elapsed / world / 1e12,
                "peak_memory_gib": _peak_memory_gib(device),
                "window_s": elapsed, "flops": s.flops.of(tokens, logits),
                "steps_this_run": steps_this_run, "nonfinite_skips": nonfinite.skipped,
            }
            if added is not None:
                last["peak_memory_added_gib"] = added  # the largest over ranks
            last["mfu"] = last["tflops_per_device"] / s.peak_tflops
            if mtp is not None:
                last["mtp_loss"] = float(reduced[7] / (world * len(micro_batches)))
            last.update(val)
            last.update(expert_load.reduce_and_reset(device))
            collapse = collapse_monitor.check(last)
            last["expert/collapse_warnings"] = len(collapse)
            for warning in collapse if metrics.enabled else []:
                log.warning("expert collapse at step %d: %s", step, warning)
            metrics.log(step, last)
            window_tokens, window_logits, window_t0, window_eval_s = 0, 0, time.perf_counter(), 0.0
        stopping = bool(reduced[5] > 0) or (s.stop_after_steps is not None and steps_this_run >= s.stop_after_steps)
        if step % s.checkpoint_every == 0 or step == s.max_steps or stopping:
            meta = {**s.meta, "data": batches.state_dict(), "wandb_id": metrics.wandb_id}
            checkpointer.save(engine, step, {"rng": rng_state(), "data": batches.state_dict()}, meta)
        if stopping:
            log.warning("stopping at step %d (%s)", step, "signal" if reduced[5] > 0 else "stop_after_steps")
            break
    return {"step": step, **last}

"""Test-only fault injection, read from one environment variable, `MOE_FAULT_INJECT`. Never set it in a real run.

The reliability tests use it to make a real failure happen at an exact point of a real run launched like a
user's (a rank SIGKILLed mid-step, a hung rank, a kill inside a checkpoint save, a NaN loss). The value is a
comma-separated list of `name@STEP` or `name@STEP:RANK` (STEP is the 1-based step being computed; no RANK: all):

    nan_loss@K      the loss of step K becomes NaN before backward (so its gradients are NaN too)
    sigkill@K       the process SIGKILLs itself in step K, after the forward pass (a rank dying mid-step)
    sigstop@K       the process SIGSTOPs itself in step K, after the forward pass (a hung rank)
    kill_in_save@K  the process SIGKILLs itself inside `Checkpointer.save` of step K, after DeepSpeed's files are
                    written and before the manifest and the COMPLETE marker
    nan_weight@K    at the start of `Checkpointer.save` of step K, one value of this rank's share of the first
                    parameter that has one (under ZeRO-3 its partition `ds_tensor`) becomes NaN
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from dataclasses import dataclass

import torch

ENV = "MOE_FAULT_INJECT"
NAMES = ("nan_loss", "sigkill", "sigstop", "kill_in_save", "nan_weight")


@dataclass(frozen=True)
class Fault:
    name: str
    step: int
    rank: int | None


def parse(spec: str) -> list[Fault]:
    faults = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, where = item.partition("@")
        step, _, rank = where.partition(":")
        if name not in NAMES or not step.isdigit() or (rank and not rank.isdigit()):
            raise ValueError(f"{ENV}={spec!r}: cannot read {item!r} (expected NAME@STEP[:RANK], NAME in {NAMES})")
        faults.append(Fault(name, int(step), int(rank) if rank else None))
    return faults


@functools.cache
def _faults() -> tuple[Fault, ...]:
    return tuple(parse(os.environ.get(ENV, "")))


def _active(name: str, step: int) -> bool:
    rank = int(os.environ.get("RANK", "0"))
    return any(f.name == name and f.step == step and f.rank in (None, rank) for f in _faults())


def _signal_self(sig: signal.Signals, what: str, step: int) -> None:
    print(f"[fault injection] {what} at step {step} on rank {os.environ.get('RANK', '0')} t={time.time():.3f}",
          file=sys.stderr, flush=True)
    os.kill(os.getpid(), sig)


def poison_loss(loss: torch.Tensor, step: int) -> torch.Tensor:
    return loss * float("nan") if _active("nan_loss", step) else loss


def after_forward(step: int) -> None:
    """A rank dies (SIGKILL) or hangs (SIGSTOP) between its forward and backward passes."""
    if _active("sigkill", step):
        _signal_self(signal.SIGKILL, "SIGKILL mid-step", step)
    if _active("sigstop", step):
        _signal_self(signal.SIGSTOP, "SIGSTOP mid-step", step)


def inside_save(step: int) -> None:
    if _active("kill_in_save", step):
        _signal_self(signal.SIGKILL, "SIGKILL inside Checkpointer.save", step)


def poison_weights(module: torch.nn.Module, step: int) -> None:
    if not _active("nan_weight", step):
        return
    for name, p in module.named_parameters():
        local = getattr(p, "ds_tensor", None)
        values = p.data if local is None else local.data
        if values.numel():
            values.view(-1)[0] = float("nan")
            print(f"[fault injection] NaN written into {name} (this rank's share) at step {step} on rank "
                  f"{os.environ.get('RANK', '0')}", file=sys.stderr, flush=True)
            return

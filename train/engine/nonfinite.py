"""What to do with a step whose loss or gradients are NaN/Inf: stop (default) or skip up to N such steps.

The update itself is dropped by DeepSpeed: its ZeRO optimizer checks the global gradient norm (all-reduced, so
every rank agrees) and on inf/NaN zeroes the accumulated gradients and skips the step (`skipped_steps`,
`was_step_applied() == False`). This policy checks that it did, counts, and stops with the offending batch's
packed-row indices from every rank. If the optimizer applied a non-finite step anyway (no overflow check:
ZeRO stage 0, or fp32 without gradient clipping), the weights may be damaged, so the run stops whatever the policy.
"""

from __future__ import annotations

import logging

import torch.distributed as dist

log = logging.getLogger(__name__)


def _gather_rows(rows: list[int]) -> list[list[int]]:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [rows]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, rows)
    return out


class NonFinitePolicy:
    def __init__(self, mode: str, max_skips: int) -> None:
        if mode not in ("stop", "skip"):
            raise ValueError(f"trainer.nonfinite={mode!r} is not one of ['stop', 'skip']")
        self.mode = mode
        self.max_skips = max_skips
        self.skipped = 0

    def handle(self, step: int, bad_losses: int, applied: bool, rows: list[int]) -> None:
        """Collective (every rank calls it for the same step). Returns when the step may be skipped, else raises."""
        per_rank = _gather_rows(rows)
        where = "; ".join(f"rank {r}: rows {sorted(set(ids))}" for r, ids in enumerate(per_rank) if ids)
        what = f"{bad_losses} non-finite micro-batch losses" if bad_losses else "non-finite gradients"
        if applied:
            raise FloatingPointError(
                f"step {step}: {what} and the optimizer applied the update (no overflow check: use ZeRO stage 1-3 "
                f"and optim.grad_clip > 0 in fp32); the weights may be damaged, stopping. Batch: {where or 'n/a'}")
        if self.mode == "stop" or self.skipped >= self.max_skips:
            raise FloatingPointError(
                f"step {step}: {what} (trainer.nonfinite={self.mode}, {self.skipped}/{self.max_skips} skips used); "
                f"nothing from this step is saved. Batch (packed-row indices of the training set): {where or 'n/a'}")
        self.skipped += 1
        if not dist.is_initialized() or dist.get_rank() == 0:
            log.warning("step %d skipped: %s, no update applied (%d/%d skips used). Batch: %s", step, what,
                        self.skipped, self.max_skips, where or "n/a")

"""Learning rate as a pure function of the step: resuming needs no scheduler state."""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "wsd")


def get_lr(step: int, lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float,
           schedule: str = "cosine", decay_fraction: float = 0.2) -> float:
    """Linear warmup to lr, then decay to min_lr_ratio * lr at max_steps.

    "cosine" decays from the end of warmup. "wsd" (warmup-stable-decay) holds lr until the last decay_fraction of
    the post-warmup steps and decays linearly over them: learning that arrives late (copying from the context in
    fine-tuning) gets the full rate for longer, and the run still ends annealed.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule={schedule!r} is not one of {list(SCHEDULES)}")
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return lr * min_lr_ratio
    total = max(1, max_steps - warmup_steps)
    if schedule == "cosine":
        coeff = 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / total))
    else:
        decay_steps = max(1, round(decay_fraction * total))
        coeff = min(1.0, (max_steps - step) / decay_steps)
    return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * coeff)

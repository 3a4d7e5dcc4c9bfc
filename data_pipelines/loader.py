"""Deterministic, resumable batches of packed rows for one data-parallel rank.

Every optimizer step consumes one global batch of `micro_batch * grad_accum * dp_size` rows from a seeded
per-epoch permutation. Micro-batch `a` of rank `r` takes slot `a * dp_size + r` of that batch, so a run on
one process with `grad_accum = k` sees exactly the rows that `k` processes see with `grad_accum = 1`.
The position is a plain dict (epoch, step) saved in every checkpoint.
"""

from __future__ import annotations

import datasets
import torch


class ResumableBatches:
    def __init__(self, rows: datasets.Dataset, micro_batch: int, grad_accum: int, dp_rank: int, dp_size: int,
                 seed: int) -> None:
        self.rows = rows.with_format("torch")
        self.micro_batch = micro_batch
        self.grad_accum = grad_accum
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.seed = seed
        self.global_batch = micro_batch * grad_accum * dp_size
        self.steps_per_epoch = len(rows) // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"the dataset has {len(rows)} rows, fewer than one global batch of {self.global_batch} "
                             "(trainer.micro_batch_size x trainer.grad_accum_steps x data-parallel size)")
        self.epoch = 0
        self.step = 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.rows), generator=g)

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        """The `grad_accum` micro-batches of this rank for the next optimizer step."""
        if self.step == self.steps_per_epoch:
            self.epoch += 1
            self.step = 0
            self._perm = self._permutation(self.epoch)
        base = self.step * self.global_batch
        micro = []
        for a in range(self.grad_accum):
            start = base + (a * self.dp_size + self.dp_rank) * self.micro_batch
            idx = self._perm[start:start + self.micro_batch].tolist()
            batch = self.rows[idx]
            micro.append({k: batch[k] for k in ("input_ids", "position_ids", "labels")})
        self.step += 1
        return micro

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step": self.step, "global_batch": self.global_batch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["global_batch"] != self.global_batch or state["seed"] != self.seed:
            raise ValueError(f"data position was saved with global batch {state['global_batch']} and seed "
                             f"{state['seed']}; this run has {self.global_batch} and {self.seed}")
        self.epoch = state["epoch"]
        self.step = state["step"]
        self._perm = self._permutation(self.epoch)

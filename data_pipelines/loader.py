"""Deterministic, resumable batches of packed rows for one data-parallel rank.

Every optimizer step consumes one global batch of `micro_batch * grad_accum * dp_size` rows from a seeded
per-epoch permutation. Micro-batch `a` of rank `r` takes slot `a * dp_size + r` of that batch, so a run on
one process with `grad_accum = k` sees exactly the rows that `k` processes see with `grad_accum = 1`.
With `length_group_steps = k`, each span of `k` global batches of the permutation is sorted by row length
(the width up to the last labelled token) and its global batches are shuffled, as transformers' `group_by_length`
does: a micro-batch is cut to its longest row, so rows of similar length waste less compute on padding.
The position is a plain dict (epoch, step) saved in every checkpoint. Rows become model inputs + labels
through a `Collator` (data_pipelines/collate.py); each micro-batch also carries `rows`, the indices of its rows
in the training set, so a bad step can name its samples.

`HeldOutBatches` are a rank's validation micro-batches: a fixed seeded sample of each held-out set, split over
the ranks like a training step, the same rows at every evaluation and as many batches on every rank.

`StreamingBatches` does the same for streams (datasets IterableDatasets, nothing cached): every global rank
reads its own shard, packs on the fly, and its position (the stream's `state_dict` plus the samples of the
row being filled) is saved per rank and restored exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import datasets
import torch

from data_pipelines.bad_input import BadInput
from data_pipelines.collate import Collator, labelled_row_widths

TENSOR_COLUMNS = ("input_ids", "position_ids", "labels", "mm_token_type_ids")


def labelled_widths(rows: datasets.Dataset) -> torch.Tensor:
    """Each row's width up to its last labelled token: what the collator keeps of it in a micro-batch alone
    (`trimmed_width`; a row without labels keeps its full width)."""
    widths = []
    for batch in rows.select_columns(["labels"]).with_format("torch").iter(batch_size=4096):
        labels = batch["labels"]
        width = labelled_row_widths(labels)
        widths.append(torch.where(width > 0, width, labels.shape[1]))
    return torch.cat(widths)


class ResumableBatches:
    def __init__(self, rows: datasets.Dataset, micro_batch: int, grad_accum: int, dp_rank: int, dp_size: int,
                 seed: int, collate: Callable[[dict], dict] | None = None, length_group_steps: int = 0) -> None:
        if length_group_steps < 0:
            raise ValueError(f"data.length_group_steps={length_group_steps}: expected 0 (off) or a number of steps")
        self.length_group_steps = length_group_steps
        self.lengths = labelled_widths(rows) if length_group_steps > 0 else None
        self.rows = rows.with_format("torch", columns=[c for c in TENSOR_COLUMNS if c in rows.column_names],
                                     output_all_columns=True)
        self.collate = collate or Collator(mode="packed", mrope=False)
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
        perm = torch.randperm(len(self.rows), generator=g)
        if self.lengths is None:
            return perm
        span = self.global_batch * self.length_group_steps
        used = self.steps_per_epoch * self.global_batch
        steps = []
        for start in range(0, used, span):
            group = perm[start:min(start + span, used)]
            group = group[torch.argsort(self.lengths[group], descending=True, stable=True)]
            steps += list(group.split(self.global_batch))
        order = torch.randperm(len(steps), generator=g)
        return torch.cat([steps[i] for i in order] + [perm[used:]])

    def next_step(self) -> list[dict]:
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
            batch = self.collate(self.rows[idx])
            batch["rows"] = idx  # which rows of the training set, named when a step goes non-finite
            micro.append(batch)
        self.step += 1
        return micro

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step": self.step, "global_batch": self.global_batch, "seed": self.seed,
                "length_group_steps": self.length_group_steps}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["global_batch"] != self.global_batch or state["seed"] != self.seed:
            raise ValueError(f"data position was saved with global batch {state['global_batch']} and seed "
                             f"{state['seed']}; this run has {self.global_batch} and {self.seed}")
        if state.get("length_group_steps", 0) != self.length_group_steps:
            raise ValueError(f"data position was saved with data.length_group_steps="
                             f"{state.get('length_group_steps', 0)}; this run has {self.length_group_steps} "
                             "(the row order would differ)")
        self.epoch = state["epoch"]
        self.step = state["step"]
        self._perm = self._permutation(self.epoch)


class HeldOutBatches:
    """Validation micro-batches of one rank, set by set; iterating yields (set index, micro-batch).

    Each set's rows are permuted once with a fixed seed (its first rows may all be alike: files are often
    sorted) and cut into global batches of `micro_batch * world_size` rows, at most `max_batches` of them; rank
    `r` takes slot `r` of each. A remainder smaller than a global batch is not evaluated, so every rank runs the
    same number of forwards (expert parallelism needs every rank in each one).
    """

    def __init__(self, sets: list[tuple[str, datasets.Dataset]], micro_batch: int, rank: int, world_size: int,
                 max_batches: int, collate: Callable[[dict], dict] | None = None) -> None:
        self.names = [name for name, _ in sets]
        self.collate = collate or Collator(mode="packed", mrope=False)
        self.rows: list[datasets.Dataset] = []
        self.plan: list[list[list[int]]] = []  # per set, per micro-batch: row indices
        global_batch = micro_batch * world_size
        for name, rows in sets:
            count = min(max_batches, len(rows) // global_batch)
            if count == 0:
                raise BadInput(f"validation set {name!r} has {len(rows)} rows, fewer than one batch of "
                                 f"{global_batch} (trainer.micro_batch_size x world size): give it more records "
                                 "(data.validation_fraction, data.validation)")
            perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))
            starts = [b * global_batch + rank * micro_batch for b in range(count)]
            self.plan.append([perm[s:s + micro_batch].tolist() for s in starts])
            self.rows.append(rows.with_format("torch", columns=[c for c in TENSOR_COLUMNS if c in rows.column_names],
                                              output_all_columns=True))

    def __len__(self) -> int:
        return sum(len(p) for p in self.plan)

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        for i, (rows, batches) in enumerate(zip(self.rows, self.plan, strict=True)):
            for idx in batches:
                yield i, self.collate(rows[idx])


class StreamingBatches:
    """Batches of one rank from a stream of encoded samples (already sharded for this rank), packed on the fly."""

    def __init__(self, samples: datasets.IterableDataset, seq_len: int, mode: str, pad_id: int, micro_batch: int,
                 grad_accum: int, collate: Callable[[dict], dict], multimodal: bool,
                 on_skip: Callable[[str], None] | None = None, on_warn: Callable[[str], None] | None = None) -> None:
        self.samples = samples
        self.seq_len = seq_len
        self.mode = mode
        self.pad_id = pad_id
        self.micro_batch = micro_batch
        self.grad_accum = grad_accum
        self.collate = collate
        self.multimodal = multimodal
        self.on_skip = on_skip
        self.on_warn = on_warn
        self.epoch = 0
        self.pending: list[dict] = []  # samples of the row being filled, not yet emitted
        self._it: Iterator | None = None

    def _keys(self) -> list[str]:
        return ["input_ids", "labels"] + (["mm_token_type_ids", "images", "image_grid_thw"] if self.multimodal else [])

    def _next_sample(self) -> dict:
        while True:
            if self._it is None:
                self.samples.set_epoch(self.epoch)
                self._it = iter(self.samples)
            try:
                s = next(self._it)
            except StopIteration:
                self.epoch += 1
                self._it = None
                continue
            if s.get("warn") and self.on_warn is not None:
                for mark in s["warn"].split("\n"):
                    self.on_warn(mark)
            if s.get("skip"):
                if self.on_skip is not None:
                    self.on_skip(s["skip"])
                continue
            return {k: s[k] for k in self._keys()}

    def _next_row(self) -> dict:
        from data_pipelines.packing import pack_samples

        used = sum(len(s["input_ids"]) for s in self.pending)
        while True:
            if self.pending and (self.mode == "per_document" or any(s.get("images") for s in self.pending)):
                break
            s = self._next_sample()
            if self.pending and (used + len(s["input_ids"]) > self.seq_len or s.get("images")):
                row_samples, self.pending = self.pending, [s]
                return self._pack(row_samples, pack_samples)
            self.pending.append(s)
            used += len(s["input_ids"])
        row_samples, self.pending = self.pending, []
        return self._pack(row_samples, pack_samples)

    def _pack(self, samples: list[dict], pack_samples) -> dict:
        for s in samples:
            if self.multimodal and not s["mm_token_type_ids"]:
                s["mm_token_type_ids"] = [0] * len(s["input_ids"])
        rows = pack_samples(samples, self.seq_len, "packed" if self.mode == "varlen" else self.mode, self.pad_id)
        assert len(rows["input_ids"]) == 1
        return {k: v[0] for k, v in rows.items()}

    def next_step(self) -> list[dict]:
        micro = []
        for _ in range(self.grad_accum):
            rows = [self._next_row() for _ in range(self.micro_batch)]
            micro.append(self.collate({k: [r[k] for r in rows] for k in rows[0]}))
        return micro

    def state_dict(self) -> dict:
        """This rank's exact position: the stream's state after the last sample read, and the pending samples."""
        return {"stream": self.samples.state_dict(), "epoch": self.epoch, "pending": self.pending}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.samples.set_epoch(self.epoch)
        self.samples.load_state_dict(state["stream"])
        self.pending = [dict(s) for s in state["pending"]]
        self._it = None

"""Rows -> one micro-batch: `{"inputs": model keyword arguments, "labels": tensor}`.

The loop calls `engine(**batch["inputs"])` and the loss with `batch["labels"]`; which inputs a model needs
is decided here, once: position ids only for packed rows (Qwen3) or always as 4-row mRoPE positions
(Qwen3.5: text positions + temporal/height/width, restarting per packed sample); for image rows
`pixel_values`, `image_grid_thw` and `mm_token_type_ids` (the processor runs here, in the loader, on the
images named by the rows); for `varlen` rows the micro-batch is flattened into one sequence with
`cu_seq_lens_*` for fla / flash attention. No attention mask is needed: rows are right-padded, attention is
causal and pads carry no labels; the padding after the last labelled column of a micro-batch is cut. Beside
the labels each micro-batch carries `token_mask`, True on real tokens, for what counts tokens rather than
labels (the load-balancing loss and the expert-load metrics).
"""

from __future__ import annotations

import torch

from data_pipelines.bad_input import BadRecord
from data_pipelines.images import ImageSpec, load_pixels, mrope_position_ids
from data_pipelines.packing import IGNORE_INDEX


def _segments(text_positions: list[int]) -> list[tuple[int, int]]:
    starts = [i for i, p in enumerate(text_positions) if p == 0] + [len(text_positions)]
    return list(zip(starts[:-1], starts[1:], strict=True))


def mrope_rows(position_ids: list[int], mm_token_type_ids: list[int], grids: list[list[int]]) -> torch.Tensor:
    """(3, L) mRoPE positions of one row, computed per packed sample (each restarts at 0 like its text positions)."""
    out = torch.zeros(3, len(position_ids), dtype=torch.long)
    images = iter(grids)
    for s, e in _segments(position_ids):
        types = mm_token_type_ids[s:e]
        n_img = sum(1 for i in range(s, e) if mm_token_type_ids[i] and (i == s or not mm_token_type_ids[i - 1]))
        out[:, s:e] = mrope_position_ids(types, [next(images) for _ in range(n_img)])
    return out


def varlen_kwargs(position_ids: torch.Tensor) -> dict[str, torch.Tensor | int]:
    """cu_seq_lens / max_length for one flattened row of packed samples (positions restart at 0 per sample)."""
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    cu = torch.cat([starts, torch.tensor([flat.numel()])]).to(torch.int32)
    max_len = int((cu[1:] - cu[:-1]).max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max_len, "max_length_k": max_len}


def real_token_mask(positions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Boolean (rows, width): True on real tokens, False on the padding `pack_samples` appends to a row.

    Padding follows a row's last sample with positions restarting at 0 and no labels, so it is the row's last
    segment (from its last position 0) when that segment carries no label. Labels alone cannot mark real tokens:
    a document's first token and a dialog's system and user turns carry none, and neither does the padding.
    """
    columns = torch.arange(positions.shape[1], device=positions.device)
    last_start = torch.where(positions == 0, columns, 0).amax(dim=1, keepdim=True)
    tail = columns >= last_start
    tail_labelled = ((labels != IGNORE_INDEX) & tail).any(dim=1, keepdim=True)
    return ~tail | tail_labelled


def labelled_row_widths(labels: torch.Tensor) -> torch.Tensor:
    """Per row, the columns up to its last labelled one (0 for a row without labels)."""
    columns = torch.arange(1, labels.shape[1] + 1, device=labels.device)
    return ((labels != IGNORE_INDEX) * columns).amax(dim=1)


def trimmed_width(labels: torch.Tensor) -> int:
    """Columns up to the last labelled one: the right padding after it changes nothing in a causal model
    (no labels, nothing attends to it), so it is cut instead of computed. Rows of short documents or
    dialogs padded to a long seq_len would otherwise cost most of a step."""
    return int(labelled_row_widths(labels).max()) or labels.shape[1]


class Collator:
    def __init__(self, mode: str, mrope: bool, image: ImageSpec | None = None) -> None:
        self.mode = mode
        self.mrope = mrope
        self.processor = image.processor() if image is not None else None

    def __call__(self, rows: dict) -> dict:
        input_ids = torch.as_tensor(rows["input_ids"], dtype=torch.long)
        labels = torch.as_tensor(rows["labels"], dtype=torch.long)
        positions = torch.as_tensor(rows["position_ids"], dtype=torch.long)
        width = trimmed_width(labels)
        input_ids, labels, positions = input_ids[:, :width], labels[:, :width], positions[:, :width]
        if rows.get("mm_token_type_ids") is not None:
            rows = {**rows, "mm_token_type_ids": [list(r)[:width] for r in rows["mm_token_type_ids"]]}
        token_mask = real_token_mask(positions, labels)
        inputs: dict = {"input_ids": input_ids}
        images = [p for row in rows.get("images", []) for p in row]
        if self.mrope:
            mm = rows.get("mm_token_type_ids")
            mm_list = [list(map(int, r)) for r in mm] if mm is not None else [[0] * input_ids.shape[1]] * len(input_ids)
            grids = rows.get("image_grid_thw") or [[] for _ in mm_list]
            mrope = torch.stack([mrope_rows(p.tolist(), m, [list(map(int, g)) for g in gs])
                                 for p, m, gs in zip(positions, mm_list, grids, strict=True)], dim=1)
            inputs["position_ids"] = torch.cat([positions[None], mrope], dim=0)
            if images:
                inputs["mm_token_type_ids"] = torch.as_tensor(mm_list, dtype=torch.int32)
        elif self.mode != "per_document":
            inputs["position_ids"] = positions
        if images:
            if self.processor is None:
                raise ValueError("rows carry images but no image settings were given to the collator")
            origins = [p for p in images]
            pixel_values, grid = load_pixels(images, self.processor, origins)
            expected = torch.as_tensor([list(map(int, g)) for gs in rows["image_grid_thw"] for g in gs])
            if not torch.equal(grid, expected):
                raise BadRecord(images[0], "image changed", "the image grid differs from the cached one; "
                                "the image files changed after the data cache was built")
            inputs["pixel_values"] = pixel_values
            inputs["image_grid_thw"] = grid
        if self.mode == "varlen":
            flat_pos = inputs["position_ids"]
            inputs["input_ids"] = input_ids.reshape(1, -1)
            inputs["position_ids"] = flat_pos.reshape(*flat_pos.shape[:-2], 1, -1)
            if "mm_token_type_ids" in inputs:
                inputs["mm_token_type_ids"] = inputs["mm_token_type_ids"].reshape(1, -1)
            inputs.update(varlen_kwargs(positions))
            labels = labels.reshape(1, -1)
            token_mask = token_mask.reshape(1, -1)
        return {"inputs": inputs, "labels": labels, "token_mask": token_mask}

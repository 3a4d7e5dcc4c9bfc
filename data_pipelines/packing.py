"""Pack tokenised documents into fixed-length rows without letting one document see another.

`packed`: documents share a row; position ids restart at every document, which transformers' full-attention
layers turn into a block-diagonal mask; the first token of each document gets no label, so nothing is learnt
across a boundary. `per_document`: one document (or a chunk of a long one) per row, padded; used where
attention cannot keep documents apart (Gated DeltaNet without varlen kernels).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
PACKING_MODES = ("packed", "per_document")


def has_linear_attention(hf_config) -> bool:
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    return "linear_attention" in (getattr(text, "layer_types", None) or [])


def resolve_packing_mode(requested: str, hf_config) -> str:
    """`auto` packs unless the model has Gated DeltaNet layers, whose state would leak between documents."""
    if requested != "auto":
        if requested == "packed" and has_linear_attention(hf_config):
            raise ValueError("data.packing=packed with Gated DeltaNet layers would leak state across documents; "
                             "use data.packing=auto or per_document")
        return requested
    return "per_document" if has_linear_attention(hf_config) else "packed"


def _chunks(ids: list[int], seq_len: int) -> list[list[int]]:
    return [ids[i:i + seq_len] for i in range(0, len(ids), seq_len)]


def pack_documents(docs: list[list[int]], seq_len: int, mode: str, pad_id: int) -> dict[str, list[list[int]]]:
    """Rows of `input_ids`, `position_ids` and `labels`, each exactly `seq_len` long."""
    if mode not in PACKING_MODES:
        raise ValueError(f"packing mode {mode!r} is not one of {PACKING_MODES}")
    rows: dict[str, list[list[int]]] = {"input_ids": [], "position_ids": [], "labels": []}
    ids: list[int] = []
    pos: list[int] = []
    labels: list[int] = []

    def flush() -> None:
        if not ids:
            return
        pad = seq_len - len(ids)
        rows["input_ids"].append(ids + [pad_id] * pad)
        rows["position_ids"].append(pos + list(range(pad)))
        rows["labels"].append(labels + [IGNORE_INDEX] * pad)
        ids.clear()
        pos.clear()
        labels.clear()

    for doc in docs:
        for chunk in _chunks(doc, seq_len):
            if mode == "per_document" or len(ids) + len(chunk) > seq_len:
                flush()
            ids.extend(chunk)
            pos.extend(range(len(chunk)))
            labels.extend([IGNORE_INDEX] + chunk[1:])
            if mode == "per_document":
                flush()
    flush()
    return rows

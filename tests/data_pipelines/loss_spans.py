"""The decoded runs of tokens that carry loss in a sample, for tests of rendering and formats."""

from __future__ import annotations

from collections.abc import Sequence

from data_pipelines.packing import IGNORE_INDEX


def loss_spans(tok, input_ids: Sequence[int], labels: Sequence[int]) -> list[str]:
    """Each maximal run of labelled positions, decoded; a label always equals its input token here (no shift)."""
    spans, cur = [], []
    for t, lab in zip(input_ids, labels, strict=True):
        if lab != IGNORE_INDEX:
            assert lab == t
            cur.append(t)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    if cur:
        spans.append(tok.decode(cur))
    return spans

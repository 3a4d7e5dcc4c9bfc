"""Batches are deterministic, split across ranks like grad accumulation, and resume exactly."""

from __future__ import annotations

import datasets
import pytest
import torch

from data_pipelines.loader import ResumableBatches


def _rows(n: int = 64, seq: int = 4) -> datasets.Dataset:
    ids = [[i] * seq for i in range(n)]
    return datasets.Dataset.from_dict({"input_ids": ids, "position_ids": ids, "labels": ids})


def _ids(step_batches) -> list[int]:
    return [int(x) for mb in step_batches for x in mb["inputs"]["input_ids"][:, 0]]


def test_two_ranks_see_what_one_rank_with_grad_accum_sees():
    one = ResumableBatches(_rows(), micro_batch=2, grad_accum=2, dp_rank=0, dp_size=1, seed=3)
    r0 = ResumableBatches(_rows(), micro_batch=2, grad_accum=1, dp_rank=0, dp_size=2, seed=3)
    r1 = ResumableBatches(_rows(), micro_batch=2, grad_accum=1, dp_rank=1, dp_size=2, seed=3)
    for _ in range(20):  # crosses an epoch boundary (16 steps per epoch)
        single = one.next_step()
        assert _ids(single[:1]) == _ids(r0.next_step())
        assert _ids(single[1:]) == _ids(r1.next_step())


def test_resume_continues_with_the_same_rows_and_epochs_reshuffle():
    a = ResumableBatches(_rows(), micro_batch=4, grad_accum=1, dp_rank=0, dp_size=1, seed=0)
    first_epoch = [_ids(a.next_step()) for _ in range(16)]
    state = a.state_dict()
    expected = [_ids(a.next_step()) for _ in range(5)]
    b = ResumableBatches(_rows(), micro_batch=4, grad_accum=1, dp_rank=0, dp_size=1, seed=0)
    b.load_state_dict(state)
    assert [_ids(b.next_step()) for _ in range(5)] == expected
    assert sorted(sum(first_epoch, [])) == list(range(64))
    assert expected[0] != first_epoch[0]


def test_mismatched_global_batch_is_refused():
    a = ResumableBatches(_rows(), micro_batch=4, grad_accum=1, dp_rank=0, dp_size=1, seed=0)
    b = ResumableBatches(_rows(), micro_batch=2, grad_accum=1, dp_rank=0, dp_size=1, seed=0)
    with pytest.raises(ValueError, match="global batch 4"):
        b.load_state_dict(a.state_dict())


def test_too_small_dataset_names_the_knobs():
    with pytest.raises(ValueError, match="trainer.micro_batch_size"):
        ResumableBatches(_rows(n=3), micro_batch=4, grad_accum=1, dp_rank=0, dp_size=1, seed=0)


def test_batches_are_tensors():
    a = ResumableBatches(_rows(), micro_batch=4, grad_accum=1, dp_rank=0, dp_size=1, seed=0)
    mb = a.next_step()[0]
    assert isinstance(mb["inputs"]["input_ids"], torch.Tensor) and mb["inputs"]["input_ids"].shape == (4, 4)
    assert mb["labels"].shape == (4, 4)


def _rows_of_lengths(lengths: list[int], seq: int = 16) -> datasets.Dataset:
    """Row i: ids all i, labelled up to `lengths[i]` then padded (what the SFT and per-document rows look like)."""
    ids = [[i] * seq for i in range(len(lengths))]
    labels = [[i] * n + [-100] * (seq - n) for i, n in enumerate(lengths)]
    return datasets.Dataset.from_dict({"input_ids": ids, "position_ids": ids, "labels": labels})


def test_length_grouping_cuts_padding_and_keeps_every_row_once_per_epoch():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 17, (128,), generator=g).tolist()
    rows = _rows_of_lengths(lengths)
    plain = ResumableBatches(rows, micro_batch=4, grad_accum=1, dp_rank=0, dp_size=1, seed=0)
    grouped = ResumableBatches(rows, micro_batch=4, grad_accum=1, dp_rank=0, dp_size=1, seed=0,
                               length_group_steps=8)
    widths = {"plain": 0, "grouped": 0}
    seen: list[int] = []
    for _ in range(32):  # one epoch
        for name, b in (("plain", plain), ("grouped", grouped)):
            mb = b.next_step()[0]
            widths[name] += mb["inputs"]["input_ids"].shape[1]
            if name == "grouped":
                seen += _ids([mb])
                assert mb["labels"].shape[1] == max(lengths[i] for i in _ids([mb]))
    assert sorted(seen) == list(range(128))
    assert widths["grouped"] < 0.8 * widths["plain"], widths


def test_length_grouping_splits_like_grad_accum_and_resumes():
    lengths = [1 + (7 * i) % 16 for i in range(64)]
    one = ResumableBatches(_rows_of_lengths(lengths), 2, 2, 0, 1, seed=3, length_group_steps=4)
    r0 = ResumableBatches(_rows_of_lengths(lengths), 2, 1, 0, 2, seed=3, length_group_steps=4)
    r1 = ResumableBatches(_rows_of_lengths(lengths), 2, 1, 1, 2, seed=3, length_group_steps=4)
    for _ in range(20):  # crosses an epoch boundary
        single = one.next_step()
        assert _ids(single[:1]) == _ids(r0.next_step())
        assert _ids(single[1:]) == _ids(r1.next_step())
    state = one.state_dict()
    expected = [_ids(one.next_step()) for _ in range(5)]
    again = ResumableBatches(_rows_of_lengths(lengths), 2, 2, 0, 1, seed=3, length_group_steps=4)
    again.load_state_dict(state)
    assert [_ids(again.next_step()) for _ in range(5)] == expected
    plain = ResumableBatches(_rows_of_lengths(lengths), 2, 2, 0, 1, seed=3)
    with pytest.raises(ValueError, match="length_group_steps=4"):
        plain.load_state_dict(state)

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

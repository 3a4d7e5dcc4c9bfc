"""The load-balancing loss in both modes against transformers' function and an independent reference.

`micro_batch` is transformers' `load_balancing_loss_func` itself; `global_batch` is checked against a reference
written here from the definition (train/engine/load_balance.py): micro-batch m of a step uses the expert shares
f over the step's micro-batches 1..m and its own mean router probabilities P, padding excluded. The 2-rank case
through the real engine is tests/engine/test_load_balance_ep.py.
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

from data_pipelines.collate import Collator, real_token_mask
from data_pipelines.packing import IGNORE_INDEX, pack_documents, pack_samples
from train.engine.load_balance import LoadBalancingLoss, routed_counts

E, K, LAYERS = 8, 2, 3


def _logits(rows: int, width: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    # uneven experts, so that balancing over different token sets gives different numbers
    bias = torch.linspace(-1.0, 1.0, E)
    return tuple((torch.randn(rows * width, E, generator=g) + bias).requires_grad_() for _ in range(LAYERS))


def reference_losses(micro_batches: list[tuple[tuple[torch.Tensor, ...], torch.Tensor]], num_experts: int = E,
                     top_k: int = K) -> list[torch.Tensor]:
    """Each micro-batch's E * sum_i f_i P_i, written from the definition: f_i from the one-hot top-k choices of
    the real tokens of micro-batches 1..m over all layers, P_i the mean router probability of micro-batch m's
    real tokens over all layers. A step's loss is their mean (what gradient accumulation differentiates)."""
    seen_choices, seen_tokens, losses = torch.zeros(num_experts, dtype=torch.float64), 0.0, []
    for logits, mask in micro_batches:
        keep = mask.reshape(-1)
        probs = [torch.softmax(x, dim=-1)[keep] for x in logits]
        choices = sum(torch.nn.functional.one_hot(p.topk(top_k, dim=-1).indices, num_experts).sum((0, 1)).double()
                      for p in probs)
        seen_choices, seen_tokens = seen_choices + choices, seen_tokens + float(keep.sum())
        f = (seen_choices / (len(logits) * seen_tokens)).float()
        losses.append(num_experts * (f * torch.cat(probs).mean(0)).sum())
    return losses


def reference_step(micro_batches: list[tuple[tuple[torch.Tensor, ...], torch.Tensor]]) -> torch.Tensor:
    return torch.stack(reference_losses(micro_batches)).mean()


def _padded_mask(rows: int, width: int, real: list[int]) -> torch.Tensor:
    return torch.arange(width)[None, :] < torch.tensor(real)[:, None]


def test_real_token_mask_marks_the_padding_of_packed_and_per_document_rows():
    # pretraining documents: the first token of each carries no label, the last one does; padding none
    docs = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    for mode, real in (("packed", [9]), ("per_document", [3, 2, 4])):
        rows = pack_documents(docs, 12, mode, pad_id=0)
        batch = Collator(mode=mode, mrope=False)(rows)
        width = batch["labels"].shape[1]
        assert batch["token_mask"].tolist() == _padded_mask(len(real), width, real).tolist(), mode
        # labels alone would drop each document's first token and keep nothing that marks the padding
        assert not torch.equal(batch["token_mask"], batch["labels"] != IGNORE_INDEX)


def test_real_token_mask_keeps_unlabelled_turns_of_chat_samples():
    # a dialog: system/user tokens unlabelled, the assistant's labelled, then an unlabelled trailing token
    dialog = {"input_ids": [1, 2, 3, 4, 5, 6], "labels": [IGNORE_INDEX] * 3 + [4, 5, IGNORE_INDEX]}
    short = {"input_ids": [7, 8, 9], "labels": [IGNORE_INDEX, 8, 9]}
    rows = pack_samples([dialog, short], 16, "per_document", pad_id=0)
    batch = Collator(mode="per_document", mrope=True)(rows)
    assert batch["labels"].shape[1] == 5  # cut after the last labelled column
    assert batch["token_mask"].tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    packed = pack_samples([dialog, short, short], 16, "packed", pad_id=0)
    mask = real_token_mask(torch.tensor(packed["position_ids"]), torch.tensor(packed["labels"]))
    assert mask.tolist() == [[True] * 12 + [False] * 4]


def test_micro_batch_is_transformers_loss_exactly():
    logits = _logits(2, 9, seed=0)
    today = load_balancing_loss_func(logits, E, K, None)
    loss = LoadBalancingLoss("micro_batch", E, K)
    assert torch.equal(loss(logits, None)[0], today)
    assert torch.equal(loss(logits, torch.ones(2, 9, dtype=torch.bool))[0], today)
    # with padding: transformers' own attention-mask path, i.e. today's loss on the real tokens alone
    mask = _padded_mask(2, 9, [9, 4])
    padded = loss(logits, mask)[0]
    assert torch.equal(padded, load_balancing_loss_func(logits, E, K, mask))
    real_only = tuple(x[mask.reshape(-1)] for x in logits)
    assert padded.item() == pytest.approx(load_balancing_loss_func(real_only, E, K, None).item(), abs=1e-6)
    assert abs(padded.item() - today.item()) > 1e-3  # the padding did count before


@pytest.mark.parametrize("real", [[9, 9], [9, 4]], ids=["no_padding", "padding"])
def test_global_batch_at_world_size_one_with_one_micro_batch_equals_micro_batch(real):
    logits = _logits(2, 9, seed=1)
    mask = _padded_mask(2, 9, real)
    micro, micro_counts = LoadBalancingLoss("micro_batch", E, K)(logits, mask)
    glob, glob_counts = LoadBalancingLoss("global_batch", E, K)(logits, mask)
    assert torch.equal(glob, micro)
    assert torch.equal(glob_counts, micro_counts)
    (g_micro,) = torch.autograd.grad(micro, logits[0])
    (g_glob,) = torch.autograd.grad(glob, logits[0])
    assert torch.allclose(g_glob, g_micro, atol=1e-9)


def test_global_batch_with_gradient_accumulation_matches_the_reference_definition():
    """Three micro-batches of one step, each with different padding: per-micro-batch losses and the gradients
    of their mean (what DeepSpeed's accumulation differentiates) equal the reference; the next step restarts."""
    shapes = [(2, 9, [9, 4]), (3, 6, [6, 6, 1]), (1, 12, [7])]
    step = [(_logits(rows, width, seed=10 + i), _padded_mask(rows, width, real))
            for i, (rows, width, real) in enumerate(shapes)]
    loss = LoadBalancingLoss("global_batch", E, K)
    loss.start_step()
    ours = torch.stack([loss(logits, mask)[0] for logits, mask in step]).mean()
    reference = reference_step(step)
    assert ours.item() == pytest.approx(reference.item(), abs=1e-6)
    leaves = [x for logits, _ in step for x in logits]
    for a, b in zip(torch.autograd.grad(ours, leaves), torch.autograd.grad(reference, leaves), strict=True):
        assert torch.allclose(a, b, atol=1e-7)
    # a micro-batch-level loss is a different number once the step has more than one micro-batch
    micro = torch.stack([load_balancing_loss_func(logits, E, K, mask) for logits, mask in step]).mean()
    assert abs(micro.item() - reference.item()) > 1e-3
    loss.start_step()
    first = loss(*step[1])[0]
    assert first.item() == pytest.approx(reference_step([step[1]]).item(), abs=1e-6)


def test_routed_counts_are_top_k_choices_of_real_tokens_per_layer():
    logits = torch.tensor([[5.0, 4.0, 0.0, 0.0], [5.0, 0.0, 4.0, 0.0], [0.0, 0.0, 5.0, 4.0]])
    counts = routed_counts((logits, logits.flip(-1)), 2, 4, None)
    assert counts.tolist() == [[2, 1, 2, 1], [1, 2, 1, 2]]
    masked = routed_counts((logits, logits.flip(-1)), 2, 4, torch.tensor([[True, True, False]]))
    assert masked.tolist() == [[2, 1, 1, 0], [0, 1, 1, 2]]


def test_an_unknown_mode_names_the_key():
    with pytest.raises(ValueError, match="loss.balance='global'"):
        LoadBalancingLoss("global", E, K)

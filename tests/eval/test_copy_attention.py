"""benchmarks/copy_attention.py: a head that looks at an earlier copy of the value's start is counted as `start`,
one that looks k tokens past it as `after+k`, and the layers are named by their place in the stack."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from benchmarks.copy_attention import SKIP_LAST, argument_starts, classify, probe
from tests.eval.reference_world import write_reference_world
from train.eval.reference_dialogs import argument_tokens, shared_prefix


def test_classify() -> None:
    assert classify(10, [10, 20]) == "start"
    assert classify(12, [10, 20]) == "after+2"
    assert classify(21, [10, 20]) == "after+1"
    assert classify(14, [10]) == "other"
    assert classify(9, [10]) == "other"
    assert classify(3, []) == "other"


class _Pointing(torch.nn.Module):
    """Stand-in model: one full-attention layer (after a GDN one) whose head 0 puts all weight on the last earlier
    copy of the next token, shifted by `shift`, and whose head 1 looks at position 0."""

    def __init__(self, shift: int) -> None:
        super().__init__()
        self.shift = shift
        self.config = SimpleNamespace(model_type="qwen3_5_moe", get_text_config=lambda: SimpleNamespace(
            layer_types=["linear_attention", "full_attention"], num_hidden_layers=2))

    def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        ids = input_ids[0].tolist()
        n = len(ids)
        att = torch.zeros(1, 2, n, n)
        att[0, 1, :, 0] = 1.0
        for q in range(n - 1):
            earlier = [i for i in range(q - SKIP_LAST) if ids[i] == ids[q + 1]]
            att[0, 0, q, earlier[-1] + self.shift if earlier else 0] = 1.0
        return SimpleNamespace(attentions=(None, att))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    _, tok = write_reference_world(root, 8, "qwen3_5_nothink")
    return root, tok


def test_starts_are_the_digit_after_the_id_prefix(world) -> None:
    _, tok = world
    text = "<tool_call>\n<function=place_order>\n<parameter=item_id>\nI4705\n</parameter>\n<parameter=count>\n2\n" \
           "</parameter>\n</function>\n</tool_call>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    item_ids = [tok(v, add_special_tokens=False)["input_ids"] for v in ("I4705", "I3912")]
    starts = argument_starts(argument_tokens(tok, ids), ("item_id", "count"), {"item_id": shared_prefix(item_ids)})
    assert [(name, tok.decode([ids[j]])) for name, j in starts] == [("item_id", "4"), ("count", "2")]


@pytest.mark.parametrize(("shift", "expected"), [(0, "start"), (2, "after+2")])
def test_a_head_on_the_source_is_classified_by_where_it_looks(world, shift, expected) -> None:
    root, tok = world
    result = probe(_Pointing(shift), tok, str(root), None, ("order_id", "time"))
    # order ids and times are always copied from an earlier tool result or user message
    for name in ("order_id", "time"):
        assert result[f"{name} layer 1 head 0"] == {expected: 1.0}
        assert result[f"{name} layer 1 head 1"] == {"other": 1.0}
    assert not any(k.startswith("city") for k in result)

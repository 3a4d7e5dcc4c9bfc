"""benchmarks/copy_attention.py: a head that looks at an earlier copy of the value's start is counted as `start`,
one that looks k tokens past it as `after+k`, and the layers are named by their place in the stack."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from benchmarks.copy_attention import SKIP_LAST, argument_starts, classify, probe
from data_pipelines.commerce_world.catalogue import build_catalogue
from data_pipelines.commerce_world.dialogs import write_dialog
from data_pipelines.commerce_world.scenarios import draw_scenarios
from data_pipelines.tokenizer import train_bpe_tokenizer


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
    cat = build_catalogue(seed=3)
    dialogs = [write_dialog(sc, cat) for sc in draw_scenarios(cat, "test", 8, seed=3)]
    root = tmp_path_factory.mktemp("world")
    (root / "dialogs").mkdir()
    (root / "dialogs" / "test.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dialogs))
    texts = [m.get("content") or json.dumps(m.get("tool_calls"), ensure_ascii=False) for d in dialogs
             for m in d["messages"]]
    return root, train_bpe_tokenizer(texts, 600, root / "tok", chat_template="qwen3_5_nothink")


def test_starts_are_the_digit_after_the_id_prefix(world) -> None:
    _, tok = world
    text = "<tool_call>\n<function=place_order>\n<parameter=item_id>\nI4705\n</parameter>\n<parameter=count>\n2\n" \
           "</parameter>\n</function>\n</tool_call>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    starts = argument_starts(tok, ids, ("item_id", "count"))
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

"""Teacher-forced scoring of the reference dialogs: a model that always predicts the next token scores 1, one
that never writes a digit scores 0 on digits, and the digits counted are exactly those the assistant wrote;
argument values score 0 exactly where they hold a digit the model gets wrong, in both tool-call formats, and a
value's start (the token that picks which value to copy) is scored apart from its continuation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from accelerate import PartialState

from tests.eval.reference_world import write_reference_world
from train.eval.reference_dialogs import (
    argument_scores,
    argument_spans,
    digit_token_ids,
    evaluate_reference_dialogs,
)


class _Fixed(torch.nn.Module):
    """A stand-in model: `next_token(input_ids)` decides each position's prediction."""

    def __init__(self, vocab: int, next_token) -> None:
        super().__init__()
        self.vocab, self.next_token = vocab, next_token
        self.device = torch.device("cpu")

    def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.nn.functional.one_hot(self.next_token(input_ids), self.vocab).float())


@pytest.fixture(scope="module", params=["qwen3_5_nothink", "qwen3"])
def world(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("world")
    dialogs, tok = write_reference_world(root, 12, request.param)
    return root, dialogs, tok


def _assistant_digits(dialogs: list[dict]) -> int:
    """Digits the assistant wrote: in its texts and in its tool calls' argument values."""
    n = 0
    for d in dialogs:
        for m in d["messages"]:
            if m["role"] != "assistant":
                continue
            n += sum(c.isdigit() for c in m.get("content") or "")
            for call in m.get("tool_calls") or []:
                n += sum(c.isdigit() for v in call["function"]["arguments"].values() for c in str(v))
    return n


def _assistant_arguments(dialogs: list[dict]) -> list[tuple[str, str]]:
    """(name, value) of every argument of the assistant's tool calls."""
    return [(k, str(v)) for d in dialogs for m in d["messages"] if m["role"] == "assistant"
            for call in m.get("tool_calls") or [] for k, v in call["function"]["arguments"].items()]


def _score(world, next_token) -> dict:
    root, _, tok = world
    model = _Fixed(len(tok), next_token)
    return evaluate_reference_dialogs(model, tok, str(root), "test", None, mrope=True, render_tools=False,
                                      state=PartialState(cpu=True))


def test_argument_spans_in_both_tool_call_formats() -> None:
    xml = "<tool_call>\n<function=place_order>\n<parameter=item_id>\nI4705\n</parameter>\n<parameter=count>\n2\n" \
          "</parameter>\n</function>\n</tool_call>"
    as_json = '<tool_call>\n{"name": "search_items", "arguments": {"city": "Xi\'an, \\"old\\"", "max_price": 25}}\n' \
              "</tool_call>"
    assert [(n, xml[a:b]) for n, a, b in argument_spans(xml)] == [("item_id", "I4705"), ("count", "2")]
    assert [(n, as_json[a:b]) for n, a, b in argument_spans(as_json)] == [("city", 'Xi\'an, \\"old\\"'),
                                                                          ("max_price", "25")]


def test_digit_tokens_are_the_ten_digits(world) -> None:
    _, _, tok = world
    assert sorted(tok.convert_ids_to_tokens(digit_token_ids(tok))) == list("0123456789")


def test_a_model_that_knows_the_next_token_scores_one(world) -> None:
    _, dialogs, _ = world
    scores = _score(world, lambda ids: torch.roll(ids, -1, dims=-1))
    assert scores["reference_assistant_token_acc"] == 1.0
    assert scores["reference_digit_acc"] == 1.0
    assert scores["reference_dialogs"] == len(dialogs)
    assert scores["reference_digits"] == _assistant_digits(dialogs) > 0
    names = {name for name, _ in _assistant_arguments(dialogs)}
    assert {"city", "item_id", "order_id", "time"} <= names
    assert scores["reference_args"] == len(_assistant_arguments(dialogs))
    assert scores["reference_dialogs_without_offsets"] == 0
    assert scores["reference_arg_acc"] == 1.0
    assert all(scores[f"reference_arg_acc[{name}]"] == 1.0 for name in names)
    assert all(scores[f"reference_arg_start_acc[{name}]"] == 1.0 for name in names)
    assert scores["reference_arg_continue_acc[order_id]"] == 1.0


def test_an_argument_with_one_wrong_digit_is_wrong(world) -> None:
    _, dialogs, tok = world
    digits = torch.tensor(digit_token_ids(tok))
    wrong_digit = dict(zip(digits.tolist(), digits.roll(1).tolist(), strict=True))

    def next_but_digits_off_by_one(ids: torch.Tensor) -> torch.Tensor:
        nxt = torch.roll(ids, -1, dims=-1)
        return nxt.apply_(lambda t: wrong_digit.get(t, t))

    scores = _score(world, next_but_digits_off_by_one)
    assert scores["reference_digit_acc"] == 0.0
    arguments = _assistant_arguments(dialogs)
    for name in {n for n, _ in arguments}:
        values = [v for n, v in arguments if n == name]
        expected = sum(not any(c.isdigit() for c in v) for v in values) / len(values)
        assert scores[f"reference_arg_acc[{name}]"] == pytest.approx(expected), name
    assert scores["reference_arg_acc[city]"] == 1.0 and scores["reference_arg_acc[item_id]"] == 0.0


def test_a_model_that_writes_no_digits_scores_zero_on_them(world) -> None:
    _, _, tok = world
    space = tok.convert_tokens_to_ids("Ġ")
    scores = _score(world, lambda ids: torch.full_like(ids, space))
    assert scores["reference_digit_acc"] == 0.0
    assert 0.0 < scores["reference_assistant_token_acc"] < 0.5


def test_start_and_continuation_are_scored_apart() -> None:
    """The start is the first token after the prefix every value of the argument shares ("I" of item ids)."""
    item, b, e = 7, 8, 9
    scores = argument_scores([("item_id", [item, 4, 9], [True, False, True]),
                              ("item_id", [item, 5, 1], [True, True, True]),
                              ("city", [b, e], [False, True])])
    assert scores["reference_arg_acc"] == pytest.approx(1 / 3)
    assert scores["reference_arg_acc[item_id]"] == 0.5 and scores["reference_arg_acc[city]"] == 0.0
    assert scores["reference_arg_start_acc[item_id]"] == 0.5
    assert scores["reference_arg_continue_acc[item_id]"] == 1.0
    assert scores["reference_arg_start_acc[city]"] == 0.0 and scores["reference_arg_continue_acc[city]"] == 1.0


def test_a_model_that_misses_only_where_a_copy_starts(world) -> None:
    """Wrong on the first digit of every run of digits, right on the rest given the true ones: ids are never right,
    their starts all wrong and their continuations all right; cities are untouched."""
    _, _, tok = world
    digits = torch.tensor(digit_token_ids(tok))
    wrong_digit = dict(zip(digits.tolist(), digits.roll(1).tolist(), strict=True))

    def next_but_first_digits_off(ids: torch.Tensor) -> torch.Tensor:
        nxt = torch.roll(ids, -1, dims=-1)
        starts = torch.isin(nxt, digits) & ~torch.isin(ids, digits)
        return torch.where(starts, nxt.apply_(lambda t: wrong_digit.get(t, t)), torch.roll(ids, -1, dims=-1))

    scores = _score(world, next_but_first_digits_off)
    for name in ("item_id", "order_id"):
        assert scores[f"reference_arg_acc[{name}]"] == 0.0
        assert scores[f"reference_arg_start_acc[{name}]"] == 0.0
        assert scores[f"reference_arg_continue_acc[{name}]"] == 1.0
    assert scores["reference_arg_start_acc[city]"] == 1.0 and scores["reference_arg_acc[city]"] == 1.0
    assert 0.0 < scores["reference_digit_acc"] < 1.0

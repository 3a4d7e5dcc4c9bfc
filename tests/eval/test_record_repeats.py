"""Copying on the repeats of held-out order records: the spans are exactly the digits of the confirmed ids (the same
ids, in the same order, as the first mentions), a model that knows the next token scores 1, one that gets every
digit wrong scores 0, and first and later digits are counted apart."""

from __future__ import annotations

import json
import re

import pytest
import torch
from accelerate import PartialState

from data_pipelines.commerce_world.catalogue import build_catalogue
from data_pipelines.commerce_world.corpus import text_documents
from data_pipelines.commerce_world.records import order_records
from data_pipelines.tokenizer import train_bpe_tokenizer
from tests.eval.test_reference_dialogs import _Fixed
from train.eval.record_repeats import evaluate_record_repeats, repeated_id_spans, score_record
from train.eval.reference_dialogs import digit_token_ids

FIRST_MENTION = re.compile(r"Order O(\d{4}) by|订单O(\d{4}):")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    catalogue = build_catalogue(seed=3).in_split("train")
    records = order_records(catalogue, 10, seed=3, split="validation")
    docs = records + text_documents(catalogue, seed=3)[:3]  # shop texts in the same file are not records
    root = tmp_path_factory.mktemp("world")
    (root / "pretrain").mkdir()
    (root / "pretrain" / "text_validation.jsonl").write_text(
        "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    tok = train_bpe_tokenizer([d["text"] for d in docs], 600, root / "tok", chat_template="qwen3_5_nothink")
    return root, records, tok


def _score(world, next_token) -> dict:
    root, _, tok = world
    return evaluate_record_repeats(_Fixed(len(tok), next_token), tok, str(root), None, mrope=True,
                                   state=PartialState(cpu=True))


def test_spans_are_the_digits_of_the_confirmed_ids_in_both_languages(world) -> None:
    _, records, _ = world
    assert {r["id"][-2:] for r in records} == {"en", "zh"}
    for r in records:
        text = r["text"]
        first = [a or b for a, b in FIRST_MENTION.findall(text)]
        assert [text[a:b] for a, b in repeated_id_spans(text)] == first and first


def test_a_model_that_knows_the_next_token_scores_one(world) -> None:
    _, records, _ = world
    scores = _score(world, lambda ids: torch.roll(ids, -1, dims=-1))
    n_ids = sum(len(repeated_id_spans(r["text"])) for r in records)
    assert scores["record_repeat_records"] == len(records)
    assert scores["record_repeat_ids"] == n_ids > 0
    for key in ("digit_acc", "first_digit_acc", "later_digit_acc", "id_acc"):
        assert scores[f"record_repeat_{key}"] == 1.0, key


def test_a_model_that_gets_every_digit_wrong_scores_zero(world) -> None:
    _, _, tok = world
    digits = torch.tensor(digit_token_ids(tok))
    wrong_digit = dict(zip(digits.tolist(), digits.roll(1).tolist(), strict=True))
    scores = _score(world, lambda ids: torch.roll(ids, -1, dims=-1).apply_(lambda t: wrong_digit.get(t, t)))
    for key in ("digit_acc", "first_digit_acc", "later_digit_acc", "id_acc"):
        assert scores[f"record_repeat_{key}"] == 0.0, key


def test_first_and_later_digits_are_counted_apart() -> None:
    # tokens: "O", "1", "2", "3", "4", " ok" over "O1234 ok"; the id's digits are characters 1..5
    offsets = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 8)]
    right = [False, False, True, True, True, False]
    assert score_record(right, offsets, [(1, 5)]) == [0, 1, 3, 3, 0, 1]
    assert score_record([True] * 6, offsets, [(1, 5)]) == [1, 1, 3, 3, 1, 1]

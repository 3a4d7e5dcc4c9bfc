"""Held-out sets: a hashed fraction of every source never reaches the training rows; explicit validation sources
are packed (and their SFT loss mask set) exactly as training rows; each rank's validation batches."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from data_pipelines.config import DataConfig, SourceConfig
from data_pipelines.holdout import held_out
from data_pipelines.loader import HeldOutBatches
from data_pipelines.tokenizer import train_bpe_tokenizer
from data_pipelines.training_data import prepare_data
from tests.conftest import compose
from train.models.build import build_hf_config

N_DIALOGS = 80


def _dialog(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"Milk tea number {i}, please."},
                         {"role": "assistant", "content": f"Order {i} is placed."}]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    path = root / "dialogs.jsonl"
    path.write_text("".join(json.dumps(_dialog(i)) + "\n" for i in range(N_DIALOGS)))
    texts = [m["content"] for i in range(N_DIALOGS) for m in _dialog(i)["messages"]]
    tok = train_bpe_tokenizer(texts, 400, root / "bpe", chat_template="qwen3_5_nothink")
    tok.save_pretrained(root / "tok")
    hf = build_hf_config(compose(["model=qwen3_5_moe_tiny"]).model)
    return {"root": root, "path": path, "tok": str(root / "tok"), "hf": hf, "tokenizer": tok}


def _data(world, tmp: Path, **kw):
    cfg = DataConfig(kind="sft", source="files", seq_len=128, chat_template="qwen3_5_nothink", tokenizer=world["tok"],
                     render_tools=False, sources=[SourceConfig(kind="chat", path=str(world["path"]))], **kw)
    return prepare_data(cfg, world["hf"], tmp / "data", tmp / "cache", True, lambda: None, with_validation=True)


def _dialog_ids(tok, rows: datasets.Dataset) -> list[int]:
    return [int(tok.decode(ids).split("Milk tea number ")[1].split(",")[0]) for ids in rows["input_ids"]]


def test_held_out_dialogs_never_reach_the_training_rows(world, tmp_path):
    data = _data(world, tmp_path, validation_fraction=0.25)
    tok = world["tokenizer"]
    train_ids, (val,) = _dialog_ids(tok, data.train_rows), data.validation
    val_ids = _dialog_ids(tok, val.rows)
    assert val.name == "dialogs"
    assert not set(train_ids) & set(val_ids)
    assert sorted(train_ids + val_ids) == list(range(N_DIALOGS))  # nothing lost, nothing read twice
    # the split is the content hash's, independent of anything else in the run
    records = world["path"].read_text().splitlines()
    assert sorted(val_ids) == [i for i, r in enumerate(records) if held_out(r, "", 0.25)]
    assert 0.1 * N_DIALOGS < len(val_ids) < 0.4 * N_DIALOGS


def test_held_out_rows_carry_the_training_loss_mask(world, tmp_path):
    """A held-out dialog's row equals that dialog's row in a run that trains on everything: same tokens, same
    labels (assistant tokens only)."""
    held = _data(world, tmp_path / "held", validation_fraction=0.25).validation[0].rows
    full = _data(world, tmp_path / "full").train_rows
    tok = world["tokenizer"]
    by_dialog = dict(zip(_dialog_ids(tok, full), zip(full["input_ids"], full["labels"], strict=True), strict=True))
    for i, ids, labels in zip(_dialog_ids(tok, held), held["input_ids"], held["labels"], strict=True):
        assert (ids, labels) == by_dialog[i]
        labelled = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100])
        assert labelled == f"Order {i} is placed.<|im_end|>"


def test_explicit_validation_sources_are_read_whole_and_named(world, tmp_path):
    data = _data(world, tmp_path, validation=[SourceConfig(kind="chat", path=str(world["path"]), name="shop")])
    (val,) = data.validation
    assert val.name == "shop"
    assert val.rows["input_ids"] == data.train_rows["input_ids"]  # no fraction: training reads everything too
    assert val.rows["labels"] == data.train_rows["labels"]


def test_two_validation_sets_with_one_name_name_the_key(world, tmp_path):
    src = SourceConfig(kind="chat", path=str(world["path"]))
    with pytest.raises(ValueError, match=r"data\.validation\[0\]: validation name 'dialogs' is also "
                                         r"data\.sources\[0\]'s; set data\.validation\[0\]\.name"):
        _data(world, tmp_path, validation_fraction=0.1, validation=[src])


def test_each_rank_gets_as_many_distinct_batches_the_same_every_time():
    rows = datasets.Dataset.from_dict({"input_ids": [[i, i] for i in range(23)], "labels": [[i, i] for i in range(23)],
                                       "position_ids": [[0, 1]] * 23})
    sets = [("a", rows), ("b", rows.select(range(9)))]
    ranks = [HeldOutBatches(sets, micro_batch=2, rank=r, world_size=2, max_batches=4) for r in (0, 1)]
    assert [len(b.plan[0]) for b in ranks] == [4, 4]  # 23 rows: 5 global batches of 4, capped at 4
    assert [len(b.plan[1]) for b in ranks] == [2, 2]  # 9 rows: 2 global batches, the remainder is left out
    seen = [idx for b in ranks for batch in b.plan[0] for idx in batch]
    assert len(seen) == len(set(seen)) == 16
    again = HeldOutBatches(sets, micro_batch=2, rank=0, world_size=2, max_batches=4)
    assert again.plan == ranks[0].plan
    first = [(i, mb["labels"].tolist()) for i, mb in ranks[0]]
    assert first == [(i, mb["labels"].tolist()) for i, mb in ranks[0]]
    assert [i for i, _ in first] == [0, 0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="validation set 'b' has 9 rows, fewer than one batch of 16"):
        HeldOutBatches(sets, micro_batch=8, rank=0, world_size=2, max_batches=4)

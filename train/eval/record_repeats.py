"""Teacher-forced copying on the repeats of held-out order records: does the model read its context at all?

Every order record of the generated world (`data_pipelines/commerce_world/records.py`) names a few orders with
random four-digit ids and then confirms them in the same order ("Order O4638 confirmed", "订单O4638已确认").
The digits of a confirmation can only be predicted by copying from the record's first half (chance 10%): the
first digit also needs knowing which order comes next, the later ones only a match on the digits before, which
is what an induction head does. The records of the validation split were not pretrained on, so this measures
copying where pretraining should teach it, for the pretrain-only model as well as the fine-tuned one; the
reference dialogs (reference_dialogs.py) measure it where the tasks need it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from data_pipelines.collate import Collator
from train.eval.teacher_forcing import teacher_forced

CONFIRMED_ID = re.compile(r"Order O(\d{4}) confirmed|订单O(\d{4})已确认")


def repeated_id_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the digits of every confirmed (repeated) order id in a record."""
    return [m.span(1) if m.group(1) else m.span(2) for m in CONFIRMED_ID.finditer(text)]


def score_record(right: list[bool], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """[first digits right, first digits, later digits right, later digits, ids all right, ids] of one record;
    `right[j]` says whether token j was predicted from the tokens before it."""
    out = [0] * 6
    for a, b in spans:
        tokens = [j for j, (s, e) in enumerate(offsets) if j > 0 and s < b and e > a]
        for n, j in enumerate(tokens):
            out[2 * (n > 0)] += right[j]
            out[2 * (n > 0) + 1] += 1
        out[4] += bool(tokens) and all(right[j] for j in tokens)
        out[5] += bool(tokens)
    return out


@torch.no_grad()
def evaluate_record_repeats(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, world_dir: str,
                            limit: int | None, mrope: bool, state) -> dict[str, float | int]:
    """Greedy accuracy on the digits of repeated order ids in the world's validation records (spread over
    `state`): the first digit of each id, the later ones, and whole ids."""
    from accelerate.utils import gather_object

    path = Path(world_dir) / "pretrain" / "text_validation.jsonl"
    records = [r["text"] for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())
               if r["id"].startswith("record-")][:limit]
    collate = Collator("per_document", mrope=mrope)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    local = []
    with state.split_between_processes(records) as mine:
        for text in mine:
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = enc["input_ids"]
            logits, labels = teacher_forced(model, collate, {"input_ids": ids, "labels": list(ids)}, pad)
            right = [False] + (logits.argmax(-1) == labels).tolist()
            local.append(score_record(right, enc["offset_mapping"], repeated_id_spans(text)))
    results = gather_object(local) if state.num_processes > 1 else local
    first_right, first, later_right, later, ids_right, n_ids = (sum(r[i] for r in results) for i in range(6))
    return {"record_repeat_digit_acc": (first_right + later_right) / max(1, first + later),
            "record_repeat_first_digit_acc": first_right / max(1, first),
            "record_repeat_later_digit_acc": later_right / max(1, later),
            "record_repeat_id_acc": ids_right / max(1, n_ids), "record_repeat_ids": n_ids,
            "record_repeat_records": len(results)}

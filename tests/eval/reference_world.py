"""A small world of held-out reference dialogs and a BPE trained on them, for tests that score dialogs."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from data_pipelines.commerce_world.catalogue import build_catalogue
from data_pipelines.commerce_world.dialogs import write_dialog
from data_pipelines.commerce_world.scenarios import draw_scenarios
from data_pipelines.tokenizer import train_bpe_tokenizer


def write_reference_world(root: Path, dialogs_n: int, chat_template: str) -> tuple[list[dict], PreTrainedTokenizerFast]:
    """`root/dialogs/test.jsonl` with `dialogs_n` oracle dialogs (seed 3), and a 600-token BPE in `root/tok`."""
    cat = build_catalogue(seed=3)
    dialogs = [write_dialog(sc, cat) for sc in draw_scenarios(cat, "test", dialogs_n, seed=3)]
    (root / "dialogs").mkdir()
    (root / "dialogs" / "test.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dialogs))
    texts = [m.get("content") or json.dumps(m.get("tool_calls"), ensure_ascii=False) for d in dialogs
             for m in d["messages"]]
    return dialogs, train_bpe_tokenizer(texts, 600, root / "tok", chat_template=chat_template)

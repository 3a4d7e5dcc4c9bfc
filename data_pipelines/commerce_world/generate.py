"""Write a whole commerce world to a folder: built in a temporary sibling, then renamed into place.

Layout (paths inside jsonl files are relative to the world folder):
  world.json                       settings, counts, file list
  catalogue.json  tools.json       entities by split; the tools list (schemas as in tools/*.json)
  scenarios/{split}.jsonl          hidden goals (test: the evaluation's held-out scenarios)
  dialogs/{split}.jsonl            OpenAI `messages` + `tools` (test: the oracle's reference dialogs)
  images/I####.png                 one product image per item
  image_qa/{split}.jsonl           colour/shape questions with a closed answer set
  pretrain/text_{split}.jsonl      shop descriptions, captions and order records (train/validation shops and
                                   items; delivery addresses in any city of the gazetteer)
  pretrain/image_text_{split}.jsonl image-caption pairs
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path

from data_pipelines.commerce_world.catalogue import SPLITS, build_catalogue
from data_pipelines.commerce_world.config import WorldConfig
from data_pipelines.commerce_world.corpus import image_text_pairs, text_documents
from data_pipelines.commerce_world.dialogs import write_dialog
from data_pipelines.commerce_world.images import draw_item, image_questions
from data_pipelines.commerce_world.records import order_records
from data_pipelines.commerce_world.scenarios import draw_scenarios
from data_pipelines.commerce_world.tools import tool_schemas

log = logging.getLogger(__name__)
FORMAT_VERSION = 5


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def _build(cfg: WorldConfig, root: Path) -> dict:
    catalogue = build_catalogue(cfg.seed, cfg.validation_cities, cfg.test_cities, cfg.shops_per_category)
    _write_json(root / "catalogue.json", catalogue.to_json())
    _write_json(root / "tools.json", tool_schemas())
    counts: dict[str, int] = {"items": len(catalogue.items), "shops": len(catalogue.shops),
                              "cities": len(catalogue.cities)}
    sizes = {"train": cfg.train_dialogs, "validation": cfg.validation_dialogs, "test": cfg.test_scenarios}
    for split in SPLITS:
        scenarios = draw_scenarios(catalogue, split, sizes[split], cfg.seed)
        _write_jsonl(root / "scenarios" / f"{split}.jsonl", [s.to_json() for s in scenarios])
        _write_jsonl(root / "dialogs" / f"{split}.jsonl", [write_dialog(s, catalogue) for s in scenarios])
        counts[f"dialogs_{split}"] = len(scenarios)
    (root / "images").mkdir()
    image_path = {}
    for item in catalogue.items:
        image_path[item.item_id] = f"images/{item.item_id}.png"
        (root / image_path[item.item_id]).write_bytes(draw_item(item, cfg.image_size))
    rng = random.Random(f"image-qa-{cfg.seed}")
    for split in SPLITS:
        rows = [q for item in catalogue.items if item.split == split
                for q in image_questions(item, image_path[item.item_id], rng)]
        _write_jsonl(root / "image_qa" / f"{split}.jsonl", rows)
        counts[f"image_qa_{split}"] = len(rows)
    for split in ("train", "validation"):
        part = catalogue.in_split(split)
        n_records = cfg.pretrain_records if split == "train" else max(1, cfg.pretrain_records // 10)
        docs = text_documents(part, cfg.seed) + order_records(part, n_records, cfg.seed, split)
        random.Random(f"pretrain-text-{cfg.seed}-{split}").shuffle(docs)
        _write_jsonl(root / "pretrain" / f"text_{split}.jsonl", docs)
        pairs = image_text_pairs(part, image_path)
        _write_jsonl(root / "pretrain" / f"image_text_{split}.jsonl", pairs)
        counts[f"pretrain_text_{split}"] = len(docs)
        counts[f"image_text_{split}"] = len(pairs)
    return counts


def generate_world(cfg: WorldConfig) -> Path:
    """Write the world to `cfg.out` (skipped when a world with the same settings is there)."""
    out = Path(cfg.out)
    meta_path = out / "world.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        same_settings = meta.get("settings") == cfg.content_key()
        if same_settings and meta.get("format_version") == FORMAT_VERSION:
            log.info("commerce world at %s is up to date", out)
            return out
        if same_settings:
            log.info("commerce world at %s was written by format_version %s; regenerating it as format_version %s",
                     out, meta.get("format_version"), FORMAT_VERSION)
        elif not cfg.overwrite:
            raise ValueError(f"{out} holds a commerce world made with other settings ({meta.get('settings')}); "
                             f"pass overwrite=true or another out=")
    elif out.exists() and any(out.iterdir()):
        raise ValueError(f"out={out} exists and is not a commerce world folder (no world.json)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        counts = _build(cfg, tmp)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*.jsonl")) + ["catalogue.json", "tools.json"]
        _write_json(tmp / "world.json", {"format_version": FORMAT_VERSION, "settings": cfg.content_key(),
                                         "counts": counts, "files": files})
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out

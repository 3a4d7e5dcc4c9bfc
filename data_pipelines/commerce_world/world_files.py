"""Reading a generated world back: its catalogue and scenarios, with errors naming the file and line."""

from __future__ import annotations

import json
import os
from pathlib import Path

from data_pipelines.commerce_world.catalogue import SPLITS, Catalogue
from data_pipelines.commerce_world.scenarios import Scenario


def _check_world(world_dir: str | os.PathLike) -> Path:
    root = Path(world_dir)
    if not (root / "world.json").exists():
        raise ValueError(f"{root}: not a commerce world (no world.json); generate one with "
                         f"`python -m data_pipelines.commerce_world out={root}`")
    return root


def load_catalogue(world_dir: str | os.PathLike) -> Catalogue:
    return Catalogue.from_json(json.loads((_check_world(world_dir) / "catalogue.json").read_text(encoding="utf-8")))


def load_scenarios(world_dir: str | os.PathLike, split: str = "test") -> list[Scenario]:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    path = _check_world(world_dir) / "scenarios" / f"{split}.jsonl"
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                out.append(Scenario.from_json(json.loads(line)))
            except (json.JSONDecodeError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a scenario ({e})") from None
    return out

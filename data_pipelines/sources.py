"""Local corpora through `datasets`: read every source as origin-tagged records, mix them by weight, shard by rank.

A record is one JSON object kept as a string (`record`) with its origin (`path:line` or `path:row N`), so
heterogeneous chat/tool schemas never go through Arrow type unification and every later error names where
the record came from. jsonl is read with datasets' `text` builder (one line per example, so a malformed line
is a per-record error, not a crash of the whole file); parquet, arrow, csv and `save_to_disk` folders are
read with their builders and turned into records row by row. `streaming=True` gives IterableDatasets.
Hub names are accepted where there is network (`hf://owner/name` or `owner/name` that is not a local path).
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import datasets
from datasets.distributed import split_dataset_by_node

_TABLE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
_JSON_SUFFIXES = (".jsonl", ".json")
RECORD_COLUMNS = ["record", "origin"]
AnyDataset = datasets.Dataset | datasets.IterableDataset


def _expand(path: str) -> list[str]:
    if os.path.exists(path):
        return [path]
    matches = sorted(glob.glob(path))
    if not matches:
        raise ValueError(f"{path}: no such file, folder or glob match")
    return matches


def _drop_nulls(value):
    """Arrow fills missing struct keys with None; a record should look like the JSON it came from."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _jsonl_records(path: str, streaming: bool) -> AnyDataset:
    ds = datasets.load_dataset("text", data_files=path, split="train", streaming=streaming)

    def tag(batch: dict, idx: list[int]) -> dict:
        return {"record": batch["text"], "origin": [f"{path}:{i + 1}" for i in idx]}

    ds = ds.map(tag, batched=True, with_indices=True, remove_columns=["text"])
    return ds.filter(lambda b: [bool(r.strip()) for r in b["record"]], batched=True)


def _table_records(ds: AnyDataset, path: str) -> AnyDataset:
    columns = list(ds.column_names or ds.features or [])

    def tag(batch: dict, idx: list[int]) -> dict:
        rows = [{c: batch[c][j] for c in columns} for j in range(len(idx))]
        return {"record": [json.dumps(_drop_nulls(r), ensure_ascii=False, default=str) for r in rows],
                "origin": [f"{path}:row {i + 1}" for i in idx]}

    return ds.map(tag, batched=True, with_indices=True, remove_columns=columns)


def read_records(path: str, streaming: bool = False, split: str = "train") -> AnyDataset:
    """All records of one source (a file, a glob of files, a `save_to_disk` folder or a hub name)."""
    parts: list[AnyDataset] = []
    is_hub = path.startswith("hf://") or (not os.path.exists(path) and not glob.glob(path) and path.count("/") == 1)
    files = [path] if is_hub else _expand(path)
    for f in files:
        p = Path(f)
        try:
            if is_hub:
                loaded = datasets.load_dataset(path.removeprefix("hf://"), split=split, streaming=streaming)
                parts.append(_table_records(loaded, path))
            elif p.is_dir():
                loaded = datasets.load_from_disk(str(p))
                if isinstance(loaded, datasets.DatasetDict):
                    if split not in loaded:
                        raise ValueError(f"{p}: no split {split!r} (has {list(loaded)})")
                    loaded = loaded[split]
                parts.append(_table_records(loaded.to_iterable_dataset() if streaming else loaded, f))
            elif p.suffix in _JSON_SUFFIXES:
                parts.append(_jsonl_records(f, streaming))
            elif p.suffix in _TABLE_BUILDERS:
                loaded = datasets.load_dataset(_TABLE_BUILDERS[p.suffix], data_files=f, split="train",
                                               streaming=streaming)
                parts.append(_table_records(loaded, f))
            else:
                raise ValueError(f"{p}: unsupported file type {p.suffix!r} "
                                 f"(use .jsonl, .json, {', '.join(_TABLE_BUILDERS)} or a save_to_disk folder)")
        except ValueError:
            raise
        except Exception as e:  # datasets wraps read errors deep inside; name the file for the user
            raise ValueError(f"{f}: could not be read: {e}") from e
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def parse_record(record: str, origin: str) -> dict:
    """The JSON object of one record; a malformed line is a BadRecord naming it."""
    from data_pipelines.bad_input import BadRecord

    try:
        value = json.loads(record)
    except json.JSONDecodeError as e:
        raise BadRecord(origin, "malformed JSON", str(e)) from None
    if not isinstance(value, dict):
        raise BadRecord(origin, "malformed JSON", f"expected an object, got {type(value).__name__}")
    return value


def mix(parts: list[AnyDataset], weights: list[float], seed: int) -> AnyDataset:
    """Interleave encoded sources with probabilities proportional to `weights` (deterministic by seed).

    Stops when the first source runs out, so no source is silently repeated; a single source is returned as is.
    """
    if len(parts) == 1:
        return parts[0]
    total = float(sum(weights))
    return datasets.interleave_datasets(parts, probabilities=[w / total for w in weights], seed=seed,
                                        stopping_strategy="first_exhausted")


def shard_for_rank(ds: datasets.IterableDataset, rank: int, world_size: int) -> datasets.IterableDataset:
    """The part of a stream that global rank `rank` reads (every rank is data-parallel for the dense part)."""
    return split_dataset_by_node(ds, rank=rank, world_size=world_size)

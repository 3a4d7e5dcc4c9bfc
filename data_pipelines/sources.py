"""Local corpora through `datasets`: read every source as origin-tagged records, mix them by weight, shard by rank.

`read_records` is the one place where the records of a source are read. A record is one JSON object kept as a
string (`record`) with its origin (`path:line`, `path:[index] (line N)` for a JSON array, `path:row N` for
tables), so heterogeneous chat/tool schemas never go through Arrow type unification and every later error names
where the record came from. A record that could not be read carries the reason in `error` (and an empty
`record`); the encoder turns it into a BadRecord, so with `data.on_error=skip` it is a counted skip like any other.

- `.jsonl`, and `.json` holding one object per line: datasets' `text` builder (one line per example, so a
  malformed line is a per-record error, not a crash of the whole file).
- `.json` holding one JSON array (LLaMA-Factory's usual form): `json_array.array_elements` through
  `Dataset.from_generator`, in bounded memory; a syntax error names its character offset and line.
- `.parquet`, `.arrow`, `.csv` and `save_to_disk` folders: their builders, turned into records row by row.
- `.txt`: pretraining text, one document per file (`sample_by=document`), per line or per paragraph.
- A folder of such files (read recursively, in name order), a glob, or a list of paths (concatenated in order).
`streaming=True` gives IterableDatasets. Hub names are accepted where there is network (`hf://owner/name` or
`owner/name` that is not a local path).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from pathlib import Path

import datasets
from datasets.distributed import split_dataset_by_node

from data_pipelines.json_array import array_elements, starts_with_array

_TABLE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
DATA_SUFFIXES = (".jsonl", ".json", ".txt", *_TABLE_BUILDERS)
# Metadata files that sit beside data files (save_to_disk folders, LLaMA-Factory's data folder) and are no records.
METADATA_FILES = ("dataset_info.json", "dataset_dict.json", "state.json")
RECORD_COLUMNS = ["record", "origin", "error"]
RECORD_FEATURES = datasets.Features({c: datasets.Value("string") for c in RECORD_COLUMNS})
AnyDataset = datasets.Dataset | datasets.IterableDataset


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").exists() or (path / "state.json").exists()


def source_files(path: str) -> list[str]:
    """The local files or `save_to_disk` folders behind a source path (file, folder, glob), in reading order."""
    if os.path.exists(path):
        found = [Path(path)]
    else:
        found = [Path(p) for p in sorted(glob.glob(path)) if Path(p).name not in METADATA_FILES]
        if not found:
            raise ValueError(f"{path}: no such file, folder or glob match")
    out: list[str] = []
    for p in found:
        if p.is_dir() and not _is_saved_dataset(p):
            files = [f for f in sorted(p.rglob("*")) if f.is_file() and f.suffix in DATA_SUFFIXES
                     and f.name not in METADATA_FILES and not any(x.startswith(".") for x in f.relative_to(p).parts)]
            if not files:
                raise ValueError(f"{p}: a folder without data files ({', '.join(DATA_SUFFIXES)}) or a save_to_disk "
                                 "dataset")
            out += [str(f) for f in files]
        else:
            out.append(str(p))
    return out


def file_stamps(paths: Sequence[str]) -> list[tuple[str, int, int]]:
    """(file, size, mtime) of every local file behind the paths (recursively for folders); nothing for hub names."""
    stamps = []
    for path in paths:
        if not os.path.exists(path) and not glob.glob(path):
            continue
        for f in source_files(path):
            p = Path(f)
            for x in sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]:
                st = x.stat()
                stamps.append((str(x.resolve()), st.st_size, st.st_mtime_ns))
    return stamps


def _drop_nulls(value):
    """Arrow fills missing struct keys with None; a record should look like the JSON it came from."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _line_records(path: str, streaming: bool) -> AnyDataset:
    ds = datasets.load_dataset("text", data_files=path, split="train", streaming=streaming)

    def tag(batch: dict, idx: list[int]) -> dict:
        return {"record": batch["text"], "origin": [f"{path}:{i + 1}" for i in idx], "error": [""] * len(idx)}

    ds = ds.map(tag, batched=True, with_indices=True, remove_columns=["text"], features=RECORD_FEATURES)
    return ds.filter(lambda b: [bool(r.strip()) for r in b["record"]], batched=True)


def _array_generator(path: str, stamp: str):
    """Rows of a JSON-array file (`stamp` is the file's size and mtime: part of datasets' cache key)."""
    for e in array_elements(path):
        origin = f"{path}:[{e.index}] (line {e.line})"
        yield {"record": e.text or "", "origin": origin, "error": e.error}


def _array_records(path: str, streaming: bool) -> AnyDataset:
    st = os.stat(path)
    kwargs = {"path": path, "stamp": f"{st.st_size}-{st.st_mtime_ns}"}
    if streaming:
        return datasets.IterableDataset.from_generator(_array_generator, features=RECORD_FEATURES, gen_kwargs=kwargs)
    return datasets.Dataset.from_generator(_array_generator, features=RECORD_FEATURES, gen_kwargs=kwargs)


def _text_records(path: str, streaming: bool, sample_by: str) -> AnyDataset:
    ds = datasets.load_dataset("text", data_files=path, split="train", streaming=streaming, sample_by=sample_by)
    where = {"document": lambda i: path, "line": lambda i: f"{path}:{i + 1}",
             "paragraph": lambda i: f"{path}:paragraph {i + 1}"}[sample_by]

    def tag(batch: dict, idx: list[int]) -> dict:
        return {"record": [json.dumps({"text": t}, ensure_ascii=False) for t in batch["text"]],
                "origin": [where(i) for i in idx], "error": [""] * len(idx), "keep": [bool(t.strip()) for t in batch["text"]]}

    ds = ds.map(tag, batched=True, with_indices=True, remove_columns=["text"])
    return ds.filter(lambda b: b["keep"], batched=True).remove_columns(["keep"])


def _table_records(ds: AnyDataset, path: str) -> AnyDataset:
    columns = list(ds.column_names or ds.features or [])  # a csv stream knows its columns only once read

    def tag(batch: dict, idx: list[int]) -> dict:
        rows = [{c: batch[c][j] for c in columns or batch} for j in range(len(idx))]
        return {"record": [json.dumps(_drop_nulls(r), ensure_ascii=False, default=str) for r in rows],
                "origin": [f"{path}:row {i + 1}" for i in idx], "error": [""] * len(idx)}

    if columns:
        return ds.map(tag, batched=True, with_indices=True, remove_columns=columns, features=RECORD_FEATURES)
    return ds.map(tag, batched=True, with_indices=True).select_columns(RECORD_COLUMNS)


def _file_records(f: str, streaming: bool, split: str, sample_by: str) -> AnyDataset:
    p = Path(f)
    if p.is_dir():
        loaded = datasets.load_from_disk(str(p))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{p}: no split {split!r} (has {list(loaded)})")
            loaded = loaded[split]
        return _table_records(loaded.to_iterable_dataset() if streaming else loaded, f)
    if p.suffix == ".jsonl":
        return _line_records(f, streaming)
    if p.suffix == ".json":
        return _array_records(f, streaming) if starts_with_array(f) else _line_records(f, streaming)
    if p.suffix == ".txt":
        return _text_records(f, streaming, sample_by)
    if p.suffix in _TABLE_BUILDERS:
        return _table_records(datasets.load_dataset(_TABLE_BUILDERS[p.suffix], data_files=f, split="train",
                                                    streaming=streaming), f)
    raise ValueError(f"{p}: unsupported file type {p.suffix!r} (use {', '.join(DATA_SUFFIXES)} or a save_to_disk "
                     "folder)")


def _is_hub(path: str) -> bool:
    return path.startswith("hf://") or (not os.path.exists(path) and not glob.glob(path) and path.count("/") == 1)


def read_records(paths: str | Sequence[str], streaming: bool = False, split: str = "train",
                 sample_by: str = "document") -> AnyDataset:
    """All records of one source: a file, folder, glob or hub name, or a list of them read in order."""
    parts: list[AnyDataset] = []
    for path in [paths] if isinstance(paths, str) else list(paths):
        if _is_hub(path):
            try:
                loaded = datasets.load_dataset(path.removeprefix("hf://"), split=split, streaming=streaming)
            except Exception as e:  # datasets wraps read errors deep inside; name the source for the user
                raise ValueError(f"{path}: could not be read: {e}") from e
            parts.append(_table_records(loaded, path))
            continue
        for f in source_files(path):
            try:
                parts.append(_file_records(f, streaming, split, sample_by))
            except ValueError:
                raise
            except Exception as e:  # datasets wraps read errors deep inside; name the file for the user
                raise ValueError(f"{f}: could not be read: {e}") from e
    if not parts:
        raise ValueError("a source without paths")
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def parse_record(record: str, origin: str, error: str = "") -> dict:
    """The JSON object of one record; an unreadable or malformed one is a BadRecord naming it."""
    from data_pipelines.bad_input import BadRecord

    if error:
        raise BadRecord(origin, "malformed JSON", error)
    try:
        value = json.loads(record)
    except json.JSONDecodeError as e:
        raise BadRecord(origin, "malformed JSON", str(e)) from None
    if not isinstance(value, dict):
        raise BadRecord(origin, "not an object", f"a record is a JSON object, this one is a {type(value).__name__}")
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

"""Text pretraining data through `datasets`: read local corpora, tokenise, pack into fixed-length rows.

The result is a cached Arrow dataset of rows (`input_ids`, `position_ids`, `labels`), built once by rank 0
and memory-mapped by every rank.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import datasets
from transformers import PreTrainedTokenizerBase

from data_pipelines.packing import pack_documents

log = logging.getLogger(__name__)

_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}


def read_corpus(paths: list[str], split: str = "train") -> datasets.Dataset:
    """Local files (jsonl/json/parquet/arrow/csv) or `save_to_disk` folders, concatenated in order."""
    parts = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(f"{path}: no split {split!r} (has {list(loaded)})")
                loaded = loaded[split]
            parts.append(loaded)
            continue
        builder = _FILE_BUILDERS.get(path.suffix)
        if builder is None:
            raise ValueError(f"{path}: unsupported file type {path.suffix!r} (use {sorted(_FILE_BUILDERS)})")
        try:
            parts.append(datasets.load_dataset(builder, data_files=str(path), split="train"))
        except Exception as e:  # datasets wraps parse errors deep inside; name the file for the user
            raise ValueError(f"{path}: could not be read as {builder}: {e}") from e
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


@dataclass(frozen=True)
class PackSpec:
    seq_len: int
    mode: str
    text_field: str

    def fingerprint(self, paths: list[str], tokenizer: PreTrainedTokenizerBase) -> str:
        h = hashlib.sha256(json.dumps([self.seq_len, self.mode, self.text_field], sort_keys=True).encode())
        for p in paths:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}:{st.st_size}:{st.st_mtime_ns}".encode())
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
        return h.hexdigest()[:16]


def build_packed_dataset(paths: list[str], tokenizer: PreTrainedTokenizerBase, spec: PackSpec,
                         cache_root: Path) -> Path:
    """Tokenise and pack once; returns the `save_to_disk` folder of packed rows (atomic, content-addressed)."""
    out = cache_root / f"packed-{spec.fingerprint(paths, tokenizer)}"
    if (out / "dataset_info.json").exists():
        return out
    raw = read_corpus(paths)
    if spec.text_field not in raw.column_names:
        raise ValueError(f"{paths}: no column {spec.text_field!r} (columns: {raw.column_names})")
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos

    def tokenize(batch: dict) -> dict:
        ids = tokenizer(batch[spec.text_field], add_special_tokens=False)["input_ids"]
        return {"ids": [x + [eos] for x in ids]}

    def pack(batch: dict) -> dict:
        return pack_documents(batch["ids"], spec.seq_len, spec.mode, pad)

    tokenized = raw.map(tokenize, batched=True, remove_columns=raw.column_names, desc="tokenize")
    packed = tokenized.map(pack, batched=True, batch_size=1000, remove_columns=["ids"], desc=f"pack ({spec.mode})")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    packed.save_to_disk(str(tmp))
    os.replace(tmp, out)
    n_tokens = sum(sum(1 for t in row if t != -100) for row in packed["labels"])
    log.info("packed %d documents into %d rows of %d tokens (%s mode, %.1f%% of positions carry loss)",
             len(raw), len(packed), spec.seq_len, spec.mode, 100.0 * n_tokens / max(1, len(packed) * spec.seq_len))
    return out

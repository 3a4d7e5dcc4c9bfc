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


SAMPLE_COLUMNS = ["input_ids", "labels", "mm_token_type_ids", "images", "image_grid_thw", "overlong_split",
                  "origin", "skip"]


def encode_records(records, encoder, policy, source_index: int = 0):
    """Records -> samples (one column per sample field) through `encoder`; bad records raise or are marked.

    A skipped record leaves one row with `skip` set to its reason, so counts survive caching and streaming;
    `drop_skipped` removes them after counting.
    """
    from data_pipelines.bad_input import BadRecord

    def fn(batch: dict) -> dict:
        out: dict[str, list] = {k: [] for k in SAMPLE_COLUMNS + ["source"]}
        for record, origin in zip(batch["record"], batch["origin"], strict=True):
            try:
                samples = encoder(record, origin)
                reason = ""
            except BadRecord as e:
                policy.handle(e)
                samples, reason = [{"input_ids": [], "labels": []}], f"{e.reason}|{e}"
            for s in samples:
                out["input_ids"].append(s["input_ids"])
                out["labels"].append(s["labels"])
                out["mm_token_type_ids"].append(s.get("mm_token_type_ids") or [])
                out["images"].append(s.get("images") or [])
                out["image_grid_thw"].append(s.get("image_grid_thw") or [])
                out["overlong_split"].append(bool(s.get("overlong_split")))
                out["origin"].append(origin)
                out["skip"].append(reason)
                out["source"].append(source_index)
        return out

    return records.map(fn, batched=True, remove_columns=["record", "origin"], features=_SAMPLE_FEATURES)


_SAMPLE_FEATURES = datasets.Features({
    "input_ids": datasets.Sequence(datasets.Value("int32")),
    "labels": datasets.Sequence(datasets.Value("int32")),
    "mm_token_type_ids": datasets.Sequence(datasets.Value("int8")),
    "images": datasets.Sequence(datasets.Value("string")),
    "image_grid_thw": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
    "overlong_split": datasets.Value("bool"),
    "origin": datasets.Value("string"),
    "skip": datasets.Value("string"),
    "source": datasets.Value("int32"),
})


def count_and_drop_skipped(samples: datasets.Dataset, policy) -> datasets.Dataset:
    """Count skipped records into `policy` (by reason) and return the good samples."""
    from collections import Counter

    counts: Counter[str] = Counter()
    for s in samples["skip"]:
        if s:
            reason, detail = s.split("|", 1)
            counts[reason] += 1
            policy.examples.setdefault(reason, detail)
    policy.merge(counts)
    return samples.filter(lambda b: [not s for s in b["skip"]], batched=True) if counts else samples


def pack_rows(samples, seq_len: int, mode: str, pad_id: int, multimodal: bool):
    """Samples -> fixed-length rows (`pack_samples`), as a datasets map (works on streams too)."""
    from data_pipelines.packing import pack_samples

    drop = [c for c in SAMPLE_COLUMNS + ["source"] if c in (samples.column_names or SAMPLE_COLUMNS + ["source"])]

    def fn(batch: dict) -> dict:
        keys = ["input_ids", "labels"] + (["mm_token_type_ids", "images", "image_grid_thw"] if multimodal else [])
        items = [{k: batch[k][i] for k in keys} for i in range(len(batch["input_ids"]))]
        if multimodal:
            for it in items:
                it["mm_token_type_ids"] = it["mm_token_type_ids"] or [0] * len(it["input_ids"])
        return pack_samples(items, seq_len, mode, pad_id)

    return samples.map(fn, batched=True, batch_size=1000, remove_columns=drop)


@dataclass(frozen=True)
class MixtureSpec:
    """What a cached mixture depends on (anything else changing rebuilds it)."""
    seq_len: int
    mode: str
    multimodal: bool
    seed: int
    encode: tuple  # (EncodeSpec, path, weight) per source
    on_error: str
    chat_template: str

    def fingerprint(self, tokenizer: PreTrainedTokenizerBase) -> str:
        h = hashlib.sha256(repr((self.seq_len, self.mode, self.multimodal, self.seed, self.encode, self.on_error,
                                 self.chat_template)).encode())
        for _, path, _ in self.encode:
            for p in sorted(Path(f) for f in _stat_targets(path)):
                st = os.stat(p)
                h.update(f"{os.path.abspath(p)}:{st.st_size}:{st.st_mtime_ns}".encode())
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
        h.update(str(tokenizer.chat_template).encode())
        return h.hexdigest()[:16]


def _stat_targets(path: str) -> list[str]:
    import glob

    if os.path.isdir(path):
        return [os.path.join(path, f) for f in os.listdir(path)]
    return [path] if os.path.exists(path) else sorted(glob.glob(path))


def build_mixture_dataset(spec: MixtureSpec, tokenizer: PreTrainedTokenizerBase, cache_root: Path, policy) -> Path:
    """Read, encode, count bad input, mix by weight, pack once; the `save_to_disk` folder of rows (atomic)."""
    from data_pipelines.encode import Encoder
    from data_pipelines.sources import mix, read_records

    out = cache_root / f"mixture-{spec.fingerprint(tokenizer)}"
    report = out / "bad_input.json"
    if (out / "dataset_info.json").exists():
        policy.merge(json.loads(report.read_text()))
        return out
    parts, weights = [], []
    for i, (enc_spec, path, weight) in enumerate(spec.encode):
        samples = encode_records(read_records(path), Encoder(tokenizer, enc_spec), policy, i)
        parts.append(count_and_drop_skipped(samples, policy))
        weights.append(weight)
    mixed = mix(parts, weights, spec.seed)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    n_split = sum(mixed["overlong_split"])
    rows = pack_rows(mixed, spec.seq_len, spec.mode, pad, spec.multimodal)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    rows.save_to_disk(str(tmp))
    (tmp / "bad_input.json").write_text(json.dumps(dict(policy.skipped)))
    os.replace(tmp, out)
    by_source = [sum(1 for s in mixed["source"] if s == i) for i in range(len(parts))]
    log.info("mixture: %d samples (per source %s, weights %s) packed into %d rows of %d tokens (%s); "
             "%d dialogs split at user turns for length", len(mixed), by_source, weights, len(rows), spec.seq_len,
             spec.mode, n_split)
    return out

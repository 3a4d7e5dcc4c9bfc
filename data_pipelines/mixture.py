"""The data of a run as one pipeline: every source's records encoded into samples, mixed by weight, packed into rows.

`build_mixture_dataset` reads each source (`sources.read_records`), encodes its records (`encode.Encoder`: text,
image-text, interleaved or chat), counts bad input, mixes the sources and packs the samples into fixed-length rows
(`input_ids`, `position_ids`, `labels`, + image fields); the result is a cached Arrow dataset built once by rank 0
and memory-mapped by every rank. `data.kind=text` is a mixture of one text source.
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

from data_pipelines.encode import EncodeSpec

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ["input_ids", "labels", "mm_token_type_ids", "images", "image_grid_thw", "overlong_split",
                  "origin", "skip", "warn"]


def encode_records(records, encoder, policy, source_index: int = 0):
    """Records -> samples (one column per sample field) through `encoder`; bad records raise or are marked.

    A skipped record leaves one row with `skip` set to `reason|message`, so counts survive caching and streaming;
    `count_and_drop_skipped` removes them after counting. A record's warnings (`warn`, same form) ride on its first
    sample and are counted there.
    """
    from data_pipelines.bad_input import BadRecord

    def fn(batch: dict) -> dict:
        out: dict[str, list] = {k: [] for k in SAMPLE_COLUMNS + ["source"]}
        errors = batch.get("error") or [""] * len(batch["record"])
        for record, origin, error in zip(batch["record"], batch["origin"], errors, strict=True):
            try:
                samples = encoder(record, origin, error)
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
                out["warn"].append(s.get("warn", ""))
                out["source"].append(source_index)
        return out

    drop = [c for c in ("record", "origin", "error") if c in (records.column_names or ["record", "origin", "error"])]
    return records.map(fn, batched=True, remove_columns=drop, features=_SAMPLE_FEATURES)


_SAMPLE_FEATURES = datasets.Features({
    "input_ids": datasets.Sequence(datasets.Value("int32")),
    "labels": datasets.Sequence(datasets.Value("int32")),
    "mm_token_type_ids": datasets.Sequence(datasets.Value("int8")),
    "images": datasets.Sequence(datasets.Value("string")),
    "image_grid_thw": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
    "overlong_split": datasets.Value("bool"),
    "origin": datasets.Value("string"),
    "skip": datasets.Value("string"),
    "warn": datasets.Value("string"),
    "source": datasets.Value("int32"),
})


def count_and_drop_skipped(samples: datasets.Dataset, policy) -> datasets.Dataset:
    """Count skipped records (and warnings) into `policy` by reason and return the good samples."""
    n_skipped = 0
    for skip, warn in zip(samples["skip"], samples["warn"], strict=True):
        if skip:
            policy.count(skip)
            n_skipped += 1
        for mark in warn.split("\n") if warn else []:
            policy.count(mark, warning=True)
    return samples.filter(lambda b: [not s for s in b["skip"]], batched=True) if n_skipped else samples


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
class SourceSpec:
    """One source as the pipeline reads it: its paths (read in order), how .txt files split, its encoding, and
    which side of its held-out fraction (`data_pipelines/holdout.py`) it reads."""
    encode: EncodeSpec
    paths: tuple[str, ...]
    weight: float = 1.0
    sample_by: str = "document"
    holdout: float = 0.0
    split: str = "train"

    def records(self, streaming: bool = False):
        from data_pipelines.holdout import split_records
        from data_pipelines.sources import read_records

        records = read_records(self.paths, streaming=streaming, sample_by=self.sample_by)
        return split_records(records, self.holdout, self.split)


@dataclass(frozen=True)
class MixtureSpec:
    """What a cached mixture depends on (anything else changing rebuilds it)."""
    seq_len: int
    mode: str
    multimodal: bool
    seed: int
    sources: tuple[SourceSpec, ...]
    on_error: str
    chat_template: str

    def fingerprint(self, tokenizer: PreTrainedTokenizerBase) -> str:
        from data_pipelines.sources import file_stamps

        h = hashlib.sha256(repr((self.seq_len, self.mode, self.multimodal, self.seed, self.sources, self.on_error,
                                 self.chat_template)).encode())
        for src in self.sources:
            h.update(repr(file_stamps(src.paths)).encode())
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
        h.update(str(tokenizer.chat_template).encode())
        return h.hexdigest()[:16]


def encode_source(src: SourceSpec, tokenizer: PreTrainedTokenizerBase, policy, index: int, streaming: bool = False):
    """The samples of one source (bad records marked, see `encode_records`)."""
    from data_pipelines.encode import Encoder

    return encode_records(src.records(streaming), Encoder(tokenizer, src.encode), policy, index)


def build_mixture_dataset(spec: MixtureSpec, tokenizer: PreTrainedTokenizerBase, cache_root: Path, policy) -> Path:
    """Read, encode, count bad input, mix by weight, pack once; the `save_to_disk` folder of rows (atomic)."""
    from data_pipelines.sources import mix

    out = cache_root / f"mixture-{spec.fingerprint(tokenizer)}"
    report = out / "bad_input.json"
    if (out / "dataset_info.json").exists():
        policy.load_state(json.loads(report.read_text()))
        return out
    parts, weights = [], []
    for i, src in enumerate(spec.sources):
        parts.append(count_and_drop_skipped(encode_source(src, tokenizer, policy, i), policy))
        weights.append(src.weight)
    mixed = mix(parts, weights, spec.seed)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    n_split = sum(mixed["overlong_split"])
    rows = pack_rows(mixed, spec.seq_len, spec.mode, pad, spec.multimodal)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    rows.save_to_disk(str(tmp))
    (tmp / "bad_input.json").write_text(json.dumps(policy.state()))
    os.replace(tmp, out)
    by_source = [sum(1 for s in mixed["source"] if s == i) for i in range(len(parts))]
    log.info("mixture: %d samples (per source %s, weights %s) packed into %d rows of %d tokens (%s); "
             "%d dialogs split at user turns for length", len(mixed), by_source, weights, len(rows), spec.seq_len,
             spec.mode, n_split)
    return out

"""Typed schemas of the `data` config group (sources, images, the data of a run) and their cross-field checks.

train/config.py composes `DataConfig` into the run's schema; the data package reads these and nothing from the
trainer. `validate_data` runs before any process group is created and raises ValueError naming the key.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

SOURCE_KINDS = ("text", "image_text", "interleaved", "chat")
DATA_KINDS = ("text", "mixture", "sft")
# The record formats a source may name (`format:`); `auto` detects it from the source's first records.
CHAT_FORMATS = ("messages", "sharegpt", "alpaca", "query_response")
SOURCE_FORMATS = {"chat": ("auto",) + CHAT_FORMATS, "text": ("auto", "text"), "image_text": ("auto",),
                  "interleaved": ("auto",)}
# The keys a chat source's `columns` may rename: ours -> the file's (LLaMA-Factory's dataset_info direction).
COLUMN_NAMES = ("messages", "system", "tools", "images", "instruction", "input", "output", "history", "query",
                "response", "prompt", "completion")
SAMPLE_BY = ("document", "line", "paragraph")
CHAT_TEMPLATES = ("qwen3_5", "qwen3_5_nothink", "qwen3")


@dataclass
class SourceConfig:
    """One local corpus in a mixture: a file, a glob of files, a folder of files, or a `save_to_disk` folder."""
    kind: str = "text"  # text | image_text | interleaved | chat
    path: str = MISSING
    # Sampling probability relative to the other sources (normalised over the mixture).
    weight: float = 1.0
    # text: the document field (`text`; records without it fall back to a string `content`); image_text: the
    # caption field.
    text_field: str = "text"
    image_field: str = "image"
    # Image paths are relative to this folder; null: the folder of the file that names them.
    image_root: str | None = None
    # The record format: auto (detected from the first records, logged) | messages (OpenAI, ms-swift) | sharegpt |
    # alpaca | query_response for chat sources; auto | text for text sources.
    format: str = "auto"
    # Chat sources whose keys differ from the format's: ours -> the file's, e.g. {messages: conversations,
    # tools: functions, images: pics}.
    columns: dict[str, str] = field(default_factory=dict)
    # .txt files: one document per file (document), per line (line) or per blank-line-separated paragraph.
    sample_by: str = "document"
    # The source's name in validation metrics (val/<name>/loss); null: its file name without the extension.
    name: str | None = None


@dataclass
class ImageConfig:
    """Qwen3-VL/3.5 image processing (patch 16, temporal patch 2, merge 2, mean = std = 0.5)."""
    min_pixels: int = 64 * 64
    max_pixels: int = 512 * 512
    # Images larger than this (before resizing) are bad input, not silently shrunk.
    max_source_pixels: int = 40_000_000


@dataclass
class DataConfig:
    # text: one text source (the generated corpus, or `paths` read in order); mixture: `sources` with weights
    # (text, image_text, interleaved) for pretraining; sft: chat `sources` rendered with the chat template.
    kind: str = "text"
    # "generated" builds the embedded corpus under paths.data_dir; otherwise local files or folders
    # (jsonl, json, parquet, arrow, csv, txt, or a `save_to_disk` folder).
    source: str = "generated"
    paths: list[str] = field(default_factory=list)
    text_field: str = "text"
    num_documents: int = 20_000
    # data.source=generated with data.kind=mixture: images in the generated shapes set.
    num_images: int = 2_000
    seq_len: int = 256
    # auto: packed rows with restarting position ids where attention keeps documents apart,
    # one document per row where it cannot (Gated DeltaNet without varlen kernels).
    packing: str = "auto"
    tokenizer: str | None = None
    vocab_size: int = 4096
    # Extra files (text or chat records) the BPE is trained on besides the sources, e.g. the dialogs a
    # from-scratch model will be fine-tuned on later, so they tokenise compactly.
    tokenizer_texts: list[str] = field(default_factory=list)
    seed: int = 0
    sources: list[SourceConfig] = field(default_factory=list)
    # Held-out sources (same schema as `sources`; weights unused), evaluated every trainer.eval_every steps.
    validation: list[SourceConfig] = field(default_factory=list)
    # Also hold out this fraction of every training source's records, chosen by a hash of the record's content
    # (stable across runs and seeds; such records never reach the training rows). 0: none.
    validation_fraction: float = 0.0
    # Micro-batches per validation source and rank in one evaluation: bounds its cost.
    validation_max_batches: int = 20
    # Read sources as streams (datasets IterableDataset): nothing is cached, each rank reads its own
    # shard, and the position of every rank is saved in checkpoints.
    streaming: bool = False
    # Sort each span of this many optimizer steps' rows by length (transformers' group_by_length): micro-batches
    # are cut to their longest row, so short and long samples batched apart waste less compute. 0: off.
    length_group_steps: int = 0
    # raise: bad input stops the run naming file and record; skip: count it, go on, summarise at the end.
    on_error: str = "raise"
    # qwen3_5 (XML tool calls) | qwen3_5_nothink (the same without empty think blocks) | qwen3 (JSON tool calls)
    chat_template: str = "qwen3_5"
    enable_thinking: bool = False
    # SFT dialogs longer than seq_len: split between assistant turns (split) or treat as bad input (error).
    overlong: str = "split"
    # Render the `tools` schemas into the system prompt. Off for small models trained on a fixed tool set: the
    # commerce tools cost ~2k tokens per sample; evaluation must then render without them too.
    render_tools: bool = True
    image: ImageConfig = field(default_factory=ImageConfig)


def check_choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not one of {list(allowed)}")


def validate_data(data: DataConfig) -> None:
    """Cross-field checks of `data`; raise ValueError naming the key."""
    check_choice("data.packing", data.packing, ("auto", "packed", "per_document", "varlen"))
    check_choice("data.kind", data.kind, DATA_KINDS)
    check_choice("data.on_error", data.on_error, ("raise", "skip"))
    check_choice("data.chat_template", data.chat_template, CHAT_TEMPLATES)
    check_choice("data.overlong", data.overlong, ("split", "error"))
    if data.seq_len < 1:
        raise ValueError(f"data.seq_len={data.seq_len} must be >= 1")
    if data.kind == "text" and data.source != "generated":
        if not data.paths:
            raise ValueError("data.paths is empty: list local files or folders, or set data.source=generated")
        for p in data.paths:
            if not os.path.exists(p) and not glob.glob(p):
                raise ValueError(f"data.paths: {p!r} does not exist")
    _validate_sources(data)
    if data.length_group_steps < 0:
        raise ValueError(f"data.length_group_steps={data.length_group_steps} must be >= 0 (0 disables it)")
    if data.length_group_steps and data.streaming:
        raise ValueError("data.length_group_steps needs map-style data (it sorts rows it has not read yet); "
                         "set it to 0 with data.streaming=true")


def _validate_sources(data: DataConfig) -> None:
    if data.kind != "text" and not data.sources:
        raise ValueError(f"data.sources is empty: data.kind={data.kind} needs at least one source")
    if data.kind != "text":
        _validate_source_list(data, data.sources, "data.sources")
    _validate_source_list(data, data.validation, "data.validation")
    if data.kind != "text" and data.image.min_pixels > data.image.max_pixels:
        raise ValueError(f"data.image.min_pixels={data.image.min_pixels} exceeds data.image.max_pixels")
    if not 0.0 <= data.validation_fraction < 1.0:
        raise ValueError(f"data.validation_fraction={data.validation_fraction} must be in [0, 1)")
    if data.validation_max_batches < 1:
        raise ValueError(f"data.validation_max_batches={data.validation_max_batches} must be >= 1")


def _validate_source_list(data: DataConfig, sources: list[SourceConfig], name: str) -> None:
    for i, src in enumerate(sources):
        key = f"{name}[{i}]"
        check_choice(f"{key}.kind", src.kind, SOURCE_KINDS)
        if data.kind == "text" and src.kind != "text":
            raise ValueError(f"{key}.kind={src.kind!r}: data.kind=text reads text sources only")
        if data.kind == "sft" and src.kind != "chat":
            raise ValueError(f"{key}.kind={src.kind!r}: data.kind=sft reads chat sources only")
        if data.kind == "mixture" and src.kind == "chat":
            raise ValueError(f"{key}.kind='chat' belongs in data.kind=sft")
        if src.weight <= 0:
            raise ValueError(f"{key}.weight={src.weight} must be > 0")
        check_choice(f"{key}.format", src.format, SOURCE_FORMATS[src.kind])
        check_choice(f"{key}.sample_by", src.sample_by, SAMPLE_BY)
        if src.columns and src.kind != "chat":
            raise ValueError(f"{key}.columns renames the keys of chat records; a {src.kind} source names its "
                             f"fields with text_field / image_field")
        for column in src.columns:
            if column not in COLUMN_NAMES:
                raise ValueError(f"{key}.columns.{column}: not a column name (one of {list(COLUMN_NAMES)})")
        if src.name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", src.name):
            raise ValueError(f"{key}.name={src.name!r}: letters, digits, '_', '.' and '-' only (it names metrics)")
        if data.source != "generated" and not os.path.exists(src.path) and not glob.glob(src.path):
            raise ValueError(f"{key}.path={src.path!r} does not exist")

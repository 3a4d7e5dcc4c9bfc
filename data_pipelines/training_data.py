"""The data of a pretraining or SFT run: sources (generated or local), tokenizer, packed rows, each rank's batches.

Every run reads its data as a mixture of sources (`run_sources`): `data.kind=text` is one text source (the
generated corpus or `data.paths`), `data.kind=mixture` weighted text / image-text / interleaved sources,
`data.kind=sft` chat sources rendered with the chat template. Each source's record format is detected once from
its first records and logged (`detect_source_format`). Rank 0 builds what is missing into the data/cache folders;
every other rank waits, then memory-maps it. With `data.streaming=true` nothing is cached: every rank streams,
encodes and packs its own shard.

The held-out sets (`validation_sets`: `data.validation` sources, and with `data.validation_fraction` the held-out
part of every training source) are encoded and packed exactly as training rows (the SFT loss mask included), one
cached dataset per set, also when training streams.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from data_pipelines.bad_input import BadInput, BadInputPolicy, BadRecord
from data_pipelines.collate import Collator
from data_pipelines.config import DataConfig, SourceConfig
from data_pipelines.encode import EncodeSpec
from data_pipelines.images import ImageSpec
from data_pipelines.mixture import MixtureSpec, SourceSpec, build_mixture_dataset, encode_source
from data_pipelines.packing import describe_packing, resolve_packing_mode
from data_pipelines.record_formats import SourceFormat, apply_columns, detect_format, to_chat
from data_pipelines.shapes_corpus import generate_shapes_corpus
from data_pipelines.sources import file_stamps, parse_record
from data_pipelines.text_corpus import generate_text_corpus
from data_pipelines.tokenizer import PRE_TOKENIZER_TAG, load_or_train_tokenizer

log = logging.getLogger(__name__)

DETECT_RECORDS = 1000  # a source's format and its `columns` are checked on this many of its first records


@dataclass
class TrainingData:
    tokenizer: PreTrainedTokenizerBase
    train_rows: datasets.Dataset | None
    packing: str
    data_files: list[str]
    collate: Collator | None = None
    policy: BadInputPolicy | None = None
    streaming: StreamingSource | None = None
    validation: list[ValidationSet] = field(default_factory=list)

    @property
    def has_images(self) -> bool:
        """Whether a training row carries an image (a stream: whether its sources can yield one)."""
        if self.streaming is not None:
            return self.streaming.multimodal
        return rows_have_images(self.train_rows)

    def batches(self, micro_batch: int, grad_accum: int, rank: int, world_size: int, seed: int,
                length_group_steps: int = 0):
        """This rank's resumable batches (map-style rows or its shard of the stream)."""
        from data_pipelines.loader import ResumableBatches, StreamingBatches

        if self.streaming is not None:
            s = self.streaming
            return StreamingBatches(s.samples, s.seq_len, self.packing, s.pad_id, micro_batch, grad_accum,
                                    self.collate, s.multimodal, on_skip=s.policy.count,
                                    on_warn=lambda mark: s.policy.count(mark, warning=True))
        return ResumableBatches(self.train_rows, micro_batch, grad_accum, rank, world_size, seed, self.collate,
                                length_group_steps)

    def validation_batches(self, micro_batch: int, rank: int, world_size: int, max_batches: int):
        """This rank's validation micro-batches: the same rows at every evaluation, as many on every rank."""
        from data_pipelines.loader import HeldOutBatches

        return HeldOutBatches([(v.name, v.rows) for v in self.validation], micro_batch, rank, world_size,
                              max_batches, self.collate)


@dataclass
class ValidationSet:
    """One held-out set, packed like the training rows; `name` keys its metrics (val/<name>/loss)."""
    name: str
    rows: datasets.Dataset


@dataclass
class StreamingSource:
    samples: datasets.IterableDataset
    seq_len: int
    pad_id: int
    multimodal: bool
    policy: BadInputPolicy


@dataclass(frozen=True)
class RunSource:
    """A configured source with the paths it reads (`data.kind=text`: the corpus files, read in order)."""
    config: SourceConfig
    paths: tuple[str, ...]
    key: str  # how the config names it, for messages: data.sources[i] or data.paths
    name: str  # in validation metrics: the config's `name`, else the file name without its extension


def source_name(src: SourceConfig) -> str:
    if src.name is not None:
        return src.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(src.path.rstrip("/")).stem) or "source"


def rows_have_images(rows: datasets.Dataset | None) -> bool:
    """Whether any packed row lists an image (read from the Arrow column, no row decoded)."""
    if rows is None or "images" not in rows.column_names:
        return False
    import pyarrow.compute as pc

    lengths = pc.list_value_length(rows.data.column("images"))
    return bool(pc.max(lengths).as_py() or 0)


def image_spec(cfg: DataConfig) -> ImageSpec:
    return ImageSpec(cfg.image.min_pixels, cfg.image.max_pixels, cfg.image.max_source_pixels)


def _text_corpus_dir(cfg: DataConfig, data_dir: Path) -> Path:
    return data_dir / "generated" / f"text_corpus-n{cfg.num_documents}-s{cfg.seed}"


def run_sources(cfg: DataConfig, data_dir: Path) -> list[RunSource]:
    """The sources a run reads: `data.sources`, or for `data.kind=text` one text source."""
    if cfg.kind == "text":
        paths = ([str(_text_corpus_dir(cfg, data_dir) / "train.jsonl")] if cfg.source == "generated"
                 else list(cfg.paths))
        return [RunSource(SourceConfig(kind="text", path=paths[0], text_field=cfg.text_field), tuple(paths),
                          "data.paths", "text")]
    return [RunSource(s, (s.path,), f"data.sources[{i}]", source_name(s)) for i, s in enumerate(cfg.sources)]


def validation_run_sources(cfg: DataConfig) -> list[RunSource]:
    return [RunSource(s, (s.path,), f"data.validation[{i}]", source_name(s)) for i, s in enumerate(cfg.validation)]


def generate_sources(cfg: DataConfig, data_dir: Path) -> None:
    """`data.source=generated`: the text corpus (and for mixtures the shapes image set) the sources point at."""
    if cfg.source != "generated":
        return
    generate_text_corpus(_text_corpus_dir(cfg, data_dir), cfg.num_documents, cfg.seed)
    if cfg.kind == "mixture":
        generate_shapes_corpus(data_dir / "generated" / f"shapes-n{cfg.num_images}-s{cfg.seed}", cfg.num_images,
                               cfg.seed)


def _first_records(src: RunSource, n: int) -> list[tuple[dict, str]]:
    from data_pipelines.sources import read_records

    values, first_error = [], None
    for rec in read_records(src.paths, streaming=True, sample_by=src.config.sample_by).take(n):
        try:
            values.append((parse_record(rec["record"], rec["origin"], rec["error"]), rec["origin"]))
        except BadRecord as e:
            first_error = first_error or e
    if not values and first_error is not None:
        raise BadInput(f"{src.key}: none of its first {n} records could be read (first: {first_error})")
    return values


def detect_source_format(src: RunSource) -> SourceFormat:
    """The source's record format (named by `format:` or detected from its first records)."""
    c = src.config
    if c.kind in ("image_text", "interleaved"):
        return SourceFormat(c.kind)
    values = _first_records(src, DETECT_RECORDS)
    columns = tuple(sorted(dict(c.columns).items()))
    return detect_format(values, c.kind, c.format, columns, c.text_field, f"{src.key} ({', '.join(src.paths)})")


def source_specs(cfg: DataConfig, sources: list[RunSource], log_formats: bool = False,
                 holdout: float | None = None) -> tuple[SourceSpec, ...]:
    """What the pipeline reads and how it encodes each source (formats detected here, logged once). Training
    sources read all but their held-out fraction (`holdout`, default `data.validation_fraction`)."""
    holdout = cfg.validation_fraction if holdout is None else holdout
    out = []
    for src in sources:
        fmt = detect_source_format(src)
        c = src.config
        if log_formats:
            log.info("%s %s: %s format%s", src.key, ", ".join(src.paths), fmt.format,
                     f" ({fmt.reason})" if fmt.reason else "")
        enc = EncodeSpec(kind=c.kind, seq_len=cfg.seq_len, text_field=fmt.text_field if c.kind == "text" else c.text_field,
                         image_field=c.image_field, image_root=c.image_root, image=image_spec(cfg),
                         enable_thinking=cfg.enable_thinking, overlong=cfg.overlong, render_tools=cfg.render_tools,
                         format=fmt.format if c.kind == "chat" else "auto",
                         columns=tuple(sorted(dict(c.columns).items())))
        out.append(SourceSpec(enc, src.paths, float(c.weight), c.sample_by, holdout))
    return tuple(out)


def _chat_texts(messages: list[dict]) -> Iterator[str]:
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            yield content
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]
        for call in m.get("tool_calls") or []:
            yield json.dumps(call, ensure_ascii=False)


def _record_texts(kind: str, value: dict, text_field: str, fmt: str, origin: str) -> Iterator[str]:
    if kind in ("text", "image_text") and isinstance(value.get(text_field), str):
        yield value[text_field]
    if isinstance(value.get("content"), list):
        for part in value["content"]:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]
    if kind == "chat":
        try:
            messages, _, _ = to_chat(value, fmt, origin)
        except BadRecord:  # reported when the record is encoded
            return
        yield from _chat_texts(messages)


def _source_texts(specs: tuple[SourceSpec, ...], extra: list[str]):
    """Texts to train a BPE on: text fields, captions and chat message contents of every source (records in any
    chat format, converted as they will be encoded), then of the `tokenizer_texts` files."""
    from data_pipelines.sources import read_records

    def texts():
        sources = [(s.encode, s.paths, s.sample_by) for s in specs]
        sources += [(EncodeSpec(kind="chat", seq_len=0), (p,), "document") for p in extra]
        for enc, paths, sample_by in sources:
            for rec in read_records(paths, sample_by=sample_by):
                try:
                    value = apply_columns(parse_record(rec["record"], rec["origin"], rec["error"]), enc.columns,
                                          rec["origin"])
                except BadRecord:
                    continue
                yield from _record_texts(enc.kind, value, enc.text_field, enc.format, rec["origin"])
    return texts


def source_tokenizer(cfg: DataConfig, specs: tuple[SourceSpec, ...], data_dir: Path) -> PreTrainedTokenizerBase:
    """The BPE trained on the sources, cached under a key of their paths, formats and file stamps: a regenerated
    source (a new world at the same path) or a changed pre-tokenizer gets a new tokenizer, not the stale one."""
    if cfg.tokenizer is not None:
        return load_or_train_tokenizer(cfg.tokenizer, None, cfg.vocab_size, Path(), chat_template=cfg.chat_template)
    extra = list(cfg.tokenizer_texts)
    key_parts = ([(s.encode.kind, s.paths, s.encode.format, s.encode.columns, s.encode.text_field, s.sample_by)
                  for s in specs] + extra + [file_stamps(s.paths) for s in specs] + [file_stamps(extra)]
                 + [PRE_TOKENIZER_TAG])
    key = hashlib.sha256(repr(key_parts).encode()).hexdigest()[:10]
    cache = data_dir / "generated" / f"tokenizer-bpe{cfg.vocab_size}-{cfg.chat_template}-{key}"
    return load_or_train_tokenizer(None, None, cfg.vocab_size, cache, chat_template=cfg.chat_template,
                                   texts=_source_texts(specs, extra))


def mixture_spec(cfg: DataConfig, mode: str, specs: tuple[SourceSpec, ...]) -> MixtureSpec:
    multimodal = cfg.kind == "sft" or any(s.encode.kind != "text" for s in specs)
    return MixtureSpec(seq_len=cfg.seq_len, mode="packed" if mode == "varlen" else mode, multimodal=multimodal,
                       seed=cfg.seed, sources=specs, on_error=cfg.on_error, chat_template=cfg.chat_template)


def _stream(cfg: DataConfig, spec: MixtureSpec, tok: PreTrainedTokenizerBase, policy: BadInputPolicy, rank: int,
            world_size: int) -> StreamingSource:
    from data_pipelines.sources import mix, shard_for_rank

    parts = [encode_source(src, tok, policy, i, streaming=True) for i, src in enumerate(spec.sources)]
    mixed = mix(parts, [s.weight for s in spec.sources], spec.seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return StreamingSource(shard_for_rank(mixed, rank, world_size), cfg.seq_len, pad, spec.multimodal, policy)


def validation_specs(cfg: DataConfig, sources: list[RunSource], specs: tuple[SourceSpec, ...],
                     log_formats: bool = False) -> list[tuple[str, SourceSpec]]:
    """The run's held-out sets by name: each training source's held-out fraction, then the `data.validation`
    sources (read whole). Names must differ (a clash names both keys)."""
    named: list[tuple[RunSource, SourceSpec]] = []
    if cfg.validation_fraction > 0:
        named += [(src, dataclasses.replace(spec, split="validation")) for src, spec in zip(sources, specs,
                                                                                             strict=True)]
    extra = validation_run_sources(cfg)
    named += list(zip(extra, source_specs(cfg, extra, log_formats, holdout=0.0), strict=True))
    seen: dict[str, str] = {}
    for src, _ in named:
        if src.name in seen:
            raise BadInput(f"{src.key}: validation name {src.name!r} is also {seen[src.name]}'s; set "
                             f"{src.key}.name")
        seen[src.name] = src.key
    return [(src.name, spec) for src, spec in named]


def _validation_mixture(cfg: DataConfig, mode: str, spec: SourceSpec, train: MixtureSpec) -> MixtureSpec:
    # rows in the training rows' layout (image fields, mrope ids) so the training collator batches them
    return dataclasses.replace(mixture_spec(cfg, mode, (spec,)), multimodal=train.multimodal)


def prepare_data(cfg: DataConfig, hf_config: PretrainedConfig, data_dir: Path, cache_dir: Path, is_main: bool,
                 barrier: Callable[[], None], rank: int = 0, world_size: int = 1,
                 with_validation: bool = False) -> TrainingData:
    """Collective: call on every rank. The tokenizer, rows (or this rank's stream), the collator, and with
    `with_validation` the held-out sets."""
    mode = resolve_packing_mode(cfg.packing, hf_config)
    mrope = hf_config.model_type == "qwen3_5_moe"
    if is_main:
        log.info("packing mode: %s (requested %s): %s", mode, cfg.packing, describe_packing(mode))
    sources = run_sources(cfg, data_dir)
    policy = BadInputPolicy(cfg.on_error)
    if is_main:
        generate_sources(cfg, data_dir)
        specs = source_specs(cfg, sources, log_formats=True)
        tok = source_tokenizer(cfg, specs, data_dir)
        train_spec = mixture_spec(cfg, mode, specs)
        if not cfg.streaming:
            build_mixture_dataset(train_spec, tok, cache_dir / "packed", BadInputPolicy(cfg.on_error))
        for name, vspec in validation_specs(cfg, sources, specs, log_formats=True) if with_validation else []:
            val_policy = BadInputPolicy(cfg.on_error)
            build_mixture_dataset(_validation_mixture(cfg, mode, vspec, train_spec), tok, cache_dir / "packed",
                                  val_policy)
            log.info("validation %s: %s", name, val_policy.summary())
    barrier()
    specs = source_specs(cfg, sources)
    tok = source_tokenizer(cfg, specs, data_dir)
    spec = mixture_spec(cfg, mode, specs)
    collate = Collator(mode, mrope, image_spec(cfg) if spec.multimodal else None)
    files = [p for s in sources for p in s.paths]
    validation = [ValidationSet(name, datasets.load_from_disk(str(build_mixture_dataset(
                      _validation_mixture(cfg, mode, vspec, spec), tok, cache_dir / "packed",
                      BadInputPolicy(cfg.on_error)))))
                  for name, vspec in (validation_specs(cfg, sources, specs) if with_validation else [])]
    if cfg.streaming:
        return TrainingData(tok, None, mode, files, collate, policy, _stream(cfg, spec, tok, policy, rank, world_size),
                            validation)
    rows = datasets.load_from_disk(str(build_mixture_dataset(spec, tok, cache_dir / "packed", policy)))
    if is_main:
        policy.log_summary()
    return TrainingData(tok, rows, mode, files, collate, policy, validation=validation)


def build_sft_rows(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, hf_config: PretrainedConfig,
                   cache_dir: Path) -> tuple[datasets.Dataset, Collator, BadInputPolicy]:
    """Chat sources -> rows (input_ids, labels, position_ids, + image fields) and their collator, with a given
    tokenizer. Single-process helper (call on rank 0, barrier, then on every rank: the second call reads the cache).
    """
    if cfg.kind != "sft":
        raise ValueError(f"data.kind={cfg.kind!r}: build_sft_rows reads data.kind=sft configs")
    if not tokenizer.chat_template:
        from data_pipelines.chat_render import chat_template_text

        tokenizer.chat_template = chat_template_text(cfg.chat_template)
    mode = resolve_packing_mode(cfg.packing, hf_config)
    policy = BadInputPolicy(cfg.on_error)
    spec = mixture_spec(cfg, mode, source_specs(cfg, run_sources(cfg, Path())))
    rows = datasets.load_from_disk(str(build_mixture_dataset(spec, tokenizer, cache_dir / "packed", policy)))
    policy.log_summary()
    return rows, Collator(mode, hf_config.model_type == "qwen3_5_moe", image_spec(cfg)), policy

"""The data of a run: corpus (generated or local), tokenizer, packed rows, and the batches each rank reads.

`data.kind=text`: the original text path. `data.kind=mixture`: weighted sources (text, image-text pairs,
interleaved image/text documents) for pretraining. `data.kind=sft`: chat sources rendered with the chat
template (`build_sft_rows` is the entry point for train/sft.py). Rank 0 builds what is missing into the
data/cache folders; every other rank waits, then memory-maps it. With `data.streaming=true` nothing is
cached: every rank streams, encodes and packs its own shard.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from data_pipelines.bad_input import BadInputPolicy
from data_pipelines.collate import Collator
from data_pipelines.images import ImageSpec
from data_pipelines.packing import describe_packing, resolve_packing_mode
from data_pipelines.shapes_corpus import generate_shapes_corpus
from data_pipelines.text_corpus import generate_text_corpus
from data_pipelines.text_dataset import MixtureSpec, PackSpec, build_mixture_dataset, build_packed_dataset
from data_pipelines.tokenizer import PRE_TOKENIZER_TAG, load_or_train_tokenizer
from train.config import DataConfig, SourceConfig

log = logging.getLogger(__name__)


@dataclass
class TextData:
    tokenizer: PreTrainedTokenizerBase
    train_rows: datasets.Dataset | None
    packing: str
    data_files: list[str]
    collate: Collator | None = None
    policy: BadInputPolicy | None = None
    streaming: StreamingSource | None = None

    def batches(self, micro_batch: int, grad_accum: int, rank: int, world_size: int, seed: int,
                length_group_steps: int = 0):
        """This rank's resumable batches (map-style rows or its shard of the stream)."""
        from data_pipelines.loader import ResumableBatches, StreamingBatches

        if self.streaming is not None:
            s = self.streaming
            return StreamingBatches(s.samples, s.seq_len, self.packing, s.pad_id, micro_batch, grad_accum,
                                    self.collate, s.multimodal, on_skip=s.count_skip)
        return ResumableBatches(self.train_rows, micro_batch, grad_accum, rank, world_size, seed, self.collate,
                                length_group_steps)


@dataclass
class StreamingSource:
    samples: datasets.IterableDataset
    seq_len: int
    pad_id: int
    multimodal: bool
    policy: BadInputPolicy

    def count_skip(self, skip: str) -> None:
        reason, detail = skip.split("|", 1)
        self.policy.skipped[reason] += 1
        self.policy.examples.setdefault(reason, detail)


def _corpus_files(cfg: DataConfig, data_dir: Path) -> list[str]:
    if cfg.source == "generated":
        out = data_dir / "generated" / f"text_corpus-n{cfg.num_documents}-s{cfg.seed}"
        files = generate_text_corpus(out, cfg.num_documents, cfg.seed, cfg.validation_fraction)
        return [str(files["train"])]
    return list(cfg.paths)


def _tokenizer_cache(cfg: DataConfig, data_dir: Path) -> Path:
    return data_dir / "generated" / f"tokenizer-bpe{cfg.vocab_size}-n{cfg.num_documents}-s{cfg.seed}-{PRE_TOKENIZER_TAG}"


def prepare_text_data(cfg: DataConfig, hf_config: PretrainedConfig, data_dir: Path, cache_dir: Path,
                      is_main: bool, barrier: Callable[[], None]) -> TextData:
    """Collective: call on every rank (`barrier` syncs them). Returns the tokenizer and the packed rows."""
    mode = resolve_packing_mode(cfg.packing, hf_config)
    if is_main:
        log.info("packing mode: %s (requested %s)", mode, cfg.packing)
    spec = PackSpec(seq_len=cfg.seq_len, mode=mode, text_field=cfg.text_field)
    if is_main:
        files = _corpus_files(cfg, data_dir)
        tok = load_or_train_tokenizer(cfg.tokenizer, Path(files[0]), cfg.vocab_size, _tokenizer_cache(cfg, data_dir),
                                      cfg.text_field)
        build_packed_dataset(files, tok, spec, cache_dir / "packed")
    barrier()
    files = _corpus_files(cfg, data_dir)
    tok = load_or_train_tokenizer(cfg.tokenizer, Path(files[0]), cfg.vocab_size, _tokenizer_cache(cfg, data_dir),
                                  cfg.text_field)
    rows = datasets.load_from_disk(str(build_packed_dataset(files, tok, spec, cache_dir / "packed")))
    return TextData(tokenizer=tok, train_rows=rows, packing=mode, data_files=files)


def image_spec(cfg: DataConfig) -> ImageSpec:
    return ImageSpec(cfg.image.min_pixels, cfg.image.max_pixels, cfg.image.max_source_pixels)


def _generate_sources(cfg: DataConfig, data_dir: Path) -> None:
    """`data.source=generated` for mixtures: the text corpus and the shapes image set the sources point at."""
    if cfg.source != "generated":
        return
    gen = data_dir / "generated"
    generate_text_corpus(gen / f"text_corpus-n{cfg.num_documents}-s{cfg.seed}", cfg.num_documents, cfg.seed,
                         cfg.validation_fraction)
    generate_shapes_corpus(gen / f"shapes-n{cfg.num_images}-s{cfg.seed}", cfg.num_images, cfg.seed)


def _source_texts(cfg: DataConfig):
    """Texts to train a BPE on: text fields, captions and chat message contents of every source."""
    import json

    from data_pipelines.sources import read_records

    def texts():
        extra = [SourceConfig(kind="chat", path=p) for p in cfg.tokenizer_texts]
        for src in [*cfg.sources, *extra]:
            for rec in read_records(src.path):
                try:
                    value = json.loads(rec["record"])
                except json.JSONDecodeError:
                    continue
                if src.kind in ("text", "image_text") and isinstance(value.get(src.text_field), str):
                    yield value[src.text_field]
                for part in value.get("content", []) if isinstance(value.get("content"), list) else []:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        yield part["text"]
                for m in value.get("messages", value.get("conversations", [])) or []:
                    content = m.get("content", m.get("value")) if isinstance(m, dict) else None
                    if isinstance(content, str):
                        yield content
                    for call in (m.get("tool_calls") or []) if isinstance(m, dict) else []:
                        yield json.dumps(call, ensure_ascii=False)
    return texts


def _file_stamps(path: str) -> list[tuple[str, int, int]]:
    """(file, size, mtime) of every local file behind a source path; nothing for a hub name."""
    import glob

    found = [Path(p) for p in sorted(glob.glob(path))] or ([Path(path)] if Path(path).exists() else [])
    files = [f for p in found for f in ([p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()))]
    return [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def _source_tokenizer(cfg: DataConfig, data_dir: Path) -> PreTrainedTokenizerBase:
    """The BPE trained on the sources, cached under a key of their paths and file stamps: a regenerated source
    (a new world at the same path) or a changed pre-tokenizer gets a new tokenizer, not the stale one."""
    import hashlib

    paths = [s.path for s in cfg.sources] + list(cfg.tokenizer_texts)
    key_parts = ([(s.kind, s.path) for s in cfg.sources] + list(cfg.tokenizer_texts) + [_file_stamps(p) for p in paths]
                 + [PRE_TOKENIZER_TAG])
    key = hashlib.sha256(repr(key_parts).encode()).hexdigest()[:10]
    cache = data_dir / "generated" / f"tokenizer-bpe{cfg.vocab_size}-{cfg.chat_template}-{key}"
    return load_or_train_tokenizer(cfg.tokenizer, None, cfg.vocab_size, cache, chat_template=cfg.chat_template,
                                   texts=_source_texts(cfg))


def _mixture_spec(cfg: DataConfig, mode: str) -> MixtureSpec:
    from data_pipelines.encode import EncodeSpec

    multimodal = cfg.kind == "sft" or any(s.kind != "text" for s in cfg.sources)
    encode = tuple((EncodeSpec(kind=s.kind, seq_len=cfg.seq_len, text_field=s.text_field, image_field=s.image_field,
                               image_root=s.image_root, image=image_spec(cfg), enable_thinking=cfg.enable_thinking,
                               overlong=cfg.overlong, render_tools=cfg.render_tools), s.path, float(s.weight))
                   for s in cfg.sources)
    return MixtureSpec(seq_len=cfg.seq_len, mode="packed" if mode == "varlen" else mode, multimodal=multimodal,
                       seed=cfg.seed, encode=encode, on_error=cfg.on_error, chat_template=cfg.chat_template)


def _stream(cfg: DataConfig, spec: MixtureSpec, tok: PreTrainedTokenizerBase, policy: BadInputPolicy, rank: int,
            world_size: int) -> StreamingSource:
    from data_pipelines.encode import Encoder
    from data_pipelines.sources import mix, read_records, shard_for_rank
    from data_pipelines.text_dataset import encode_records

    parts = [encode_records(read_records(path, streaming=True), Encoder(tok, enc), policy, i)
             for i, (enc, path, _) in enumerate(spec.encode)]
    mixed = mix(parts, [w for _, _, w in spec.encode], spec.seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return StreamingSource(shard_for_rank(mixed, rank, world_size), cfg.seq_len, pad, spec.multimodal, policy)


def prepare_data(cfg: DataConfig, hf_config: PretrainedConfig, data_dir: Path, cache_dir: Path, is_main: bool,
                 barrier: Callable[[], None], rank: int = 0, world_size: int = 1) -> TextData:
    """Collective: call on every rank. The tokenizer, rows (or this rank's stream) and the collator."""
    mode = resolve_packing_mode(cfg.packing, hf_config)
    mrope = hf_config.model_type == "qwen3_5_moe"
    if is_main:
        log.info("packing mode: %s (requested %s): %s", mode, cfg.packing, describe_packing(mode))
    if cfg.kind == "text":
        data = prepare_text_data(cfg, hf_config, data_dir, cache_dir, is_main, barrier)
        data.collate = Collator(mode, mrope)
        return data
    policy = BadInputPolicy(cfg.on_error)
    spec = _mixture_spec(cfg, mode)
    if is_main:
        _generate_sources(cfg, data_dir)
        tok = _source_tokenizer(cfg, data_dir)
        if not cfg.streaming:
            build_mixture_dataset(spec, tok, cache_dir / "packed", BadInputPolicy(cfg.on_error))
    barrier()
    tok = _source_tokenizer(cfg, data_dir)
    collate = Collator(mode, mrope, image_spec(cfg) if spec.multimodal else None)
    files = [s.path for s in cfg.sources]
    if cfg.streaming:
        return TextData(tok, None, mode, files, collate, policy, _stream(cfg, spec, tok, policy, rank, world_size))
    rows = datasets.load_from_disk(str(build_mixture_dataset(spec, tok, cache_dir / "packed", policy)))
    if is_main:
        policy.log_summary()
    return TextData(tok, rows, mode, files, collate, policy)


def build_sft_rows(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, hf_config: PretrainedConfig,
                   cache_dir: Path) -> tuple[datasets.Dataset, Collator, BadInputPolicy]:
    """For train/sft.py: chat sources -> rows (input_ids, labels, position_ids, + image fields) and their collator.

    Single-process helper (call on rank 0, barrier, then on every rank: the second call reads the cache).
    """
    if cfg.kind != "sft":
        raise ValueError(f"data.kind={cfg.kind!r}: build_sft_rows reads data.kind=sft configs")
    if not tokenizer.chat_template:
        from data_pipelines.chat_render import chat_template_text

        tokenizer.chat_template = chat_template_text(cfg.chat_template)
    mode = resolve_packing_mode(cfg.packing, hf_config)
    policy = BadInputPolicy(cfg.on_error)
    spec = _mixture_spec(cfg, mode)
    rows = datasets.load_from_disk(str(build_mixture_dataset(spec, tokenizer, cache_dir / "packed", policy)))
    policy.log_summary()
    return rows, Collator(mode, hf_config.model_type == "qwen3_5_moe", image_spec(cfg)), policy

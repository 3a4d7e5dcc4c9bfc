"""The text pretraining data of a run: corpus (generated or local), tokenizer, packed rows.

Rank 0 builds what is missing into the data/cache folders; every other rank waits, then memory-maps it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from data_pipelines.packing import resolve_packing_mode
from data_pipelines.text_corpus import generate_text_corpus
from data_pipelines.text_dataset import PackSpec, build_packed_dataset
from data_pipelines.tokenizer import load_or_train_tokenizer
from train.config import DataConfig

log = logging.getLogger(__name__)


@dataclass
class TextData:
    tokenizer: PreTrainedTokenizerBase
    train_rows: datasets.Dataset
    packing: str
    data_files: list[str]


def _corpus_files(cfg: DataConfig, data_dir: Path) -> list[str]:
    if cfg.source == "generated":
        out = data_dir / "generated" / f"text_corpus-n{cfg.num_documents}-s{cfg.seed}"
        files = generate_text_corpus(out, cfg.num_documents, cfg.seed, cfg.validation_fraction)
        return [str(files["train"])]
    return list(cfg.paths)


def _tokenizer_cache(cfg: DataConfig, data_dir: Path) -> Path:
    return data_dir / "generated" / f"tokenizer-bpe{cfg.vocab_size}-n{cfg.num_documents}-s{cfg.seed}"


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

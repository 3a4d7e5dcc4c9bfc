"""Tokenizers: a real model's own, or a byte-level BPE trained on the corpus for from-scratch tiny models.

The trained tokenizer carries Qwen's special tokens, so chat, tool-call and vision markup tokenises the
same way as for released checkpoints, and is saved as a transformers tokenizer that exports can carry,
with a Qwen chat template (data_pipelines/chat_templates/) in its folder. A real model's tokenizer keeps
its own template; one without a template gets ours.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX as QWEN3_5_PRETOKENIZE_REGEX

log = logging.getLogger(__name__)

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>",
]


# Pre-tokenizer the from-scratch BPE is trained with: every space, digit and CJK character is its own piece, lower-case
# words and punctuation runs are pieces, and a capitalised word is split into letters. So no merge joins a name to the
# space, quote or CJK character before it, nor a capital letter to anything: a name (city, shop, person) is made of
# the pieces of lower-case words and tokenises the same wherever it appears ("in Xiamen", a JSON value, an option
# card), which a tiny model needs to copy one it has never seen. GPT-style merges make " Xiamen" and "Xiamen" differ.
COPY_CONSISTENT_SPLIT = r"\p{Han}|(?<!\p{L})\p{Ll}[\p{L}&&[^\p{Han}]]*|[\p{L}&&[^\p{Han}]]|\p{N}|\s|[^\s\p{L}\p{N}]+"
# What the saved tokenizer runs: Qwen3.5's own NFC + split, because transformers loads every qwen3_5_moe folder with
# `Qwen3_5Tokenizer`, which rebuilds that pipeline from the vocabulary and merges and ignores tokenizer.json's (vLLM and
# SGLang load it the same way). Saved with our split, a model was pretrained on one tokenisation and fine-tuned,
# evaluated and served on another. With the merges above, Qwen's split gives the same pieces for a name in every context.
# Part of every trained-tokenizer cache key, with the training split: a change trains a new tokenizer.
PRE_TOKENIZER_TAG = hashlib.sha256((COPY_CONSISTENT_SPLIT + QWEN3_5_PRETOKENIZE_REGEX).encode()).hexdigest()[:8]


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike,
                        chat_template: str = "qwen3_5") -> PreTrainedTokenizerFast:
    """Train a byte-level BPE and save it (atomically), with its chat template, as a transformers tokenizer.

    Trained with `COPY_CONSISTENT_SPLIT`, saved with Qwen3.5's normaliser and split (see the constants above).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    from data_pipelines.chat_render import chat_template_text

    def split(regex: str) -> pre_tokenizers.PreTokenizer:
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = split(COPY_CONSISTENT_SPLIT)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=QWEN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.pre_tokenizer = split(QWEN3_5_PRETOKENIZE_REGEX)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=QWEN_SPECIAL_TOKENS[1:],
        model_max_length=1 << 20,
    )
    fast.chat_template = chat_template_text(chat_template)
    out = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    fast.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return fast


def _jsonl_texts(path: Path, field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)[field]


def load_or_train_tokenizer(tokenizer_path: str | None, corpus_file: Path | None, vocab_size: int,
                            cache_dir: Path, text_field: str = "text", chat_template: str = "qwen3_5",
                            texts: Callable[[], Iterable[str]] | None = None) -> PreTrainedTokenizerBase:
    """A given tokenizer folder, or one trained once on `corpus_file` (or `texts()`) and cached in `cache_dir`."""
    from data_pipelines.chat_render import chat_template_text

    if tokenizer_path is not None:
        if not os.path.isdir(tokenizer_path):
            raise ValueError(f"data.tokenizer={tokenizer_path!r}: no such directory")
        tok = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=False)
        if not tok.chat_template:
            tok.chat_template = chat_template_text(chat_template)
        return tok
    if (cache_dir / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(cache_dir)
    if corpus_file is None and texts is None:
        raise ValueError("data.tokenizer is null and there is no corpus to train a tokenizer on")
    log.info("training a %d-token byte-level BPE on %s", vocab_size, corpus_file or "the data sources")
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    source = texts() if texts is not None else _jsonl_texts(corpus_file, text_field)
    return train_bpe_tokenizer(source, vocab_size, cache_dir, chat_template)


VISION_TOKEN_FIELDS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
                       "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}


def align_vision_token_ids(hf_config, tokenizer: PreTrainedTokenizerBase, from_scratch: bool) -> None:
    """A multimodal config must name the tokenizer's vision token ids: set them (from scratch) or check them."""
    if not hasattr(hf_config, "image_token_id"):
        return
    for field, token in VISION_TOKEN_FIELDS.items():
        tid = tokenizer.convert_tokens_to_ids(token)
        if from_scratch:
            setattr(hf_config, field, tid)
        elif getattr(hf_config, field) != tid:
            raise ValueError(f"model config {field}={getattr(hf_config, field)} but the tokenizer has {token}={tid}; "
                             "use the model's own tokenizer (data.tokenizer)")

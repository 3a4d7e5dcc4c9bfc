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

log = logging.getLogger(__name__)

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>",
]


# Pre-tokenizer of the from-scratch BPE: every space, digit and CJK character is its own piece, lower-case words and
# punctuation runs are pieces, and a capitalised word is spelt letter by letter. A string then tokenises the same
# wherever it appears ("in Xiamen", a JSON value, an option card): GPT-style " Xiamen" vs "Xiamen" pieces differ,
# and a tiny model cannot learn that mapping for names it has never seen. Spelling names (cities, shops, people)
# in letters makes copying one like copying an order id's digits: every piece is frequent. As whole-word BPE
# pieces a training city was one rare token and a held-out one split into arbitrary rare pieces ("Bei", "hai"),
# and neither was copied (measured: 0% of held-out cities after 900 fine-tuning steps). Costs ~6% more tokens.
COPY_CONSISTENT_SPLIT = r"\p{Han}|(?<!\p{L})\p{Ll}[\p{L}&&[^\p{Han}]]*|[\p{L}&&[^\p{Han}]]|\p{N}|\s|[^\s\p{L}\p{N}]+"
# Part of every trained-tokenizer cache key: a changed pre-tokenizer trains a new tokenizer.
PRE_TOKENIZER_TAG = hashlib.sha256(COPY_CONSISTENT_SPLIT.encode()).hexdigest()[:8]


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike,
                        chat_template: str = "qwen3_5") -> PreTrainedTokenizerFast:
    """Train a byte-level BPE and save it (atomically), with its chat template, as a transformers tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from data_pipelines.chat_render import chat_template_text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(COPY_CONSISTENT_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=QWEN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
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

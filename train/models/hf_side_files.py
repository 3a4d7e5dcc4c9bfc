"""The non-weight files of an HF export: config, generation config, tokenizer with chat template, image processor.

Serving stacks read more than transformers does: `num_experts` besides transformers' `num_local_experts`,
the full rope parameters, image/vision token ids that exist in the tokenizer, a chat template, and for
Qwen3.5 the image processor values of the released models (CONTEXT.md §2).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig, PretrainedConfig, PreTrainedTokenizerBase

from data_pipelines.chat_render import chat_template_text
from train.models.build import FAMILIES

# The template a family's tokenizer gets when the run's tokenizer carries none (the data pipeline's, so
# exports render chats exactly as training did).
FAMILY_CHAT_TEMPLATE = {"qwen3_moe": "qwen3", "qwen3_5_moe": "qwen3_5"}
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_VISION_TOKENS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}
# Released Qwen3-VL / Qwen3.5 image processor values.
IMAGE_PROCESSOR = {
    "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "size": {"shortest_edge": 65536, "longest_edge": 16777216},
}


def _token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int | None:
    tid = tokenizer.convert_tokens_to_ids(token)
    return tid if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0 else None


def load_tokenizer(tokenizer_dir: str | Path, family: str) -> PreTrainedTokenizerBase:
    """The run's tokenizer, with the family's ChatML template when it carries none."""
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=False)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = chat_template_text(FAMILY_CHAT_TEMPLATE[family])
    return tokenizer


def set_token_ids(hf_config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    """Point the vision and special token ids of the config at the tokenizer's own ids."""
    for key, token in _VISION_TOKENS.items():
        tid = _token_id(tokenizer, token)
        if hasattr(hf_config, key) and tid is not None:
            setattr(hf_config, key, tid)
    text = hf_config.get_text_config()
    eos = _token_id(tokenizer, "<|im_end|>") or tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for cfg in {id(hf_config): hf_config, id(text): text}.values():
        cfg.eos_token_id, cfg.pad_token_id = eos, pad


def write_config(hf_config: PretrainedConfig, family: str, dtype: torch.dtype, out: Path) -> None:
    """config.json as released checkpoints have it, plus `num_experts` (read by older loaders)."""
    hf_config.save_pretrained(out)
    path = out / "config.json"
    cfg = json.loads(path.read_text())
    cfg["architectures"] = [FAMILIES[family][1].__name__]
    cfg["dtype"] = DTYPE_NAMES[dtype]
    cfg["use_cache"] = True
    text = cfg.get("text_config", cfg)
    text["num_experts"] = hf_config.get_text_config().num_experts
    text["use_cache"] = True
    if "text_config" in cfg:
        text["dtype"] = DTYPE_NAMES[dtype]
    rope = getattr(hf_config.get_text_config(), "rope_parameters", None)
    if rope:
        text["rope_parameters"] = dict(rope)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def write_generation_config(tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    eos = [t for t in (_token_id(tokenizer, "<|im_end|>"), _token_id(tokenizer, "<|endoftext|>")) if t is not None]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[-1]
    GenerationConfig(eos_token_id=eos, pad_token_id=pad, do_sample=False).save_pretrained(out)


def write_tokenizer(tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    tokenizer.save_pretrained(out)


def write_image_processor(out: Path) -> None:
    """preprocessor_config.json for Qwen3.5 (built locally; the processor class needs torchvision)."""
    from transformers import Qwen2VLImageProcessorPil

    Qwen2VLImageProcessorPil(**IMAGE_PROCESSOR).save_pretrained(out)
    path = out / "preprocessor_config.json"
    cfg = json.loads(path.read_text())
    cfg["processor_class"] = "Qwen3VLProcessor"
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

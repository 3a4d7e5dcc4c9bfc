"""Build transformers' own Qwen MoE classes from a config group or a local checkpoint folder.

Unknown `model.hf_config` keys fail here with their full name, so a typo never silently falls back to a
transformers default.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import os
from typing import Any

import torch
from omegaconf import OmegaConf
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

from train.config import ModelConfig

log = logging.getLogger(__name__)

FAMILIES: dict[str, tuple[type[PretrainedConfig], type[PreTrainedModel]]] = {
    "qwen3_moe": (Qwen3MoeConfig, Qwen3MoeForCausalLM),
    "qwen3_5_moe": (Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration),
}
_NESTED = ("text_config", "vision_config")
# Read by the modeling code with getattr() but absent from the config signature in transformers 5.24.
_EXTRA_KEYS = {"head_dim"}


def _known_keys(reference: PretrainedConfig) -> set[str]:
    params = set(inspect.signature(type(reference).__init__).parameters) - {"self", "kwargs"}
    return params | set(reference.attribute_map) | set(vars(reference)) | _EXTRA_KEYS


def _check_keys(kwargs: dict[str, Any], reference: PretrainedConfig, prefix: str) -> None:
    for key, value in kwargs.items():
        if prefix == "model.hf_config" and key in _NESTED and isinstance(value, dict):
            _check_keys(value, getattr(reference, key), f"{prefix}.{key}")
            continue
        if key not in _known_keys(reference):
            raise ValueError(f"{prefix}.{key}: not a field of {type(reference).__name__}")


def _tie_at_top_level(kwargs: dict, text: dict) -> None:
    """Qwen3.5-MoE ties its head to the embedding from the top-level `tie_word_embeddings`; transformers ignores the
    text_config's, so a value set only there would silently train an untied model. Both must agree; the text
    config is given the top-level value, as released configs have it."""
    top, inner = bool(kwargs.get("tie_word_embeddings", False)), text.get("tie_word_embeddings")
    if inner is not None and bool(inner) != top:
        raise ValueError(f"model.hf_config.text_config.tie_word_embeddings={inner} but model.hf_config."
                         f"tie_word_embeddings={top}: Qwen3.5-MoE ties from the top-level key; set it there")
    text["tie_word_embeddings"] = top


def build_hf_config(model_cfg: ModelConfig, vocab_size: int | None = None) -> PretrainedConfig:
    """The transformers config: from `init_from`/config.json if given, else from `hf_config`."""
    config_cls, _ = FAMILIES[model_cfg.family]
    if model_cfg.init_from is not None:
        path = os.path.join(model_cfg.init_from, "config.json")
        with open(path, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
        if model_type != config_cls.model_type:
            raise ValueError(f"{path}: model_type {model_type!r} does not match model.family={model_cfg.family!r} "
                             f"(expects {config_cls.model_type!r})")
        return config_cls.from_pretrained(model_cfg.init_from)
    hf = model_cfg.hf_config
    kwargs = OmegaConf.to_container(hf, resolve=True) if OmegaConf.is_config(hf) else copy.deepcopy(dict(hf))
    _check_keys(kwargs, config_cls(), "model.hf_config")
    if model_cfg.family == "qwen3_5_moe":
        text = dict(kwargs.get("text_config", {}))
        if vocab_size is not None and "vocab_size" not in text:
            text["vocab_size"] = vocab_size
        _tie_at_top_level(kwargs, text)
        kwargs["text_config"] = text
    elif vocab_size is not None and "vocab_size" not in kwargs:
        kwargs["vocab_size"] = vocab_size
    return config_cls(**kwargs)


def build_model(model_cfg: ModelConfig, hf_config: PretrainedConfig, dtype: torch.dtype, seed: int,
                ep_rank: int = 0, ep_size: int = 1) -> PreTrainedModel:
    """Random init (seeded, identical on every rank), or the `init_from` weights this EP rank owns.

    With `init_from` nothing is random-initialised and only this rank's experts are read and materialised
    (`hf_import.build_rank_local`), so a rank never holds the whole model. `model.frozen` is applied here, so
    every engine built from this config (training, resume, export verification) has the same trainable set and
    hence the same ZeRO optimizer layout; so is `model.lora` (adapters drawn from `seed`, base weights frozen).
    `model.mtp_layers` adds `model.mtp` (train/models/mtp.py), drawn after the trunk so the trunk's init is the same
    with or without it, or read from `init_from`'s `mtp.*`.
    """
    _, model_cls = FAMILIES[model_cfg.family]
    torch.manual_seed(seed)
    hf_config._attn_implementation = model_cfg.attn_implementation
    if model_cfg.init_from is None:
        model = model_cls._from_config(hf_config, dtype=dtype)
        if model_cfg.mtp_layers:
            from train.models.mtp import attach_mtp

            attach_mtp(model, model_cfg.mtp_layers)
    else:
        from train.models.hf_import import build_rank_local

        model = build_rank_local(model_cls, hf_config, dtype, model_cfg.init_from, ep_rank, ep_size,
                                 model_cfg.mtp_layers)
    model.config.use_cache = False
    if model_cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if model_cfg.frozen:
        log.info("froze %d parameters under %s", set_trainable(model, list(model_cfg.frozen), False, "model.frozen"),
                 model_cfg.frozen)
    if model_cfg.lora.enabled:
        from train.models.hf_adapter import family_keys
        from train.models.lora import apply_lora, lora_spec

        n = apply_lora(model, lora_spec(model_cfg.lora), seed, family_keys(model_cfg.family).extra_prefixes)
        full = set_trainable(model, list(model_cfg.lora.trainable), True, "model.lora.trainable")
        log.info("LoRA: %d adapter parameters and %d in full (%s) train, %d frozen", n, full,
                 list(model_cfg.lora.trainable), sum(p.numel() for p in model.parameters()) - n - full)
    return model


VISION_PREFIX = "model.visual."  # Qwen3.5-MoE's vision tower, as transformers names its parameters


def frozen_for_text_only(model_cfg: ModelConfig, has_images: bool) -> list[str] | None:
    """`model.frozen` for a run whose training data has no image: the vision tower's prefix added (None: no change).
    Trainable, the tower would get only zero gradients while AdamW's decoupled weight decay shrank its weights
    every step; frozen, it keeps no gradient or optimizer state and is exported as loaded (and ZeRO-3 never sees
    a gradient taken outside a module's forward). Through `model.frozen`, the run's config.json, its plan and the
    export's reference engine all see it."""
    if has_images or not getattr(model_cfg, "freeze_vision_without_images", True) or not vision_trains(model_cfg):
        return None
    return [*model_cfg.frozen, VISION_PREFIX]


def vision_trains(model_cfg: ModelConfig) -> bool:
    """Whether a Qwen3.5 run trains its vision tower (not under `model.frozen`, not LoRA)."""
    return (model_cfg.family == "qwen3_5_moe" and not model_cfg.lora.enabled
            and not any(VISION_PREFIX.startswith(prefix) for prefix in model_cfg.frozen))


def check_zero3_vision(model_cfg: ModelConfig, zero_stage: int, has_images: bool) -> None:
    """Refuse ZeRO-3 with a trainable vision tower and images in the data: a micro-batch without an image gives the
    tower zero gradients taken outside its forward (every rank must reduce the same gradients), which ZeRO-3's
    partitioned parameters cannot take (gloo: `Received data size doesn't match expected size`)."""
    if zero_stage == 3 and has_images and vision_trains(model_cfg):
        raise ValueError("deepspeed.zero_stage=3 with images in the training data needs the vision tower frozen: "
                         "set model.frozen=[model.visual.] (the language model still learns to read it), or use "
                         "deepspeed=zero1/zero2 to train the tower too")


def set_trainable(model: torch.nn.Module, prefixes: list[str], trainable: bool, key: str) -> int:
    """Set requires_grad on parameters whose names start with one of `prefixes`; returns how many elements.
    A prefix that matches nothing is an error naming `key`."""
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(n.startswith(prefix) for n in names):
            roots = sorted({".".join(n.split(".")[:2]) + "." for n in names})
            raise ValueError(f"{key}: {prefix!r} matches no parameter (names start with {roots})")
    n = 0
    for name, p in model.named_parameters():
        if any(name.startswith(prefix) for prefix in prefixes):
            p.requires_grad_(trainable)
            n += p.numel()
    return n

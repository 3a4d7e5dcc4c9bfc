"""Parameters a job builds, by where they live: counted on transformers' own classes built on the meta device,
through `train.models.build.build_model` (so `model.frozen` and `model.lora` are applied as in a run).

Categories: `experts` (routed experts: AutoEP shards them over `parallel.ep_size`), `dense` (attention, Gated
DeltaNet, norms, router, shared expert, LoRA adapters: replicated on every rank), `embedding`, `lm_head` and
`vision` (replicated too). Counting the model itself rather than a formula keeps Qwen3.5's layer_types, shared
expert and vision tower exactly as built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PretrainedConfig

from train.config import ModelConfig

CATEGORIES = ("experts", "dense", "embedding", "lm_head", "vision")


def category(name: str) -> str:
    """Where a parameter of transformers' Qwen MoE classes lives (names as `named_parameters` gives them)."""
    if ".mlp.experts." in name and "lora" not in name:
        return "experts"
    if name.startswith("model.visual."):
        return "vision"
    if "embed_tokens" in name:
        return "embedding"
    if name.startswith("lm_head."):
        return "lm_head"
    return "dense"


@dataclass(frozen=True)
class Inventory:
    """Element counts of the whole model (before expert sharding), total and trainable, per category."""

    total: dict[str, int] = field(default_factory=dict)
    trainable: dict[str, int] = field(default_factory=dict)
    tied: bool = False
    # Elements of AutoEP's largest expert weight over all experts ([E, I, H]: w1, w3 or w2 of one layer)
    largest_expert_tensor: int = 0

    def all(self) -> int:
        return sum(self.total.values())

    def on_rank(self, ep_size: int, trainable: bool = False) -> dict[str, float]:
        """Elements one rank holds: routed experts split over the EP group, everything else replicated."""
        counts = self.trainable if trainable else self.total
        return {k: counts.get(k, 0) / (ep_size if k == "experts" else 1) for k in CATEGORIES}


def build_inventory(model_cfg: ModelConfig, hf_config: PretrainedConfig) -> Inventory:
    """Count parameters of the model `build_model` makes from this config, without allocating them."""
    from train.models.build import build_model

    with torch.device("meta"):
        model = build_model(_meta_model_config(model_cfg), hf_config, torch.bfloat16, seed=0)
    total = dict.fromkeys(CATEGORIES, 0)
    trainable = dict.fromkeys(CATEGORIES, 0)
    largest = 0
    for name, p in model.named_parameters():  # tied weights appear once
        c = category(name)
        total[c] += p.numel()
        if p.requires_grad:
            trainable[c] += p.numel()
        if c == "experts":  # transformers fuses [gate | up]; AutoEP keeps w1 and w3 apart
            largest = max(largest, p.numel() // (2 if name.endswith("gate_up_proj") else 1))
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    return Inventory(total, trainable, tied, largest)


def _meta_model_config(model_cfg: ModelConfig) -> ModelConfig:
    """The same model config without checkpointing (it changes no parameter) and without `init_from` (the
    shapes are already in `hf_config`; nothing is read from disk)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(OmegaConf.to_container(OmegaConf.structured(model_cfg) if not OmegaConf.is_config(
        model_cfg) else model_cfg, resolve=False, throw_on_missing=False))
    cfg.activation_checkpointing = False
    cfg.init_from = None
    return cfg

"""Workarounds for DeepSpeed 0.19.8 AutoEP with transformers 5.24, each small and each tested.

tests/models/test_autoep_shims.py has one test per shim that fails as soon as upstream no longer needs it.
1. `patch_output_capture_registry`: transformers 5.24's `_CanRecordRegistry.get/__setitem__` take a model,
   AutoEP passes string keys and a default -> TypeError inside `deepspeed.initialize`.
2. `autoep_text_view` + `moe_layer_pattern`: the Qwen3.5 preset wants model_type `qwen3_5_moe_text` and its
   layer pattern misses `model.language_model.layers.N.mlp` of the multimodal model.
3. `capture_raw_router_logits`: the Qwen3.5 preset captures softmax probabilities, but HF's load-balancing
   loss expects raw logits (2.013 vs 2.088 on a tiny model).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.nn as nn
from transformers.utils import output_capturing

_Registry = output_capturing._CanRecordRegistry
ORIGINAL_REGISTRY_GET = _Registry.get
ORIGINAL_REGISTRY_SETITEM = _Registry.__setitem__

QWEN3_5_MOE_LAYER_PATTERN = r"model\.language_model\.layers\.\d+\.mlp"


def _get(self, key, *default):
    if isinstance(key, str):
        return dict.get(self, key, *default)
    return ORIGINAL_REGISTRY_GET(self, key)


def _setitem(self, key, value) -> None:
    if isinstance(key, str):
        dict.__setitem__(self, key, value)
    else:
        ORIGINAL_REGISTRY_SETITEM(self, key, value)


def patch_output_capture_registry() -> None:
    """Shim 1: let string keys through as plain dict access; model keys keep transformers' behaviour."""
    _Registry.get = _get
    _Registry.__setitem__ = _setitem


def is_multimodal(model: nn.Module) -> bool:
    return getattr(model.config, "model_type", None) == "qwen3_5_moe"


def moe_layer_pattern(model: nn.Module) -> str | None:
    """Shim 2b: the MoE block path of the multimodal Qwen3.5 model; None keeps the preset's own pattern."""
    return QWEN3_5_MOE_LAYER_PATTERN if is_multimodal(model) else None


@contextlib.contextmanager
def autoep_text_view(model: nn.Module) -> Iterator[None]:
    """Shim 2a: show AutoEP the text config of a multimodal model while it replaces the MoE blocks."""
    if not is_multimodal(model):
        yield
        return
    full = model.config
    model.config = full.get_text_config()
    try:
        yield
    finally:
        model.config = full


def capture_raw_router_logits(model: nn.Module) -> int:
    """Shim 3: make every AutoEP layer hand raw router logits to HF's output capture. Returns layers changed."""
    from deepspeed.module_inject.auto_ep_layer import AutoEPMoELayer

    n = 0
    for module in model.modules():
        if isinstance(module, AutoEPMoELayer):
            module.router_logits_capture_mode = "raw"
            n += 1
    return n

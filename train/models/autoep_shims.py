"""Workarounds for DeepSpeed 0.19.8 AutoEP with transformers 5.24, each small and each tested.

tests/models/test_autoep_shims.py has one test per shim that fails as soon as upstream no longer needs it.
1. `patch_output_capture_registry`: transformers 5.24's `_CanRecordRegistry.get/__setitem__` take a model,
   AutoEP passes string keys and a default -> TypeError inside `deepspeed.initialize`.
2. `autoep_text_view` + `moe_layer_pattern`: the Qwen3.5 preset wants model_type `qwen3_5_moe_text` and its
   layer pattern misses `model.language_model.layers.N.mlp` of the multimodal model (and the multi-token
   prediction layer's `mtp.layers.N.mlp`, train/models/mtp.py, which no preset knows).
3. `capture_raw_router_logits`: the Qwen3.5 preset captures softmax probabilities, but HF's load-balancing
   loss expects raw logits (2.013 vs 2.088 on a tiny model).
4. (autoep_local_experts.py, a file of its own.)
5. `frozen_experts_optimizer`: ZeRO-1/2 and the bf16 optimizer assert that a model with MoE layers has an MoE
   param group; with every expert weight frozen (LoRA) there is none, and `deepspeed.initialize` fails.
6. `patch_frozen_expert_restore`: under ZeRO-2 DeepSpeed saves every frozen parameter of rank 0 as a "frozen
   fragment" and, on load, copies those over the module; frozen AutoEP experts of every EP rank then get
   rank 0's experts (found by export verification of a LoRA run at EP=2: logits off by 3.7).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.nn as nn
from transformers.utils import output_capturing

_Registry = output_capturing._CanRecordRegistry
ORIGINAL_REGISTRY_GET = _Registry.get
ORIGINAL_REGISTRY_SETITEM = _Registry.__setitem__

QWEN3_5_MOE_LAYER_PATTERN = r"(?:model\.language_model|mtp)\.layers\.\d+\.mlp"


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
    """Shim 2b: the MoE block paths of the multimodal Qwen3.5 model and its MTP layers; None keeps the preset's own
    pattern."""
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


@contextlib.contextmanager
def frozen_experts_optimizer() -> Iterator[None]:
    """Shim 5: build the ZeRO-1/2 / bf16 optimizer with `has_moe_layers=False` when none of its param groups is
    an MoE group, i.e. no expert-parallel parameter trains. That flag only selects the expert-group gradient
    reduction and norm averaging, which then have nothing to act on; the engine keeps its own flag, so the frozen
    expert weights are still saved and loaded with the checkpoint."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    originals = {cls: cls.__init__ for cls in (DeepSpeedZeroOptimizer, BF16_Optimizer)}

    def wrap(init):
        def __init__(self, init_optimizer, *args, **kwargs):
            if not any(group.get("moe") for group in init_optimizer.param_groups):
                kwargs["has_moe_layers"] = False
            init(self, init_optimizer, *args, **kwargs)
        return __init__

    for cls, init in originals.items():
        cls.__init__ = wrap(init)
    try:
        yield
    finally:
        for cls, init in originals.items():
            cls.__init__ = init


def _restore_frozen_experts(engine, checkpoint: dict) -> int:
    """Copy this rank's frozen AutoEP expert weights back from the checkpoint's module state (which DeepSpeed's
    `load_moe_state_dict` filled from this rank's own expert files). Returns the number of tensors restored."""
    from deepspeed.module_inject.auto_ep_layer import AutoEPMoELayer

    from train.checkpoint.ds_checkpoint_reader import EXPERT_WEIGHTS

    state, n = checkpoint["module"], 0
    for name, module in engine.module.named_modules():
        if not isinstance(module, AutoEPMoELayer):
            continue
        for w in EXPERT_WEIGHTS:
            param = getattr(module.experts, w)
            key = f"{name}.experts.{w}"
            if not param.requires_grad and key in state:
                param.data.copy_(state[key])
                n += 1
    return n


def patch_frozen_expert_restore() -> None:
    """Shim 6: after DeepSpeed's module load (and its frozen-fragment copy), put back this rank's frozen experts."""
    from deepspeed.checkpoint.constants import FROZEN_PARAM_FRAGMENTS
    from deepspeed.runtime.engine import DeepSpeedEngine

    original = DeepSpeedEngine.load_module_state_dict
    if getattr(original, "_restores_frozen_experts", False):
        return

    def load_module_state_dict(self, checkpoint, *args, **kwargs):
        original(self, checkpoint, *args, **kwargs)
        if checkpoint.get(FROZEN_PARAM_FRAGMENTS) is not None:
            _restore_frozen_experts(self, checkpoint)

    load_module_state_dict._restores_frozen_experts = True
    load_module_state_dict.original = original
    DeepSpeedEngine.load_module_state_dict = load_module_state_dict


def capture_raw_router_logits(model: nn.Module) -> int:
    """Shim 3: make every AutoEP layer hand raw router logits to HF's output capture. Returns layers changed."""
    from deepspeed.module_inject.auto_ep_layer import AutoEPMoELayer

    n = 0
    for module in model.modules():
        if isinstance(module, AutoEPMoELayer):
            module.router_logits_capture_mode = "raw"
            n += 1
    return n

"""One test per AutoEP/transformers shim: each fails once upstream no longer needs the shim.

When one of the `test_upstream_still_needs_*` tests fails, delete that shim from
train/models/autoep_shims.py (and its use), then delete the test.
"""

from __future__ import annotations

import re

import pytest
from transformers.utils import output_capturing

from train.models import autoep_shims


def test_upstream_still_needs_registry_shim():
    registry = output_capturing._CanRecordRegistry()
    with pytest.raises(TypeError, match="positional argument"):
        autoep_shims.ORIGINAL_REGISTRY_GET(registry, "qwen3_moe:SomeLayer", None)


def test_registry_shim_passes_strings_and_keeps_model_keys():
    autoep_shims.patch_output_capture_registry()
    registry = output_capturing._CanRecordRegistry()
    registry["key"] = {"router_logits": 1}
    assert registry.get("key", None) == {"router_logits": 1}
    assert registry.get("missing", "default") == "default"

    class Model:
        pass

    registry[Model()] = {"x": 2}
    assert registry.get(Model()) == {"x": 2}  # transformers' own keying by class name still works


def test_upstream_still_needs_qwen3_5_text_view_and_pattern():
    from deepspeed.module_inject.auto_ep_presets.registry import PRESET_MODELS

    preset = PRESET_MODELS["qwen3_5_moe"]
    assert "qwen3_5_moe" not in preset.hf_model_types
    assert re.fullmatch(preset.moe_layer_pattern, "model.language_model.layers.0.mlp") is None
    assert re.fullmatch(autoep_shims.QWEN3_5_MOE_LAYER_PATTERN, "model.language_model.layers.0.mlp")


def test_upstream_still_needs_raw_router_logits():
    from deepspeed.module_inject.auto_ep_presets.base import ForwardContract
    from deepspeed.module_inject.auto_ep_presets.qwen3_5_moe import Qwen35MoePresetAdapter

    contract = Qwen35MoePresetAdapter().adjust_forward_contract(ForwardContract())
    assert contract.router_logits_capture_mode == "post_score"

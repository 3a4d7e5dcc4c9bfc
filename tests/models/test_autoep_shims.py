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


def test_upstream_still_needs_frozen_experts_optimizer_shim(world_of_one, monkeypatch):
    """Without shim 5 a LoRA model (every expert weight frozen) fails inside deepspeed.initialize; with it, the
    engine builds (tests/models/test_lora.py trains and checks it)."""
    import contextlib

    import torch

    from tests.conftest import TINY_QWEN3_5, compose
    from train.engine.deepspeed_setup import build_engine
    from train.models.build import build_hf_config, build_model

    cfg = compose([*TINY_QWEN3_5, "+model.hf_config.text_config.vocab_size=256", "model.lora.enabled=true"])
    model = build_model(cfg.model, build_hf_config(cfg.model), torch.float32, seed=0)
    monkeypatch.setattr(autoep_shims, "frozen_experts_optimizer", contextlib.nullcontext)
    with pytest.raises(AssertionError, match="None of the param groups are marked as MoE"):
        build_engine(cfg, model)


def test_upstream_still_restores_frozen_experts_from_rank0_fragments(world_of_one):
    """Shim 6. Under ZeRO-2 DeepSpeed copies its saved frozen fragments (rank 0's) over the module after loading
    it, so frozen experts read from this rank's expert files are replaced; the shim puts them back. A world of
    one stands in for rank 1: the fragments hold other values than the expert files."""
    import torch

    from tests.conftest import TINY_QWEN3_5, compose
    from train.engine.deepspeed_setup import build_engine
    from train.models.build import build_hf_config, build_model

    cfg = compose([*TINY_QWEN3_5, "+model.hf_config.text_config.vocab_size=256", "model.lora.enabled=true",
                   "deepspeed=zero2"])
    engine = build_engine(cfg, build_model(cfg.model, build_hf_config(cfg.model), torch.float32, seed=0))
    key = "model.language_model.layers.0.mlp.experts.w1"
    own = torch.randn_like(dict(engine.module.named_parameters())[key])
    module = {k: v.clone() for k, v in engine.module.state_dict().items()}
    module[key] = own
    fragments = {n: p.detach().clone() for n, p in engine.module.named_parameters() if not p.requires_grad}
    checkpoint = {"module": module, "frozen_param_fragments": fragments}
    live = dict(engine.module.named_parameters())[key]

    type(engine).load_module_state_dict.original(engine, checkpoint)
    assert torch.equal(live, fragments[key]) and not torch.equal(live, own)
    engine.load_module_state_dict(checkpoint)
    assert torch.equal(live, own)

"""At init, the AutoEP engine's loss equals transformers' own model with the same weights (<= 1e-5).

Runs in-process with a world of one; the reference is the untouched HF model's own `loss`
(cross entropy + router_aux_loss_coef * its load-balancing loss).
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import TINY_QWEN3_5, compose
from train.engine.losses import moe_losses

QWEN3_5 = [*TINY_QWEN3_5, "+model.hf_config.text_config.vocab_size=256"]
TINY_QWEN3 = ["experiment=ci_tiny", "+model.hf_config.vocab_size=256"]


@pytest.fixture(scope="module", autouse=True)
def _world(world_of_one):
    return world_of_one


@pytest.mark.parametrize("overrides", [TINY_QWEN3, QWEN3_5, [*TINY_QWEN3, "parallel.gate_up_impl=fused"]],
                         ids=["qwen3_moe", "qwen3_5_moe", "qwen3_moe_fused_gate_up"])
def test_init_loss_equals_transformers(overrides):
    from train.engine.deepspeed_setup import build_engine
    from train.models.build import build_hf_config, build_model

    cfg = compose(overrides)
    hf_config = build_hf_config(cfg.model)
    model = build_model(cfg.model, hf_config, torch.float32, seed=0)
    reference = copy.deepcopy(model).eval()
    engine = build_engine(cfg, model)
    engine.eval()
    text = hf_config.get_text_config()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, text.vocab_size, (2, 48), generator=g)
    with torch.no_grad():
        ref = reference(input_ids=ids, labels=ids, output_router_logits=True, use_cache=False)
        out = engine(input_ids=ids, output_router_logits=True, use_cache=False)
    ours = moe_losses(out.logits, ids, out.router_logits, text.num_experts, text.num_experts_per_tok,
                      aux_coef=text.router_aux_loss_coef, z_coef=0.0)
    assert ours.total.item() == pytest.approx(ref.loss.item(), abs=1e-5)
    assert ours.aux.item() == pytest.approx(ref.aux_loss.item(), abs=1e-5)
    assert torch.allclose(out.logits, ref.logits, atol=1e-5)

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


@pytest.mark.parametrize("overrides", [TINY_QWEN3, QWEN3_5], ids=["qwen3_moe", "qwen3_5_moe"])
def test_lm_head_on_labelled_positions_only_gives_transformers_loss_and_gradients(overrides):
    """The loop passes `labelled_logit_positions` as `logits_to_keep`; loss and every gradient must be those of
    transformers' own full-logits loss, with rows that label different spans (as fine-tuning does)."""
    from train.engine.deepspeed_setup import build_engine
    from train.engine.losses import causal_lm_loss, labelled_logit_positions
    from train.models.build import build_hf_config, build_model

    cfg = compose(overrides)
    hf_config = build_hf_config(cfg.model)
    model = build_model(cfg.model, hf_config, torch.float32, seed=0)
    reference = copy.deepcopy(model)
    text = hf_config.get_text_config()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, text.vocab_size, (2, 48), generator=g)
    labels = ids.clone()
    labels[0, :20] = -100
    labels[1, 30:] = -100
    labels[1, 5:9] = -100
    keep = labelled_logit_positions(labels)
    assert int(keep.sum()) == int((labels[:, 1:] != -100).sum()) == 28 + 25

    ref = reference(input_ids=ids, labels=labels, use_cache=False)
    ref.loss.backward()
    out = model(input_ids=ids, logits_to_keep=keep, use_cache=False)
    assert out.logits.shape == (53, text.vocab_size)
    loss = causal_lm_loss(out.logits, labels)
    loss.backward()
    assert loss.item() == pytest.approx(ref.loss.item(), abs=1e-6)
    ref_grads = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        if p.grad is not None or ref_grads[name].grad is not None:
            assert torch.allclose(p.grad, ref_grads[name].grad, atol=1e-6), name

    engine = build_engine(cfg, copy.deepcopy(reference))
    engine.eval()
    with torch.no_grad():
        through_engine = engine(input_ids=ids, logits_to_keep=keep, output_router_logits=True, use_cache=False)
    assert causal_lm_loss(through_engine.logits, labels).item() == pytest.approx(ref.loss.item(), abs=1e-5)

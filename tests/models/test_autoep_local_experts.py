"""Shim 4 (train/models/autoep_local_experts.py): the local expert loop gives the logits, losses and gradients
of DeepSpeed's own AutoEP path up to float32 rounding (bitwise on some CPUs; on an AMD EPYC the GEMM rounds the
unpadded rows one ulp differently), and upstream still pads (when that test fails, reconsider the shim).

The tolerances are a few ulps, far below any real difference: a dropped expert, a wrong routing weight or a
missed gradient changes values at 1e-3 and more.

The reference is the same model through upstream's `AutoEPMoELayer._forward` (`parallel.experts_impl=upstream`),
which tests/engine/test_autoep_matches_transformers.py ties to transformers' own model.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import TINY_QWEN3_5, compose
from train.config import validate
from train.engine.losses import moe_losses
from train.models.autoep_local_experts import use_local_experts

TINY_QWEN3 = ["experiment=ci_tiny", "+model.hf_config.vocab_size=256"]
QWEN3_5 = [*TINY_QWEN3_5, "+model.hf_config.text_config.vocab_size=256"]


@pytest.fixture(scope="module", autouse=True)
def _world(world_of_one):
    return world_of_one


def _loss_and_grads(overrides: list[str], model: torch.nn.Module, ids: torch.Tensor):
    from train.engine.deepspeed_setup import build_engine

    engine = build_engine(compose([*overrides, "deepspeed.zero_stage=0"]), model)
    text = engine.module.config.get_text_config()
    out = engine(input_ids=ids, output_router_logits=True, use_cache=False)
    losses = moe_losses(out.logits, ids, out.router_logits, text.num_experts, text.num_experts_per_tok,
                        aux_coef=text.router_aux_loss_coef, z_coef=0.0)
    engine.backward(losses.total)
    grads = {n: p.grad.clone() for n, p in engine.module.named_parameters() if p.grad is not None}
    return out.logits.detach(), losses.total.detach(), grads, engine


@pytest.mark.parametrize("overrides", [TINY_QWEN3, QWEN3_5], ids=["qwen3_moe", "qwen3_5_moe"])
def test_local_loop_equals_upstream_to_float32_rounding(overrides):
    from deepspeed.module_inject.auto_ep_layer import AutoEPMoELayer

    from train.models.build import build_hf_config, build_model

    cfg = compose(overrides)
    hf_config = build_hf_config(cfg.model)
    model = build_model(cfg.model, hf_config, torch.float32, seed=0)
    twin = copy.deepcopy(model)
    ids = torch.randint(0, hf_config.get_text_config().vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))

    ref_logits, ref_loss, ref_grads, _ = _loss_and_grads([*overrides, "parallel.experts_impl=upstream"], model, ids)
    logits, loss, grads, engine = _loss_and_grads([*overrides, "parallel.experts_impl=local_loop"], twin, ids)

    layers = [m for m in engine.module.modules() if isinstance(m, AutoEPMoELayer)]
    assert layers and all("_forward" in vars(m) for m in layers)  # the local path really ran
    torch.testing.assert_close(logits, ref_logits, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0.0)
    assert grads.keys() == ref_grads.keys()
    assert any(".experts.w1" in n for n in grads)
    unequal = [n for n in grads if not torch.allclose(grads[n], ref_grads[n], rtol=1e-5,
                                                      atol=1e-6 * float(ref_grads[n].abs().max()))]
    assert unequal == []


def test_upstream_still_pads_expert_rows_on_cpu():
    """The CPU cost the shim removes: upstream pads each local expert's rows to a multiple of 8, empty ones too."""
    from deepspeed.module_inject.auto_ep_layer import permute_by_local_expert

    tokens = torch.randn(8, 4)
    permuted, _, aligned_counts, n_tokens = permute_by_local_expert(tokens, torch.tensor([3, 0, 5]))
    assert n_tokens == 8
    assert aligned_counts.tolist() == [8, 8, 8]
    assert permuted.shape[0] > 8


def test_upstream_impl_and_bad_names():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert use_local_experts(model, "upstream") == 0
    with pytest.raises(ValueError, match="parallel.experts_impl='grouped'"):
        use_local_experts(model, "grouped")
    with pytest.raises(ValueError, match="parallel.experts_impl"):
        validate(compose([*TINY_QWEN3, "parallel.experts_impl=grouped"]), world_size=1)
    with pytest.raises(ValueError, match="gate_up_impl=fused"):
        validate(compose([*TINY_QWEN3, "parallel.experts_impl=local_loop", "parallel.gate_up_impl=fused"]),
                 world_size=1)

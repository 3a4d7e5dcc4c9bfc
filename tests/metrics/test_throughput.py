"""Active-parameter FLOPs are checked against the parameters of the real transformers model."""

import pytest

from tests.conftest import compose
from train.metrics.throughput import active_params_per_token, flops_per_token
from train.models.build import build_hf_config, build_model


def _independent_active_params(model, config) -> float:
    text = config.get_text_config()
    frac = text.num_experts_per_tok / text.num_experts
    total = 0.0
    for name, p in model.named_parameters():
        if "embed_tokens" in name or "norm" in name or "visual" in name:
            continue
        total += p.numel() * (frac if ".experts." in name else 1.0)
    return total


def test_qwen3_moe_active_params_match_the_model():
    import torch

    cfg = compose(["experiment=ci_tiny"])
    config = build_hf_config(cfg.model, vocab_size=512)
    model = build_model(cfg.model, config, torch.float32, seed=0)
    assert active_params_per_token(config) == pytest.approx(_independent_active_params(model, config), rel=1e-9)
    assert flops_per_token(config, 64) > 6 * active_params_per_token(config)


def test_qwen3_5_active_params_close_to_the_model():
    import torch

    cfg = compose(["model=qwen3_5_moe_tiny"])
    config = build_hf_config(cfg.model, vocab_size=512)
    model = build_model(cfg.model, config, torch.float32, seed=0)
    # GDN conv and gate vectors are left out of the count: a few tenths of a percent
    assert active_params_per_token(config) == pytest.approx(_independent_active_params(model, config), rel=0.02)

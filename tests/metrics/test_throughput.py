"""Active-parameter FLOPs are checked against the parameters of the real transformers model."""

import pytest

from tests.conftest import compose
from train.engine.losses import causal_lm_loss, labelled_logit_positions
from train.metrics.throughput import active_params_per_token, lm_head_params, training_flops
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
    flops = training_flops(config, 64)
    assert flops.per_logit == 6 * lm_head_params(config)
    assert flops.per_token > 6 * (active_params_per_token(config) - lm_head_params(config))


def test_qwen3_5_active_params_close_to_the_model():
    import torch

    cfg = compose(["model=qwen3_5_moe_tiny"])
    config = build_hf_config(cfg.model, vocab_size=512)
    model = build_model(cfg.model, config, torch.float32, seed=0)
    # GDN conv and gate vectors are left out of the count: a few tenths of a percent
    assert active_params_per_token(config) == pytest.approx(_independent_active_params(model, config), rel=0.02)


def test_lm_head_flops_count_only_the_logits_computed():
    """What dropping unlabelled logits saves, by torch's own FLOP counter over forward and backward, is
    `per_logit` for each row of logits not computed: the MFU the loop logs counts the head where it ran."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    cfg = compose(["experiment=ci_tiny"])
    config = build_hf_config(cfg.model, vocab_size=512)
    model = build_model(cfg.model, config, torch.float32, seed=0)
    ids = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :20] = -100
    labels[1, :9] = -100

    def measured(keep) -> int:
        model.zero_grad()
        with FlopCounterMode(display=False) as counter:
            out = model(input_ids=ids, logits_to_keep=keep)
            causal_lm_loss(out.logits, labels).backward()
        return counter.get_total_flops()

    keep = labelled_logit_positions(labels)
    dropped = ids.numel() - int(keep.sum())
    assert dropped == (19 + 1) + (8 + 1)  # before the first label, and the last position
    saved = measured(0) - measured(keep)
    assert saved == training_flops(config, 32).per_logit * dropped

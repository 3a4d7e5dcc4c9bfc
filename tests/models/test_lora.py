"""LoRA (train/models/lora.py): the engine with adapters equals transformers' own model with the merged weights.

In-process, world of one. The reference is the untouched HF model (copied before the adapters were added) whose
targeted weights get `W + (alpha / r) B A` by hand, expert by expert in HF's fused gate_up_proj/down_proj layout;
the adapters' B are drawn non-zero so the comparison cannot pass with inert adapters.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import TINY_QWEN3_5, compose

LORA = ["model.lora.enabled=true", "model.lora.rank=4", "model.lora.alpha=8"]
QWEN3_5 = [*TINY_QWEN3_5, "+model.hf_config.text_config.vocab_size=256", *LORA]
QWEN3 = ["experiment=ci_tiny", "+model.hf_config.vocab_size=256", *LORA]


@pytest.fixture(scope="module", autouse=True)
def _world(world_of_one):
    return world_of_one


def _randomise_b(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(7)
    for name, p in model.named_parameters():
        if name.endswith(("lora_B", "_B")):
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _merged_reference(reference: torch.nn.Module, lora_model: torch.nn.Module, scale: float) -> None:
    """Add scale * B A into the reference's own (transformers) weights."""
    ref = dict(reference.named_modules())
    with torch.no_grad():
        for name, module in lora_model.named_modules():
            if hasattr(module, "lora_A") and isinstance(module, torch.nn.Linear):
                ref[name].weight += scale * module.lora_B @ module.lora_A
            if name.endswith(".experts_lora"):
                experts = ref[name.rsplit(".", 1)[0] + ".mlp"].experts
                inter = experts.down_proj.shape[2]
                d = {w: scale * torch.bmm(getattr(module, f"{w}_B"), getattr(module, f"{w}_A"))
                     for w in ("w1", "w2", "w3")}
                experts.gate_up_proj[:, :inter] += d["w1"]
                experts.gate_up_proj[:, inter:] += d["w3"]
                experts.down_proj += d["w2"]


@pytest.mark.parametrize("overrides", [QWEN3_5, [*QWEN3, "parallel.experts_impl=upstream"], QWEN3],
                         ids=["qwen3_5_moe_local_loop", "qwen3_moe_upstream", "qwen3_moe_local_loop"])
def test_engine_with_adapters_equals_transformers_with_merged_weights(overrides):
    from train.engine.deepspeed_setup import build_engine
    from train.models.build import build_hf_config, build_model

    cfg = compose(overrides)
    hf_config = build_hf_config(cfg.model)
    no_lora = copy.deepcopy(cfg.model)
    no_lora.lora.enabled = False
    reference = build_model(no_lora, hf_config, torch.float32, seed=0).eval()
    model = build_model(cfg.model, hf_config, torch.float32, seed=0)
    _randomise_b(model)
    _merged_reference(reference, model, cfg.model.lora.alpha / cfg.model.lora.rank)

    engine = build_engine(cfg, model)
    engine.eval()
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = engine(input_ids=ids, use_cache=False).logits
        ref = reference(input_ids=ids, use_cache=False).logits
    assert (ours - ref).abs().max().item() < 1e-5
    untouched = build_model(no_lora, hf_config, torch.float32, seed=0).eval()
    with torch.no_grad():
        assert (untouched(input_ids=ids, use_cache=False).logits - ref).abs().max().item() > 1e-3


def test_only_adapters_train_and_base_weights_stay():
    from train.engine.deepspeed_setup import build_engine
    from train.engine.losses import moe_losses
    from train.models.build import build_hf_config, build_model

    cfg = compose(QWEN3_5)
    hf_config = build_hf_config(cfg.model)
    model = build_model(cfg.model, hf_config, torch.float32, seed=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B", "_A", "_B")) for n in trainable)
    targets = {n.rsplit(".", 2)[-2] for n in trainable if "lora_" in n}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "in_proj_qkv", "in_proj_z", "out_proj"}
    assert not any(n.startswith("model.visual.") for n in trainable)
    assert sum(".experts_lora." in n for n in trainable) == 6 * hf_config.get_text_config().num_hidden_layers

    engine = build_engine(cfg, model)
    base = {n: p.detach().clone() for n, p in engine.module.named_parameters() if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in engine.module.named_parameters() if p.requires_grad}
    assert set(adapters) == trainable
    in_optimizer = {id(p) for group in engine.optimizer.bit16_groups for p in group}  # ZeRO-1's flat groups
    assert in_optimizer == {id(p) for p in engine.module.parameters() if p.requires_grad}
    text = hf_config.get_text_config()
    ids = torch.randint(0, 256, (4, 40), generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        out = engine(input_ids=ids, output_router_logits=True, use_cache=False)
        loss = moe_losses(out.logits, ids, out.router_logits, text.num_experts, text.num_experts_per_tok,
                          aux_coef=0.0, z_coef=0.0).total
        engine.backward(loss)
        engine.step()
    after = dict(engine.module.named_parameters())
    assert all(torch.equal(after[n], t) for n, t in base.items())
    moved = [n for n, t in adapters.items() if not torch.equal(after[n], t)]
    assert any(".experts_lora.w2_B" in n for n in moved) and any("q_proj.lora_B" in n for n in moved)
    assert any("in_proj_qkv.lora_A" in n for n in moved)


def test_trainable_prefixes_train_in_full_beside_the_adapters():
    from train.models.build import build_hf_config, build_model

    cfg = compose([*QWEN3_5, "model.lora.trainable=[model.language_model.embed_tokens.,lm_head.]"])
    model = build_model(cfg.model, build_hf_config(cfg.model), torch.float32, seed=0)
    full = {n for n, p in model.named_parameters() if p.requires_grad and "lora" not in n}
    assert full == {"model.language_model.embed_tokens.weight", "lm_head.weight"}


def test_bad_lora_configs_fail_by_key():
    from train.config import validate
    from train.models.build import build_hf_config, build_model

    with pytest.raises(ValueError, match=r"model.lora.enabled=true needs deepspeed.zero_stage <= 2"):
        validate(compose([*QWEN3_5, "deepspeed=zero3"]))
    with pytest.raises(ValueError, match=r"model.lora.rank=0 must be >= 1"):
        validate(compose([*QWEN3_5, "model.lora.rank=0"]))
    cfg = compose([*QWEN3_5, "model.lora.target_modules=[q_proj,qproj]"])
    with pytest.raises(ValueError, match=r"model.lora.target_modules: \['qproj'\] match no nn.Linear"):
        build_model(cfg.model, build_hf_config(cfg.model), torch.float32, seed=0)
    cfg = compose([*QWEN3_5, "model.lora.trainable=[model.embed_tokens.]"])
    with pytest.raises(ValueError, match=r"model.lora.trainable: .model.embed_tokens.. matches no parameter"):
        build_model(cfg.model, build_hf_config(cfg.model), torch.float32, seed=0)
    with pytest.raises(Exception, match="lora_rank"):
        compose([*QWEN3_5, "model.lora.lora_rank=4"])

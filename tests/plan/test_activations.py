"""The activation model counts what autograd really saves: each formula in train/plan/activations.py against the
bytes `torch.autograd.graph.saved_tensors_hooks` sees for transformers' own modules (and, for the MoE block, the
AutoEP layer in a DeepSpeed engine), deduplicated by storage, parameters and inputs excluded."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3_5MoeTextConfig, Qwen3MoeConfig
from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe as q35
from transformers.models.qwen3_moe import modeling_qwen3_moe as q3

from tests.conftest import TINY_QWEN3_5, compose
from train.plan.activations import (
    Kernels,
    decoder_layer,
    full_attention,
    linear_attention,
    rms_norm,
    router_logits_for_loss,
    shared_expert,
)

CPU = Kernels("cpu", "local_loop", "torch")
B, S = 2, 128


def saved_bytes(fn, inputs: list[torch.Tensor], exclude: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves while `fn()` runs (not those of `exclude` or `inputs`)."""
    skip = {t.untyped_storage().data_ptr() for t in [*inputs, *exclude]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _attention(family: str, dtype: torch.dtype, masked: bool):
    H, nh, nkv, hd = 96, 4, 2, 32
    if family == "qwen3_moe":
        cfg = Qwen3MoeConfig(hidden_size=H, num_attention_heads=nh, num_key_value_heads=nkv, head_dim=hd,
                             num_hidden_layers=1)
        cfg._attn_implementation = "sdpa"
        attn, rot, pos = q3.Qwen3MoeAttention(cfg, 0), q3.Qwen3MoeRotaryEmbedding(cfg), torch.arange(S).expand(B, S)
    else:
        cfg = Qwen3_5MoeTextConfig(hidden_size=H, num_attention_heads=nh, num_key_value_heads=nkv, head_dim=hd,
                                   num_hidden_layers=1, layer_types=["full_attention"])
        cfg._attn_implementation = "sdpa"
        attn, rot = q35.Qwen3_5MoeAttention(cfg, 0), q35.Qwen3_5MoeTextRotaryEmbedding(cfg)
        pos = torch.arange(S).expand(3, B, S)
    attn = attn.to(dtype)
    x = torch.randn(B, S, H, dtype=dtype, requires_grad=True)
    pe = rot(x, pos)
    mask = None
    if masked:  # two documents per row, as packed rows are
        m = torch.ones(S, S, dtype=torch.bool).tril()
        m[S // 2:, : S // 2] = False
        mask = m.expand(B, 1, S, S)
    excluded = [*attn.parameters(), *pe] + ([mask] if mask is not None else [])
    return cfg, (lambda: attn(x, pe, mask)[0]), [x], excluded


@pytest.mark.parametrize("family", ["qwen3_moe", "qwen3_5_moe"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masked", [False, True])
def test_full_attention_counts_what_sdpa_attention_saves(family, dtype, masked):
    cfg, fn, inputs, excluded = _attention(family, dtype, masked)
    e = torch.finfo(dtype).bits // 8
    measured = saved_bytes(fn, inputs, excluded)
    predicted = full_attention(cfg, e, masked, CPU, S) * B * S
    assert predicted == pytest.approx(measured, rel=0.01, abs=64)


@pytest.mark.parametrize("zero_centred", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm(zero_centred, dtype):
    H = 96
    norm = (q35.Qwen3_5MoeRMSNorm(H) if zero_centred else q3.Qwen3MoeRMSNorm(H)).to(dtype)
    x = torch.randn(B, S, H, dtype=dtype, requires_grad=True)
    e = torch.finfo(dtype).bits // 8
    measured = saved_bytes(lambda: norm(x), [x], list(norm.parameters()))
    # the formula counts the fp32 input (the input itself in fp32 runs) and the output, which the next layer saves
    predicted = (rms_norm(H, e, zero_centred) - e * H - (4 * H if dtype == torch.float32 else 0)) * B * S
    assert predicted == pytest.approx(measured, rel=0.01, abs=64 * 4)


@pytest.mark.parametrize("shape", [(64, 1, 2, 64, 64), (64, 1, 2, 32, 64), (64, 2, 4, 16, 48), (96, 1, 4, 32, 32)])
def test_gated_deltanet_torch_fallback(shape):
    H, hk, hv, dk, dv = shape
    cfg = Qwen3_5MoeTextConfig(hidden_size=H, linear_num_key_heads=hk, linear_num_value_heads=hv,
                               linear_key_head_dim=dk, linear_value_head_dim=dv, num_hidden_layers=1,
                               layer_types=["linear_attention"])
    gdn = q35.Qwen3_5MoeGatedDeltaNet(cfg, 0)
    x = torch.randn(B, S, H, requires_grad=True)
    measured = saved_bytes(lambda: gdn(x), [x], list(gdn.parameters()))
    assert linear_attention(cfg, 4, CPU, S) * B * S == pytest.approx(measured, rel=0.03)


def test_shared_expert_mlp():
    cfg = Qwen3_5MoeTextConfig(hidden_size=64, shared_expert_intermediate_size=48, num_hidden_layers=1)
    mlp = q35.Qwen3_5MoeMLP(cfg, intermediate_size=48)
    x = torch.randn(B, S, 64, requires_grad=True)
    measured = saved_bytes(lambda: mlp(x), [x], list(mlp.parameters()))
    # the shared expert's gate (sigmoid output and the gated product) comes on top of the MLP
    assert (shared_expert(cfg, 4) - 4 * 64 - 4) * B * S == measured


@pytest.mark.slow
@pytest.mark.parametrize("model", ["qwen3_moe", "qwen3_5_moe"])
@pytest.mark.parametrize("experts_impl", ["local_loop", "upstream"])
def test_decoder_layers_in_the_engine(world_of_one, model, experts_impl):
    """Whole decoder layers as the DeepSpeed engine runs them (AutoEP MoE block included), per layer type."""
    from train.engine.deepspeed_setup import build_engine
    from train.models.build import build_hf_config, build_model

    overrides = ["experiment=ci_tiny"] if model == "qwen3_moe" else [*TINY_QWEN3_5, "data.packing=per_document"]
    cfg = compose([*overrides, f"parallel.experts_impl={experts_impl}", "data.seq_len=128"])
    hf = build_hf_config(cfg.model, vocab_size=512)
    engine = build_engine(cfg, build_model(cfg.model, hf, torch.float32, 0))
    layers = engine.module.model.language_model.layers if model == "qwen3_5_moe" else engine.module.model.layers
    stack: list[int] = []
    seen: dict[int, tuple[int, int]] = {}
    params = {p.untyped_storage().data_ptr() for p in engine.module.parameters()}
    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda m, a, i=i: stack.append(i))
        layer.register_forward_hook(lambda m, a, o: (stack.pop(), None)[1])

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params and st.data_ptr() not in seen and stack:
            seen[st.data_ptr()] = (stack[-1], st.nbytes())
        return t

    ids = torch.randint(0, 512, (B, S))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        engine(input_ids=ids, use_cache=False, output_router_logits=True)
    text = hf.get_text_config()
    kernels = Kernels("cpu", experts_impl, "torch")
    types = getattr(text, "layer_types", None) or ["full_attention"] * text.num_hidden_layers
    for i, layer_type in enumerate(types):
        measured = sum(n for layer, n in seen.values() if layer == i)
        # the router logits kept for the losses are counted per layer by the plan but saved by the loss; the first
        # layer also sees the rotary tables (left out: i > 0)
        predicted = (decoder_layer(text, layer_type, 4, kernels, S) - router_logits_for_loss(text, 4)) * B * S
        if i > 0:
            assert predicted == pytest.approx(measured, rel=0.05), (i, layer_type)


@pytest.mark.parametrize("experts_impl", ["local_loop", "upstream"])
def test_mtp_module_in_the_engine(world_of_one, experts_impl):
    """The MTP layer, its head and its cross entropy, as the training loss runs them after a trunk forward."""
    from train.engine.deepspeed_setup import build_engine
    from train.engine.mtp_loss import MtpObjective, mtp_targets
    from train.models.build import build_hf_config, build_model
    from train.plan.activations import mtp_logits_row, mtp_module

    cfg = compose([*TINY_QWEN3_5, "data.packing=per_document", "model.mtp_layers=1", "loss.mtp_coef=0.3",
                   f"parallel.experts_impl={experts_impl}", f"data.seq_len={S}"])
    hf = build_hf_config(cfg.model, vocab_size=512)
    engine = build_engine(cfg, build_model(cfg.model, hf, torch.float32, 0))
    objective = MtpObjective(engine.module)
    ids = torch.randint(0, 512, (B, S), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, : S // 4] = -100  # a prompt: no loss there
    before = {p.untyped_storage().data_ptr() for p in engine.module.parameters()}

    def trunk_pack(t):
        before.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(trunk_pack, lambda t: t):
        out = engine(input_ids=ids, use_cache=False, output_router_logits=True)  # its graph kept alive
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in before:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        objective(labels)
    text = hf.get_text_config()
    rows = int((mtp_targets(labels, None) != -100).sum())
    kernels = Kernels("cpu", experts_impl, "torch")
    # as for the trunk's layers, the router logits kept for the losses are counted by the plan, saved by the loss
    predicted = ((mtp_module(text, 4, kernels, S) - router_logits_for_loss(text, 4)) * B * S
                 + mtp_logits_row(text, 4) * rows)
    assert predicted == pytest.approx(sum(seen.values()), rel=0.02)
    assert out.logits.shape == (B, S, 512)

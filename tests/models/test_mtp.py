"""The multi-token prediction module against vLLM's formula written out, its targets, its init and import, and the
same module under AutoEP.

Reference (vLLM `Qwen3_5MultiTokenPredictor.forward`): for a document x_0..x_{n-1} alone, h = the trunk's
last hidden state after its final norm, e = the input embeddings, and for t < n-1
    y_t = norm(layer(fc([zc_norm(e_{t+1}); zc_norm(h_t)]), rotary position t, causal)),  logits_t = lm_head(y_t)
with zc_norm(x) = x * rsqrt(mean(x^2) + eps) * (1 + w) written out here, not taken from the model.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import TINY_QWEN3_5, compose
from tests.export.hf_folders import add_mtp_shard
from train.config import validate
from train.engine.losses import IGNORE_INDEX

VOCAB = 256
QWEN3_5 = [*TINY_QWEN3_5, f"+model.hf_config.text_config.vocab_size={VOCAB}"]
MTP = ["model.mtp_layers=1", "loss.mtp_coef=0.3"]
ALL_FULL = ["model.hf_config.text_config.layer_types=[full_attention,full_attention,full_attention]"]


def _build(overrides: list[str], seed: int = 0):
    from train.models.build import build_hf_config, build_model

    cfg = compose(overrides)
    hf_config = build_hf_config(cfg.model)
    return cfg, build_model(cfg.model, hf_config, torch.float32, seed=seed)


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Distinct values everywhere (zero-initialised norms included), so a misplaced tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g) if p.ndim == 1 else 0.08 * torch.randn(p.shape, generator=g))


def _zc_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + w)


def _reference_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """vLLM's MTP forward for one document alone: [n-1, V], row t predicting token t+2."""
    from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import (
        Qwen3_5MoeDecoderLayer,
        Qwen3_5MoeTextRotaryEmbedding,
    )

    text_cfg = model.config.get_text_config()
    eps = text_cfg.rms_norm_eps
    sd = {k.removeprefix("mtp."): v for k, v in model.state_dict().items() if k.startswith("mtp.")}
    with torch.no_grad():
        h = model.model(input_ids=ids[None], use_cache=False).last_hidden_state[0]
        e = model.model.language_model.embed_tokens(ids)
        x = torch.cat([_zc_norm(e[1:], sd["pre_fc_norm_embedding.weight"], eps),
                       _zc_norm(h[:-1], sd["pre_fc_norm_hidden.weight"], eps)], dim=-1) @ sd["fc.weight"].T
        layer_cfg = copy.deepcopy(text_cfg)
        layer_cfg.layer_types = ["full_attention"]
        layer = Qwen3_5MoeDecoderLayer(layer_cfg, 0)
        layer.load_state_dict({k.removeprefix("layers.0."): v for k, v in sd.items() if k.startswith("layers.0.")})
        positions = torch.arange(x.shape[0])[None]
        rotary = Qwen3_5MoeTextRotaryEmbedding(text_cfg)
        y = layer(x[None], position_embeddings=rotary(x[None], positions), attention_mask=None)[0]
        y = _zc_norm(y, sd["norm.weight"], eps)
        return y @ model.lm_head.weight.T


def _packed(lengths: list[int], pad: int, generator: torch.Generator):
    """One row of packed documents plus padding, as data_pipelines.packing writes it (mRoPE rows for Qwen3.5)."""
    ids = torch.randint(0, VOCAB, (sum(lengths) + pad,), generator=generator)
    positions = torch.cat([torch.arange(n) for n in [*lengths, pad]])
    labels = ids.clone()
    labels[positions == 0] = IGNORE_INDEX  # each document's first token, and the padding's
    labels[sum(lengths):] = IGNORE_INDEX
    return ids[None], positions[None], labels[None]


def test_mtp_forward_on_packed_rows_equals_vllms_formula_per_document():
    from train.engine.mtp_loss import MtpObjective, mtp_targets

    _, model = _build([*QWEN3_5, *ALL_FULL, *MTP])
    _randomise(model, 3)
    lengths, pad = [13, 9, 6], 4
    ids, positions, labels = _packed(lengths, pad, torch.Generator().manual_seed(0))
    objective = MtpObjective(model)
    with torch.no_grad():
        model(input_ids=ids, position_ids=positions[None].expand(4, -1, -1), use_cache=False)
        trunk = objective.tap.pop()
        from train.models.mtp import mtp_logits

        ours = mtp_logits(model, trunk)[0][0]
    start, ref_rows, ref_targets = 0, [], []
    for n in lengths:
        ref = _reference_logits(model, ids[0, start:start + n])
        assert torch.allclose(ours[start:start + n - 1], ref, atol=2e-5), (n, (ours[start:start + n - 1] - ref).abs().max())
        ref_rows.append(ref[:-1])  # the last row's token t+2 is past the document
        ref_targets.append(ids[0, start + 2:start + n])
        start += n
    expected = torch.nn.functional.cross_entropy(torch.cat(ref_rows), torch.cat(ref_targets))
    targets = mtp_targets(labels, positions)
    assert int((targets != IGNORE_INDEX).sum()) == sum(n - 2 for n in lengths)
    with torch.no_grad():
        model(input_ids=ids, position_ids=positions[None].expand(4, -1, -1), use_cache=False)
        terms = objective(labels)
    assert terms.loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert len(terms.router_logits) == 1 and terms.router_logits[0].shape == (ids.numel(), 8)


def test_mtp_reads_the_trunks_merged_image_embeddings():
    """At image placeholder positions the head reads what the trunk read there: the vision tower's features."""
    from data_pipelines.tokenizer import QWEN_SPECIAL_TOKENS
    from train.checkpoint.export_verify import fixed_inputs
    from train.models.mtp import TrunkTap

    cfg, model = _build([*QWEN3_5, *MTP])

    class Tok:
        def __len__(self):
            return VOCAB

        def convert_tokens_to_ids(self, token):
            return QWEN_SPECIAL_TOKENS.index(token)

    for field in ("image_token_id", "vision_start_token_id", "vision_end_token_id"):
        setattr(model.config, field, QWEN_SPECIAL_TOKENS.index({"image_token_id": "<|image_pad|>",
                                                                "vision_start_token_id": "<|vision_start|>",
                                                                "vision_end_token_id": "<|vision_end|>"}[field]))
    batch = fixed_inputs("qwen3_5_moe", Tok())[1]
    tap = TrunkTap(model)
    with torch.no_grad():
        model(**batch, use_cache=False)
    seen = tap.pop().inputs_embeds[0]
    image = batch["mm_token_type_ids"][0].bool()
    plain = model.model.language_model.embed_tokens(batch["input_ids"][0])
    assert torch.equal(seen[~image], plain[~image])
    assert not torch.allclose(seen[image], plain[image])


def test_targets_shift_the_sft_mask_and_stop_at_document_boundaries():
    from train.engine.mtp_loss import mtp_targets

    labels = torch.tensor([[-100, -100, 12, 13, 14, -100, 21, 22, 23, -100, -100]])
    #                          doc 0: 0..4 (prompt, prompt, answer x3)  doc 1: 5..8   padding: 9..10
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1]])
    got = mtp_targets(labels, positions)[0].tolist()
    assert got == [12, 13, 14, -100, -100, 22, 23, -100, -100, -100, -100]
    # one document per row (no position ids): only the shift and the mask
    assert mtp_targets(labels, None)[0].tolist() == [12, 13, 14, -100, 21, 22, 23, -100, -100, -100, -100]


def test_fresh_mtp_is_drawn_after_the_trunk_and_seeded():
    _, plain = _build(QWEN3_5, seed=5)
    _, with_mtp = _build([*QWEN3_5, *MTP], seed=5)
    _, again = _build([*QWEN3_5, *MTP], seed=5)
    trunk = dict(plain.named_parameters())
    names = [n for n, _ in with_mtp.named_parameters()]
    assert [n for n in names if not n.startswith("mtp.")] == list(trunk)
    for name, p in with_mtp.named_parameters():
        if not name.startswith("mtp."):
            assert torch.equal(p, trunk[name]), name
    mtp = dict(with_mtp.mtp.named_parameters())
    assert set(mtp) >= {"fc.weight", "norm.weight", "pre_fc_norm_hidden.weight", "pre_fc_norm_embedding.weight",
                        "layers.0.self_attn.q_proj.weight", "layers.0.mlp.gate.weight",
                        "layers.0.mlp.experts.gate_up_proj", "layers.0.mlp.shared_expert_gate.weight"}
    assert tuple(mtp["fc.weight"].shape) == (64, 128)
    assert float(mtp["norm.weight"].detach().abs().max()) == 0.0  # zero-centred RMSNorm: weight 0 is the identity scale
    assert 0.015 < float(mtp["fc.weight"].detach().std()) < 0.025  # initializer_range 0.02
    for name, p in again.mtp.named_parameters():
        assert torch.equal(p, mtp[name]), name


def _released_folder(tmp_path, mtp: bool = True, drop: str | None = None):
    """A Qwen3.5-MoE folder as released: save_pretrained trunk, plus `mtp.*` with per-expert keys in its own shard."""
    from train.models.hf_adapter import expert_to_hf

    _, model = _build([*QWEN3_5, *MTP], seed=2)
    _randomise(model, 4)
    mtp_module = model.mtp
    del model.mtp
    model.save_pretrained(tmp_path)
    state = {}
    for name, t in mtp_module.state_dict().items():
        if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            continue
        state[f"mtp.{name}"] = t.clone()
    experts = mtp_module.layers[0].mlp.experts
    inter = experts.gate_up_proj.shape[1] // 2
    for e in range(experts.gate_up_proj.shape[0]):
        state.update(expert_to_hf("mtp.layers.0.mlp", e, {"w1": experts.gate_up_proj[e, :inter].clone(),
                                                          "w3": experts.gate_up_proj[e, inter:].clone(),
                                                          "w2": experts.down_proj[e].clone()}))
    if drop:
        state.pop(drop)
    if mtp:
        add_mtp_shard(tmp_path, state)
    return tmp_path, model, mtp_module


@pytest.mark.parametrize(("ep_rank", "ep_size"), [(0, 1), (1, 2)])
def test_init_from_reads_a_released_mtp_module(tmp_path, ep_rank, ep_size):
    folder, _, source = _released_folder(tmp_path)
    _, model = _build([*QWEN3_5, *MTP, f"model.init_from={folder}"])
    got = dict(model.mtp.named_parameters())
    for name, p in source.named_parameters():
        if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            continue
        assert torch.equal(got[name], p), name
    if ep_size == 1:
        assert torch.equal(got["layers.0.mlp.experts.gate_up_proj"], source.layers[0].mlp.experts.gate_up_proj)
    from train.models.build import FAMILIES
    from train.models.hf_import import build_rank_local

    local = build_rank_local(FAMILIES["qwen3_5_moe"][1], model.config, torch.float32, folder, ep_rank, ep_size, 1)
    owned = slice(ep_rank * 8 // ep_size, (ep_rank + 1) * 8 // ep_size)  # this rank's experts of 8
    assert torch.equal(local.mtp.layers[0].mlp.experts.down_proj[owned], source.layers[0].mlp.experts.down_proj[owned])


def test_init_from_without_mtp_starts_the_layer_fresh_and_loads_the_trunk(tmp_path):
    folder, trunk, _ = _released_folder(tmp_path, mtp=False)
    _, model = _build([*QWEN3_5, *MTP, f"model.init_from={folder}"], seed=9)
    _, again = _build([*QWEN3_5, *MTP, f"model.init_from={folder}"], seed=9)  # what another rank builds
    ref, other = dict(trunk.named_parameters()), dict(again.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p, other[name] if name.startswith("mtp.") else ref[name]), name
    assert 0.015 < float(model.mtp.fc.weight.detach().std()) < 0.025
    assert float(model.mtp.norm.weight.detach().abs().max()) == 0.0


def test_init_from_with_an_incomplete_mtp_module_names_the_missing_tensor(tmp_path):
    folder, _, _ = _released_folder(tmp_path, drop="mtp.layers.0.self_attn.k_norm.weight")
    with pytest.raises(ValueError, match=r"not found in the checkpoint: \['mtp\.layers\.0\.self_attn\.k_norm\.weight"):
        _build([*QWEN3_5, *MTP, f"model.init_from={folder}"])


def test_mtp_tensors_without_model_mtp_layers_are_left_for_the_export(tmp_path):
    folder, trunk, _ = _released_folder(tmp_path)
    _, model = _build([*QWEN3_5, f"model.init_from={folder}"])
    assert not hasattr(model, "mtp")
    for name, p in trunk.named_parameters():
        assert torch.equal(dict(model.named_parameters())[name], p), name


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.mtp_layers=2", "loss.mtp_coef=0.3"], r"model.mtp_layers=2 must be 0 or 1"),
    (["model.mtp_layers=1"], r"model.mtp_layers=1 with loss.mtp_coef=0 would carry an MTP layer that never trains"),
    (["loss.mtp_coef=0.3"], r"loss.mtp_coef=0.3 needs model.mtp_layers=1"),
    (["model.mtp_layers=1", "loss.mtp_coef=-1"], r"loss.mtp_coef=-1.0 must be >= 0"),
    (["model.mtp_layers=1", "loss.mtp_coef=0.3", "model.lora.enabled=true"], r"model.lora.enabled=true is not supported"),
    (["model.mtp_layers=1", "loss.mtp_coef=0.3", "deepspeed=zero3"], r"deepspeed.zero_stage=3 is not supported"),
])
def test_bad_mtp_settings_are_refused_by_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate(compose([*QWEN3_5, *overrides]))


def test_mtp_is_refused_for_qwen3_moe():
    with pytest.raises(ValueError, match=r"multi-token prediction is Qwen3.5's \(model.family=qwen3_5_moe\)"):
        validate(compose(["experiment=ci_tiny", *MTP]))


def test_mtp_under_autoep_equals_the_transformers_module(world_of_one):
    """The engine's MTP layer runs through AutoEP (4 MoE layers replaced: 3 trunk + 1 MTP); its loss, router logits
    and gradients equal those of the same module in plain transformers."""
    from deepspeed.module_inject.auto_ep_layer import AutoEPMoELayer

    from train.engine.deepspeed_setup import build_engine
    from train.engine.mtp_loss import MtpObjective

    cfg, model = _build([*QWEN3_5, *MTP])
    _randomise(model.mtp, 6)
    reference = copy.deepcopy(model)
    engine = build_engine(cfg, model)
    assert isinstance(engine.module.mtp.layers[0].mlp, AutoEPMoELayer)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, VOCAB, (2, 40), generator=g)
    labels = ids.clone()
    labels[0, :15] = IGNORE_INDEX  # a prompt without loss, as fine-tuning has
    positions = torch.arange(40)[None, None].expand(4, 2, -1)
    ours, ref = MtpObjective(engine.module), MtpObjective(reference)
    engine.module(input_ids=ids, position_ids=positions, use_cache=False)
    got = ours(labels)
    reference(input_ids=ids, position_ids=positions, use_cache=False)
    want = ref(labels)
    assert got.loss.item() == pytest.approx(want.loss.item(), abs=1e-5)
    assert torch.allclose(got.router_logits[0], want.router_logits[0], atol=1e-5)
    got.loss.backward()
    want.loss.backward()
    theirs = dict(reference.mtp.named_parameters())
    inter = theirs["layers.0.mlp.experts.gate_up_proj"].shape[1] // 2
    expected = {
        "fc.weight": theirs["fc.weight"].grad, "layers.0.self_attn.q_proj.weight":
        theirs["layers.0.self_attn.q_proj.weight"].grad, "pre_fc_norm_hidden.weight":
        theirs["pre_fc_norm_hidden.weight"].grad, "layers.0.mlp.router.gate.weight":
        theirs["layers.0.mlp.gate.weight"].grad,
        "layers.0.mlp.experts.w1": theirs["layers.0.mlp.experts.gate_up_proj"].grad[:, :inter],
        "layers.0.mlp.experts.w2": theirs["layers.0.mlp.experts.down_proj"].grad,
    }
    mine = dict(engine.module.mtp.named_parameters())
    for name, grad in expected.items():
        assert torch.allclose(mine[name].grad, grad, atol=1e-6), name

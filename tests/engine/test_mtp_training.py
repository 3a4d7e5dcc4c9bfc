"""Multi-token prediction through the user-facing commands: EP=2 training, export with verify, import round trip.

  E2  Qwen3.5-MoE + model.mtp_layers=1, EP=2 on 2 processes, ZeRO-2, 3 steps (the MTP MoE block under AutoEP)
  E1  the same global batch on 1 process (EP=1, grad_accum=2)
  X   `torchrun -m train.export ... verify=true export.dtype=float32` from E2's checkpoint
E2's losses and mtp_loss equal E1's (<= 1e-4 relative); the export holds the trained MTP layer under the released
names, `verify` compares the trunk's and the MTP head's logits with the engine's (<= 1e-5); built from the export with
model.mtp_layers=1, the MTP layer equals the checkpoint's tensors exactly (fp32), and transformers loads the export
without it.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from tests.conftest import run_pretrain
from tests.export.hf_folders import CI_TINY_RUN, QWEN3_5, read_all

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

RUN = [o for o in QWEN3_5 if "vocab_size" not in o] + CI_TINY_RUN + [
    "model.mtp_layers=1", "loss.mtp_coef=0.3", "deepspeed=zero2", "trainer.max_steps=3", "logger.log_every=1"]
STEP3 = "checkpoints/step_00000003"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data):
    base = tmp_path_factory.mktemp("mtp")
    e2 = run_pretrain(base / "e2", 2, [*RUN, "parallel.ep_size=2", "trainer.grad_accum_steps=1"], shared_data)
    e1 = run_pretrain(base / "e1", 1, [*RUN, "parallel.ep_size=1", "trainer.grad_accum_steps=2"], shared_data)
    x = run_pretrain(base / "hydra", 2, [f"checkpoint={base / 'e2' / STEP3}", f"out={base / 'export'}",
                                         "export.dtype=float32", "verify=true", "export.verify_atol=1e-5"],
                     shared_data, module="train.export")
    return {"e2": e2, "e1": e1, "export": base / "export", "export_output": x.output, "ckpt": base / "e2" / STEP3}


def test_mtp_moe_layer_runs_under_autoep_and_ep2_matches_ep1(runs):
    assert re.search(r"AutoEP: 4 MoE layers .*, ep_size=2", runs["e2"].output)  # 3 trunk layers + the MTP layer
    ep2, ep1 = runs["e2"].metrics, runs["e1"].metrics
    assert [m["step"] for m in ep2] == [m["step"] for m in ep1] == [1, 2, 3]
    for a, b in zip(ep2, ep1, strict=True):
        for key in ("loss", "lm_loss", "mtp_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (key, a, b)
    assert ep2[-1]["mtp_loss"] < ep2[0]["mtp_loss"]
    assert len(ep2[0]["expert/per_layer"]["load"]) == 4


def test_export_holds_the_trained_mtp_layer_under_released_names(runs):
    tensors = read_all(runs["export"])
    mtp = {n for n in tensors if n.startswith("mtp.")}
    expected = {"mtp.fc.weight", "mtp.norm.weight", "mtp.pre_fc_norm_hidden.weight", "mtp.pre_fc_norm_embedding.weight",
                "mtp.layers.0.input_layernorm.weight", "mtp.layers.0.post_attention_layernorm.weight",
                "mtp.layers.0.mlp.gate.weight", "mtp.layers.0.mlp.shared_expert_gate.weight",
                *(f"mtp.layers.0.self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm",
                                                                 "k_norm")),
                *(f"mtp.layers.0.mlp.shared_expert.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")),
                *(f"mtp.layers.0.mlp.experts.{e}.{p}.weight" for e in range(8)
                  for p in ("gate_proj", "up_proj", "down_proj"))}
    assert mtp == expected
    assert tuple(tensors["mtp.fc.weight"].shape) == (64, 128)
    trunk = {n.removeprefix("model.language_model.") for n in tensors if n.startswith("model.language_model.layers.1.")}
    assert {n.removeprefix("mtp.") for n in mtp if n.startswith("mtp.layers.0.")} == {
        n.replace("layers.1.", "layers.0.", 1) for n in trunk}  # the same layer as the trunk's full-attention one
    config = json.loads((runs["export"] / "config.json").read_text())
    assert config["text_config"]["mtp_num_hidden_layers"] == 1
    assert json.loads((runs["export"] / "export_source.json").read_text())["mtp"] == "trained"


def test_verify_compares_the_mtp_heads_logits_too(runs):
    m = re.search(r"verify: max \|logit difference\| export vs training model = (\S+)", runs["export_output"])
    assert m and float(m.group(1)) <= 1e-5, runs["export_output"][-3000:]


def test_import_of_the_export_is_the_checkpoints_mtp_layer_exactly(runs):
    from tests.conftest import compose
    from train.checkpoint.ds_checkpoint_reader import DeepSpeedCheckpointReader
    from train.models.build import build_hf_config, build_model
    from train.models.hf_adapter import to_hf

    cfg = compose([*RUN, f"model.init_from={runs['export']}"])
    model = build_model(cfg.model, build_hf_config(cfg.model), torch.float32, seed=0)
    got = dict(model.named_parameters())
    reader = DeepSpeedCheckpointReader(runs["ckpt"])
    compared = 0
    for name in reader.dense_names():
        hf = to_hf(name)
        if hf is not None and hf.startswith("mtp."):
            assert torch.equal(got[hf], reader.read(name).float()), hf
            compared += 1
    layer = next(layer for layer in reader.moe_layers() if layer.module_path.startswith("mtp."))
    gate_up = got["mtp.layers.0.mlp.experts.gate_up_proj"]
    for e in range(layer.num_experts):
        w = reader.read_expert(layer, e)
        assert torch.equal(gate_up[e], torch.cat([w["w1"], w["w3"]]).float()), e
        assert torch.equal(got["mtp.layers.0.mlp.experts.down_proj"][e], w["w2"].float()), e
    assert compared == 17


def test_transformers_loads_the_export_without_the_mtp_layer(runs):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(runs["export"])
    assert not any(n.startswith("mtp.") for n, _ in model.named_parameters())

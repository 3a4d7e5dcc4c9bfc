"""Qwen3.5-MoE on text-only data: the vision tower is frozen, so ZeRO-3 trains and exports it like ZeRO-1.

  Z1  tiny Qwen3.5-MoE, generated text (no image), EP=2 on 2 processes, ZeRO-1, 3 steps, a checkpoint every step
  Z3  the same with ZeRO-3
  X1, X3  `torchrun -m train.export ... verify=true export.dtype=float32` of each run's step-3 checkpoint
  R1  a copy of Z1 resumed on 1 process at EP=1 for a 4th step (through a universal checkpoint)
Before, the vision tower got zero gradients taken outside any module's forward (`touch_unused`): ZeRO-3's backward
failed (`0 != 64 Cannot reduce scatter gradients whose size is not same as the params`), and under ZeRO-1/2 AdamW's
weight decay shrank the unused tower every step. And the ZeRO-3 checkpoint reader skipped frozen parameters, so the
export lacked them (117 of 150 tensors; `verify` caught it by the logits).
"""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.conftest import run_pretrain
from tests.export.hf_folders import CI_TINY_RUN, QWEN3_5, read_all

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

RUN = [o for o in QWEN3_5 if "vocab_size" not in o] + CI_TINY_RUN + [
    "parallel.ep_size=2", "trainer.max_steps=3", "trainer.checkpoint_every=1", "trainer.keep_last=3",
    "logger.log_every=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data):
    base = tmp_path_factory.mktemp("text_only_vision")
    out = {}
    for zero in (1, 3):
        out[f"z{zero}"] = run_pretrain(base / f"z{zero}", 2, [*RUN, f"deepspeed=zero{zero}"], shared_data)
        out[f"x{zero}"] = run_pretrain(
            base / f"hydra{zero}", 2, [f"checkpoint={base / f'z{zero}' / 'checkpoints/step_00000003'}",
                                       f"out={base / f'export{zero}'}", "export.dtype=float32", "verify=true",
                                       "export.verify_atol=1e-5"], shared_data, module="train.export")
        out[f"export{zero}"] = base / f"export{zero}"
    shutil.copytree(base / "z1", base / "r1")
    out["r1"] = run_pretrain(base / "r1", 1, [*RUN, "deepspeed=zero1", "parallel.ep_size=1",
                                               "trainer.grad_accum_steps=2", "trainer.max_steps=4"], shared_data)
    return out


def test_zero3_trains_a_text_only_qwen3_5_as_zero1_does(runs):
    z1, z3 = runs["z1"].metrics, runs["z3"].metrics
    assert [m["step"] for m in z3] == [1, 2, 3]
    for a, b in zip(z1, z3, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a["step"], a["loss"], b["loss"])
    assert z3[-1]["lm_loss"] < z3[0]["lm_loss"]


def test_the_vision_tower_is_frozen_and_kept_as_initialised(runs):
    from train.checkpoint.ds_checkpoint_reader import DeepSpeedCheckpointReader

    for zero in (1, 3):
        assert "the training data has no images: model.frozen=['model.visual.']" in runs[f"z{zero}"].output
        ckpts = runs[f"z{zero}"].run_dir / "checkpoints"
        first = DeepSpeedCheckpointReader(ckpts / "step_00000001")
        last = DeepSpeedCheckpointReader(ckpts / "step_00000003")
        vision = [n for n in first.dense_names() if ".visual." in f".{n}"]
        assert len(vision) == 33 and set(vision) <= set(last.dense_names())
        for name in vision:  # no weight decay on a tower that saw no image
            assert torch.equal(first.read(name), last.read(name)), (zero, name)
        text = "model.language_model.layers.0.input_layernorm.weight"
        assert not torch.equal(first.read(text), last.read(text))


def test_zero3_export_holds_every_tensor_and_verifies(runs):
    for zero in (1, 3):
        assert "verify: max |logit difference| export vs training model" in runs[f"x{zero}"].output
    one, three = read_all(runs["export1"]), read_all(runs["export3"])
    assert set(one) == set(three) and len(three) == 150
    for name in one:
        if ".visual." in f".{name}":
            assert torch.equal(one[name], three[name]), name


def test_a_resharded_resume_keeps_the_tower_frozen(runs):
    from train.checkpoint.ds_checkpoint_reader import DeepSpeedCheckpointReader

    assert "loading through a universal checkpoint" in runs["r1"].output
    ckpts = runs["r1"].run_dir / "checkpoints"
    before, after = DeepSpeedCheckpointReader(ckpts / "step_00000003"), DeepSpeedCheckpointReader(ckpts / "step_00000004")
    vision = [n for n in before.dense_names() if ".visual." in f".{n}"]
    assert len(vision) == 33
    assert all(torch.equal(before.read(n), after.read(n)) for n in vision)
    assert sum(not torch.equal(before.read(n), after.read(n)) for n in before.dense_names()) > 0

"""experiment=pretrain_mm_tiny trains the tiny Qwen3.5-MoE on generated text + images, and says how it packs."""

from __future__ import annotations

import math

import pytest

from tests.conftest import run_pretrain

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def test_pretrain_mm_tiny_runs_on_text_and_images(tmp_path, shared_data):
    small = ["experiment=pretrain_mm_tiny", "data.num_documents=300", "data.num_images=120", "data.seq_len=128",
             "trainer.max_steps=4", "trainer.micro_batch_size=2", "logger.log_every=1", "logger.wandb_mode=disabled",
             "logger.progress=false", "model.hf_config.text_config.hidden_size=64",
             "model.hf_config.text_config.num_experts=8", "model.hf_config.vision_config.out_hidden_size=64"]
    run = run_pretrain(tmp_path / "mm", 1, small, shared_data, timeout=600)
    losses = run.losses()
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(v) for v in losses.values())
    assert "packing mode: per_document" in run.output
    assert "bad input: none" in run.output


def test_frozen_vision_tower_stays_put_while_the_language_model_trains(tmp_path, shared_data):
    import torch

    small = ["experiment=pretrain_mm_tiny", "data.num_documents=300", "data.num_images=120", "data.seq_len=128",
             "trainer.max_steps=4", "trainer.micro_batch_size=2", "trainer.checkpoint_every=2", "trainer.keep_last=2",
             "logger.wandb_mode=disabled", "logger.progress=false", "model.hf_config.text_config.hidden_size=64",
             "model.hf_config.text_config.num_experts=8", "model.hf_config.vision_config.out_hidden_size=64",
             "model.frozen=[model.visual.]"]
    run = run_pretrain(tmp_path / "mm", 1, small, shared_data, timeout=600)
    assert "froze" in run.output and "model.visual." in run.output

    def module(step: int) -> dict:
        path = tmp_path / "mm" / "checkpoints" / f"step_{step:08d}" / "mp_rank_00_model_states.pt"
        return torch.load(path, map_location="cpu", weights_only=False)["module"]

    early, late = module(2), module(4)
    vision = [k for k in early if ".visual." in f".{k}"]
    text = [k for k in early if "embed_tokens" in k or "lm_head" in k]
    assert vision and text
    assert all(torch.equal(early[k], late[k]) for k in vision)
    assert all(not torch.equal(early[k], late[k]) for k in text)
    # The export's verification rebuilds the training engine: it must freeze the same parameters, or the ZeRO
    # optimizer layout differs from the checkpoint's and DeepSpeed refuses to load it.
    export = run_pretrain(tmp_path / "export_hydra", 1, [f"checkpoint={tmp_path / 'mm' / 'checkpoints' / 'step_00000004'}",
                                                         f"out={tmp_path / 'export'}", "export.dtype=float32",
                                                         "verify=true"], shared_data, module="train.export")
    assert "max |logit difference|" in export.output


def test_a_frozen_prefix_that_matches_nothing_is_refused_by_name():
    from torch import nn

    from train.models.build import set_trainable

    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"model.frozen: 'model.visual.' matches no parameter"):
        set_trainable(model, ["model.visual."], False, "model.frozen")
    assert set_trainable(model, ["0.w"], False, "model.frozen") == 4
    assert not model[0].weight.requires_grad and model[0].bias.requires_grad

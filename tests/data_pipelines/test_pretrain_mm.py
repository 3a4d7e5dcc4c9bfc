"""experiment=pretrain_mm_tiny trains the tiny Qwen3.5-MoE on generated text + images, and says how it packs."""

from __future__ import annotations

import math

import pytest

from tests.conftest import run_pretrain

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def test_pretrain_mm_tiny_runs_on_text_and_images(tmp_path, shared_data):
    small = ["experiment=pretrain_mm_tiny", "data.num_documents=300", "data.num_images=120", "data.seq_len=96",
             "trainer.max_steps=4", "trainer.micro_batch_size=2", "logger.log_every=1", "logger.wandb_mode=disabled",
             "logger.progress=false", "model.hf_config.text_config.hidden_size=64",
             "model.hf_config.text_config.num_experts=8", "model.hf_config.vision_config.out_hidden_size=64"]
    run = run_pretrain(tmp_path / "mm", 1, small, shared_data, timeout=600)
    losses = run.losses()
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(v) for v in losses.values())
    assert "packing mode: per_document" in run.output
    assert "bad input: none" in run.output

"""`frozen_for_text_only`: which runs get the vision tower frozen, and the planner sees what the run does."""

from __future__ import annotations

import pytest

from tests.conftest import TINY_QWEN3_5, compose
from train.models.build import frozen_for_text_only


@pytest.mark.parametrize(("overrides", "has_images", "expected"), [
    ([], False, ["model.visual."]),
    (["model.frozen=[model.language_model.embed_tokens.]"], False,
     ["model.language_model.embed_tokens.", "model.visual."]),
    ([], True, None),  # images in the data: the tower trains
    (["model.frozen=[model.visual.]"], False, None),  # already frozen
    (["model.frozen=[model.]"], False, None),  # covered by a shorter prefix
    (["model.freeze_vision_without_images=false"], False, None),  # the escape hatch
    (["model.lora.enabled=true"], False, None),  # LoRA freezes every base weight anyway
])
def test_which_qwen3_5_runs_freeze_the_vision_tower(overrides, has_images, expected):
    assert frozen_for_text_only(compose([*TINY_QWEN3_5, *overrides]).model, has_images) == expected


def test_qwen3_has_no_vision_tower_to_freeze():
    assert frozen_for_text_only(compose(["experiment=ci_tiny"]).model, False) is None


def test_the_plan_of_a_text_only_run_trains_no_vision_parameter():
    from train.plan.planner import make_plan

    base = ["model=qwen3_5_35b_a3b", "cluster=h200", "data.seq_len=4096", "parallel.ep_size=8"]
    text = make_plan(compose(base), 8, suggest=False)
    kept = make_plan(compose([*base, "model.freeze_vision_without_images=false"]), 8, suggest=False)
    assert text.summary["parameters"] == kept.summary["parameters"]
    states = ("fp32 master weights", "Adam moments")
    # the tower's parameters keep no fp32 master or Adam moments (12 bytes each, ZeRO-1-partitioned over 8 ranks)
    vision = text.summary["per_rank_parameters"]["vision"]
    assert vision == pytest.approx(0.447e9, rel=0.01)
    saved = sum(kept.memory.states[k] - text.memory.states[k] for k in states)
    assert saved == pytest.approx(12 * vision / 8, rel=1e-6)


@pytest.mark.parametrize(("overrides", "has_images", "refused"), [
    (["deepspeed=zero3"], True, True),
    (["deepspeed=zero3", "model.frozen=[model.visual.]"], True, False),  # the tower frozen: fine
    (["deepspeed=zero3"], False, False),  # text only: the run freezes it
    (["deepspeed=zero2"], True, False),
])
def test_zero3_with_images_needs_the_tower_frozen(overrides, has_images, refused):
    from train.models.build import check_zero3_vision

    cfg = compose([*TINY_QWEN3_5, *overrides])
    if refused:
        with pytest.raises(ValueError, match=r"deepspeed.zero_stage=3 with images .* model.frozen=\[model.visual.\]"):
            check_zero3_vision(cfg.model, cfg.deepspeed.zero_stage, has_images)
    else:
        check_zero3_vision(cfg.model, cfg.deepspeed.zero_stage, has_images)

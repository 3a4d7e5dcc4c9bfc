"""The export entry config composes, and bad values fail naming the key before any work."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tests.conftest import compose
from train.config import validate_export


def test_export_config_composes_with_defaults(tmp_path):
    cfg = compose([f"checkpoint={tmp_path}", "out=exports/x"], config_name="export")
    validate_export(cfg)
    assert cfg.export.dtype == "bfloat16" and cfg.verify is False


@pytest.mark.parametrize("override, message", [
    ("export.dtype=int8", "export.dtype='int8' is not one of"),
    ("export.max_shard_size_mb=0", "export.max_shard_size_mb=0 must be >= 1"),
])
def test_bad_export_values_name_the_key(tmp_path, override, message):
    cfg = compose([f"checkpoint={tmp_path}", "out=exports/x", override], config_name="export")
    with pytest.raises(ValueError, match=message):
        validate_export(cfg)


def test_missing_checkpoint_dir_is_named():
    cfg = compose(["checkpoint=/no/such/ckpt", "out=exports/x"], config_name="export")
    with pytest.raises(ValueError, match="checkpoint='/no/such/ckpt': no such directory"):
        validate_export(cfg)


def test_damaged_checkpoint_is_named_before_anything_is_unpickled(tmp_path):
    from train.checkpoint.hf_export import open_source
    from train.checkpoint.manifest import build_manifest, write_manifest

    step = tmp_path / "run" / "checkpoints" / "step_00000001"
    step.mkdir(parents=True)
    victim = step / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(4)}}, victim)
    write_manifest(step, build_manifest(step, exclude=set()))
    (step / "COMPLETE").write_text("ok\n")
    (step / "meta.json").write_text(json.dumps({"step": 1, "family": "qwen3_moe"}))
    (tmp_path / "run" / "config.json").write_text("{}")
    (tmp_path / "run" / "tokenizer").mkdir()
    (tmp_path / "run" / "tokenizer" / "tokenizer_config.json").write_text("{}")
    assert open_source(step).ckpt_dir == step.resolve()
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"is damaged:\n  {re.escape(str(victim))}: sha256 differs"):
        open_source(step)


def test_the_plan_a_run_records_beside_its_config_is_not_read_as_config(tmp_path):
    """train.pretrain writes train.plan's prediction into config.json under `plan`; verify=true merges the run's
    config into PretrainConfig, where `plan` is no key."""
    from omegaconf import OmegaConf

    from train.checkpoint.hf_export import open_source
    from train.config import PretrainConfig, to_container
    from train.plan.planner import make_plan

    cfg = compose(["experiment=ci_tiny"])
    step = tmp_path / "run" / "checkpoints" / "step_00000001"
    step.mkdir(parents=True)
    (step / "COMPLETE").write_text("ok\n")
    (step / "meta.json").write_text(json.dumps({"step": 1, "family": "qwen3_moe"}))
    recorded = {**to_container(cfg), "plan": make_plan(cfg, 1, suggest=False).as_dict()}
    (tmp_path / "run" / "config.json").write_text(json.dumps(recorded))
    (tmp_path / "run" / "tokenizer").mkdir()
    (tmp_path / "run" / "tokenizer" / "tokenizer_config.json").write_text("{}")
    source = open_source(step, check_files=False)
    assert "plan" not in source.run_config and source.run_config["model"] == recorded["model"]
    merged = OmegaConf.merge(OmegaConf.structured(PretrainConfig), source.run_config)
    assert merged.trainer.max_steps == cfg.trainer.max_steps

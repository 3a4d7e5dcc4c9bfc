"""Every config group composes; typos, wrong types and bad values fail at start-up naming the key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from tests.conftest import CONFIGS, ROOT, compose
from train.config import validate
from train.models.build import build_hf_config

GROUPS = ["model", "deepspeed", "parallel", "optim", "loss", "data", "logger", "trainer", "paths", "cluster"]
# Scale-plan rows (they set a GPU cluster) are validated at their own world size with their checkpoint and data in
# place by tests/plan/test_scale_plan.py.
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml") if "override /cluster" not in p.read_text())


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes(group):
    for option in sorted(p.stem for p in (CONFIGS / group).glob("*.yaml")):
        cfg = compose([f"{group}={option}"])
        assert cfg[group] is not None


@pytest.fixture(scope="module")
def small_world(tmp_path_factory) -> str:
    """The commerce-world files the demo experiments read, at a small size."""
    out = tmp_path_factory.mktemp("world") / "commerce_world"
    subprocess.run([sys.executable, "-m", "data_pipelines.commerce_world", f"out={out}", "train_dialogs=20",
                    "validation_dialogs=5", "test_scenarios=3"], cwd=ROOT, check=True, capture_output=True)
    return str(out)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment, small_world, tmp_path):
    overrides = [f"experiment={experiment}", f"paths.world_dir={small_world}"]
    if experiment.startswith("sft"):  # fine-tuning starts from a model folder: its config.json is enough here
        build_hf_config(compose(["model=qwen3_5_moe_tiny"]).model, vocab_size=512).save_pretrained(tmp_path)
        overrides.append(f"model.init_from={tmp_path}")
    cfg = compose(overrides)
    validate(cfg, world_size=2)
    build_hf_config(cfg.model)


@pytest.mark.parametrize("model", sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml")))
def test_every_model_config_builds_a_transformers_config(model):
    config = build_hf_config(compose([f"model={model}"]).model, vocab_size=1024)
    text = config.get_text_config()
    assert text.num_experts >= 8 and text.num_experts_per_tok >= 2


def test_real_size_shapes():
    q3 = build_hf_config(compose(["model=qwen3_30b_a3b"]).model).get_text_config()
    assert (q3.hidden_size, q3.num_hidden_layers, q3.num_experts, q3.num_experts_per_tok, q3.head_dim) == \
        (2048, 48, 128, 8, 128)
    big = build_hf_config(compose(["model=qwen3_5_397b_a17b"]).model).get_text_config()
    assert (big.hidden_size, big.num_hidden_layers, big.num_experts, big.num_experts_per_tok) == (4096, 60, 512, 10)
    assert big.layer_types.count("full_attention") == 15


def test_tiny_qwen3_5_gdn_head_dims_serve_on_vllm_cpu():
    text = build_hf_config(compose(["model=qwen3_5_moe_tiny"]).model).get_text_config()
    assert text.linear_key_head_dim in (64, 128) and text.linear_value_head_dim in (64, 128)
    assert "linear_attention" in text.layer_types


def test_typo_in_a_schema_key_fails_naming_it():
    with pytest.raises(ConfigCompositionException) as e:
        compose(["trainer.max_stpes=3"])
    assert "max_stpes" in str(e.value.__cause__ or e.value)


def test_wrong_type_fails_naming_the_key():
    with pytest.raises(ConfigCompositionException) as e:
        compose(["trainer.max_steps=many"])
    assert "max_steps" in str(e.value.__cause__ or e.value)


def test_typo_in_hf_config_fails_naming_it():
    cfg = compose(["+model.hf_config.hiden_size=3"])
    with pytest.raises(ValueError, match=r"model\.hf_config\.hiden_size: not a field of Qwen3MoeConfig"):
        build_hf_config(cfg.model)


def test_nested_hf_config_typo_fails_naming_it():
    cfg = compose(["model=qwen3_5_moe_tiny", "+model.hf_config.text_config.num_expert=3"])
    with pytest.raises(ValueError, match=r"model\.hf_config\.text_config\.num_expert: not a field"):
        build_hf_config(cfg.model)


def test_qwen3_5_ties_from_the_top_level_key_and_a_text_only_tie_is_refused():
    """transformers' Qwen3.5-MoE reads only the top-level key: a tie set in text_config alone would train untied."""
    import transformers

    tied = ["model=qwen3_5_moe_tiny", "+model.hf_config.tie_word_embeddings=true",
            "model.hf_config.text_config.tie_word_embeddings=true"]
    hf = build_hf_config(compose(tied).model, vocab_size=256)
    assert hf.tie_word_embeddings and hf.get_text_config().tie_word_embeddings
    model = transformers.Qwen3_5MoeForConditionalGeneration(hf)
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    cfg = compose(["model=qwen3_5_moe_tiny", "model.hf_config.text_config.tie_word_embeddings=true"])
    with pytest.raises(ValueError, match=r"text_config\.tie_word_embeddings=True but model\.hf_config\."
                                         r"tie_word_embeddings=False"):
        build_hf_config(cfg.model)


@pytest.mark.parametrize("override,message", [
    ("deepspeed.zero_stage=4", "deepspeed.zero_stage=4 is not one of"),
    ("parallel.ep_size=3", "parallel.ep_size=3 does not divide the world size 2"),
    ("logger.wandb_mode=loud", "logger.wandb_mode='loud' is not one of"),
    ("loss.balance=global", "loss.balance='global' is not one of \\['micro_batch', 'global_batch'\\]"),
    ("model.init_from=/no/such/model", "model.init_from='/no/such/model': no such directory"),
    ("model.trust_remote_code=true", "model.trust_remote_code=true is refused"),
    ("trainer.micro_batch_size=0", "trainer.micro_batch_size=0 must be >= 1"),
    ("data.length_group_steps=-1", "data.length_group_steps=-1 must be >= 0"),
    ("data.validation_fraction=1.5", "data.validation_fraction=1.5 must be in"),
    ("data.validation_max_batches=0", "data.validation_max_batches=0 must be >= 1"),
    ("trainer.eval_every=-1", "trainer.eval_every=-1 must be >= 0"),
    ("trainer.eval_every=50", "trainer.eval_every=50 needs held-out data"),
])
def test_bad_values_fail_validation(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate(compose([override]), world_size=2)


@pytest.mark.parametrize("overrides,message", [
    (["trainer.eval_every=15", "data.validation_fraction=0.1"],
     "trainer.eval_every=15 must be a multiple of logger.log_every=10"),
    (["data.validation=[{kind:chat,path:x.jsonl}]"], "data.validation[0].kind='chat': data.kind=text reads text"),
    (["data.validation=[{kind:text,path:/no/such.jsonl}]", "data.source=files", "data.paths=[pyproject.toml]"],
     "data.validation[0].path='/no/such.jsonl' does not exist"),
    (["data.validation=[{kind:text,path:x.jsonl,name:'a/b'}]"], "data.validation[0].name='a/b': letters"),
])
def test_bad_validation_settings_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        validate(compose(overrides), world_size=1)


def test_validation_keys_are_typed():
    with pytest.raises(ConfigCompositionException) as err:
        compose(["data.validaton_fraction=0.1"])
    assert "validaton_fraction" in str(err.value.__cause__ or err.value)
    with pytest.raises(ConfigCompositionException) as err:
        compose(["data.validation=[{kind:text,path:x.jsonl,weigth:2}]"])
    assert "weigth" in str(err.value.__cause__ or err.value)


def test_length_grouping_of_a_stream_is_refused():
    with pytest.raises(ValueError, match="data.length_group_steps needs map-style data"):
        validate(compose(["data.length_group_steps=16", "data.streaming=true"]), world_size=1)


def test_init_from_without_config_json(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        validate(compose([f"model.init_from={tmp_path}"]), world_size=1)


def test_init_from_family_mismatch(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    cfg = compose([f"model.init_from={tmp_path}"])
    with pytest.raises(ValueError, match="model_type 'llama' does not match model.family='qwen3_moe'"):
        build_hf_config(cfg.model)


@pytest.mark.parametrize("override,expected", [
    ("trainer.max_stpes=3", "Key 'max_stpes' not in 'TrainerConfig'"),
    ("model.init_from=/no/such/model", "model.init_from='/no/such/model': no such directory"),
])
def test_cli_fails_fast_before_any_process_group(tmp_path, override, expected):
    proc = subprocess.run([sys.executable, "-m", "train.pretrain", override, f"hydra.run.dir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert expected in proc.stderr
    assert "init_distributed" not in proc.stderr and "deepspeed" not in proc.stderr.lower()
    assert not Path(tmp_path, "checkpoints").exists()

"""Every row of the scale plan is an experiment file that composes, passes validate() at its own world size
(its released checkpoint and data in place) and fits by train.plan; the page lists every file."""

from __future__ import annotations

import json

import pytest

from tests.conftest import CONFIGS, compose
from train.config import validate
from train.models.build import build_hf_config
from train.plan.planner import make_plan
from train.plan.scale import DOC, MODELS, row_name

SCALE = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml") if "override /cluster" in p.read_text())


def test_the_scale_plan_has_its_experiment_files():
    assert len(SCALE) >= 27
    names = {row_name(m, t, n, g) for m in MODELS for t in __import__("train.plan.scale", fromlist=["TASKS"]).TASKS
             for n in (1, 4, 16) for g in ("h200", "h100")}
    assert set(SCALE) <= names
    doc = DOC.read_text()
    for name in SCALE:
        assert f"`{name}`" in doc, name
    assert "qwen3_5_397b_cpt_16x8" in SCALE


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A root folder with the released checkpoints' config.json under models/ and data under data/."""
    root = tmp_path_factory.mktemp("scale_root")
    for model in MODELS:
        folder = root / "models" / model.hf_name
        build_hf_config(compose([f"model={model.group}"]).model).save_pretrained(folder)
    for sub in ("cpt/text", "cpt/image_text", "sft"):
        (root / "data" / sub).mkdir(parents=True)
        (root / "data" / sub / "part-0.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    return root


@pytest.mark.parametrize("name", SCALE)
def test_each_row_composes_validates_at_its_world_size_and_fits(name, root):
    config = "sft" if "_sft_" in name else "pretrain"
    cfg = compose([f"experiment={name}", f"paths.root_dir={root}"], config_name=config)
    world = cfg.cluster.nodes * cfg.cluster.gpus_per_node
    assert name.split("_")[-1 if not name.endswith("h100") else -2] == f"{cfg.cluster.nodes}x8"
    validate(cfg, world_size=world)
    plan = make_plan(cfg, world, suggest=False)
    assert plan.fits, (name, plan.memory.total / 2**30)
    assert cfg.cluster.gpu in name or cfg.cluster.gpu == "h200"

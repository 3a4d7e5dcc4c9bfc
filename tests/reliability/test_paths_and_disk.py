"""Paths from data and configs cannot escape their declared roots; a full disk during a checkpoint save gives a
clear error naming the folder, keeps earlier checkpoints intact and leaves no partial checkpoint behind."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from PIL import Image

from data_pipelines.bad_input import BadRecord
from data_pipelines.encode import Encoder, EncodeSpec
from data_pipelines.images import ImageSpec
from data_pipelines.tokenizer import train_bpe_tokenizer
from tests.conftest import compose, run_pretrain
from train.checkpoint.manifest import verify_manifest
from train.config import validate

SPEC = ImageSpec(min_pixels=32 * 32, max_pixels=64 * 64, max_source_pixels=200 * 200)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    base = tmp_path_factory.mktemp("roots")
    root = base / "images"
    root.mkdir()
    Image.new("RGB", (40, 40)).save(root / "ok.png")
    Image.new("RGB", (40, 40)).save(base / "secret.png")
    os.symlink(base / "secret.png", root / "link.png")
    tok = train_bpe_tokenizer([f"a photo {i} of tea" for i in range(100)], 300, base / "tok")
    return root, Encoder(tok, EncodeSpec(kind="image_text", seq_len=256, image_root=str(root), image=SPEC))


@pytest.mark.parametrize("ref", ["../secret.png", "link.png", "/etc/passwd", "sub/../../secret.png"])
def test_image_paths_cannot_escape_image_root(images, ref):
    _, encode = images
    with pytest.raises(BadRecord, match=r"data\.jsonl:3: image path escapes image_root: .* outside image_root="):
        encode(json.dumps({"image": ref, "text": "a photo"}), "data.jsonl:3")


def test_image_paths_inside_image_root_are_read(images):
    root, encode = images
    for ref in ("ok.png", str(root / "ok.png"), "./ok.png"):
        (sample,) = encode(json.dumps({"image": ref, "text": "a photo"}), "data.jsonl:1")
        assert sample["images"] and os.path.realpath(sample["images"][0]) == str((root / "ok.png").resolve())


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ""])
def test_run_name_cannot_escape_runs_dir(name):
    with pytest.raises(ValueError, match="must be a plain folder name"):
        validate(compose([f"run_name={name}" if name else "run_name=''"]), world_size=1)


@pytest.mark.slow
def test_full_disk_during_save_names_the_folder_and_keeps_earlier_checkpoints(tmp_path, shared_data):
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    ckpts.mkdir(parents=True)
    # one ci_tiny checkpoint is ~3.1 MiB: the first fits, the second does not
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(ckpts)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        r = run_pretrain(run_dir, 1, ["experiment=ci_tiny", "trainer.max_steps=6", "trainer.checkpoint_every=2",
                                      "logger.wandb_mode=disabled"], shared_data, check=False)
        assert r.proc.returncode != 0
        lines = [x for x in r.output.splitlines() if "CheckpointWriteError: could not write" in x]
        assert lines, r.output[-4000:]
        line = lines[-1]
        assert f"could not write checkpoint {ckpts / 'step_00000004'}" in line
        assert "MiB free on that file system (the disk is full)" in line, line
        assert "earlier checkpoints are untouched" in line
        assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000002"]
        assert (ckpts / "step_00000002" / "COMPLETE").exists() and verify_manifest(ckpts / "step_00000002") == []
        print(f"full disk: {line.strip()[:300]}")
    finally:
        subprocess.run(["umount", str(ckpts)], check=False)

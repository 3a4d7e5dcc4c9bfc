"""Tiny random Hugging Face checkpoints built locally with transformers, as a released model would be on disk.

Every tensor gets distinct random values (norms too), so a swapped or misplaced tensor cannot go unnoticed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.conftest import TINY_QWEN3_5, compose

VOCAB = 512  # the ci_tiny tokenizer's vocabulary
QWEN3 = ["experiment=ci_tiny", f"+model.hf_config.vocab_size={VOCAB}"]
QWEN3_5 = [*TINY_QWEN3_5, f"+model.hf_config.text_config.vocab_size={VOCAB}"]
# Run overrides matching ci_tiny's data and trainer settings, for families other than ci_tiny's own.
CI_TINY_RUN = ["data.num_documents=600", "data.vocab_size=512", "data.seq_len=64", "trainer.micro_batch_size=2",
               "trainer.checkpoint_every=100", "logger=disabled", "optim.warmup_steps=2"]
FAMILY_OVERRIDES = {"qwen3_moe": QWEN3, "qwen3_5_moe": QWEN3_5}


def random_model(family: str, seed: int = 7):
    from data_pipelines.tokenizer import QWEN_SPECIAL_TOKENS, VISION_TOKEN_FIELDS
    from train.models.build import build_hf_config, build_model

    cfg = compose(FAMILY_OVERRIDES[family])
    hf_config = build_hf_config(cfg.model)
    # A released checkpoint's vision token ids match its own tokenizer; the runs here train the BPE of
    # data_pipelines.tokenizer, whose special tokens come first in QWEN_SPECIAL_TOKENS order.
    for field, token in VISION_TOKEN_FIELDS.items():
        if hasattr(hf_config, field):
            setattr(hf_config, field, QWEN_SPECIAL_TOKENS.index(token))
    model = build_model(cfg.model, hf_config, torch.float32, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if p.ndim == 1 else 0.05 * noise)
    return model


def save_random_hf(family: str, folder: Path, with_mtp: bool = False, max_shard_size: str | None = None) -> Path:
    """save_pretrained (per-expert keys), plus `mtp.*` tensors in their own shard when asked."""
    model = random_model(family)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    if with_mtp:
        g = torch.Generator().manual_seed(11)
        mtp = {"mtp.fc.weight": torch.randn(64, 128, generator=g), "mtp.norm.weight": torch.randn(64, generator=g)}
        add_mtp_shard(folder, mtp)
    return folder


def add_mtp_shard(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write `tensors` as `mtp.safetensors` beside the model's shards and list them in the index (made if the folder
    had one unindexed `model.safetensors`), as released Qwen3.5 checkpoints store their mtp.* module."""
    from safetensors import safe_open

    save_file(tensors, str(folder / "mtp.safetensors"), metadata={"format": "pt"})
    index_path = folder / "model.safetensors.index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
    else:
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            index = {"metadata": {}, "weight_map": dict.fromkeys(f.keys(), "model.safetensors")}
    index["weight_map"].update(dict.fromkeys(tensors, "mtp.safetensors"))
    index_path.write_text(json.dumps(index))


def read_all(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF folder, by name (through the index when there is one)."""
    from safetensors import safe_open

    from train.models.hf_import import shard_index

    out = {}
    for name, path in shard_index(folder).items():
        with safe_open(str(path), "pt") as f:
            out[name] = f.get_tensor(name)
    return out

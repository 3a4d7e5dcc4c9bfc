"""`verify=true`: the export, loaded by transformers, gives the training model's logits on fixed inputs.

The reference is independent of the exporter: the DeepSpeed engine (AutoEP, ZeRO) rebuilt from the run's
config and loaded from the same checkpoint with DeepSpeed's own `load_checkpoint` (every file weights_only=True,
train/checkpoint/weights_only_load_shim.py). Inputs are fixed random token ids, and for Qwen3.5 also a fixed
image placed between `<|vision_start|>` and `<|vision_end|>`. A run with a multi-token prediction layer is compared
on its logits too (the export's `mtp.*` read back by train/models/mtp.py `load_mtp`).
Collective: every rank of the checkpoint's topology runs the engine forward; rank 0 compares.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import PreTrainedTokenizerBase

from train.checkpoint.hf_export import ExportSource, export_hf_config
from train.checkpoint.weights_only_load_shim import weights_only_loads
from train.config import PretrainConfig
from train.models import hf_side_files

log = logging.getLogger(__name__)

DEFAULT_ATOL = {"float32": 1e-4, "bfloat16": 0.1, "float16": 0.05}


def fixed_inputs(family: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Text token ids, plus (Qwen3.5) one 64x64 image with its placeholder tokens and mm_token_type_ids."""
    g = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)
    text = torch.randint(0, vocab, (2, 24), generator=g)
    batches = [{"input_ids": text}]
    if family == "qwen3_5_moe":
        from PIL import Image
        from transformers import Qwen2VLImageProcessorPil

        pixels = torch.randint(0, 256, (64, 64, 3), generator=g, dtype=torch.uint8).numpy()
        processor = Qwen2VLImageProcessorPil(**hf_side_files.IMAGE_PROCESSOR)
        image = processor(images=[Image.fromarray(pixels)], return_tensors="pt")
        grid = image["image_grid_thw"]
        n_pad = int(grid.prod()) // processor.merge_size ** 2
        ids = tokenizer.convert_tokens_to_ids
        body = [*torch.randint(0, vocab, (6,), generator=g).tolist(), ids("<|vision_start|>"),
                *[ids("<|image_pad|>")] * n_pad, ids("<|vision_end|>"),
                *torch.randint(0, vocab, (6,), generator=g).tolist()]
        input_ids = torch.tensor([body])
        mm = (input_ids == ids("<|image_pad|>")).long()
        batches.append({"input_ids": input_ids, "pixel_values": image["pixel_values"], "image_grid_thw": grid,
                        "mm_token_type_ids": mm})
    return batches


def _with_mtp(model, batches: list[dict]) -> list[torch.Tensor]:
    """The trunk's logits per batch, then (when the model has `model.mtp`) the MTP head's."""
    from train.models.mtp import TrunkTap, mtp_logits

    tap = TrunkTap(model) if hasattr(model, "mtp") else None
    trunk, draft = [], []
    with torch.no_grad():
        for b in batches:
            trunk.append(model(**b, use_cache=False).logits.float().cpu())
            if tap is not None:
                draft.append(mtp_logits(model, tap.pop())[0].float().cpu())
    if tap is not None:
        tap.remove()
    return trunk + draft


def training_logits(source: ExportSource, batches: list[dict], world_size: int) -> list[torch.Tensor]:
    """Logits of the DeepSpeed engine loaded from the checkpoint (all ranks call this); MTP logits after them."""
    from train.engine.deepspeed_setup import build_engine, resolve_dtype
    from train.models.build import build_model

    topology = source.meta["topology"]
    if world_size != topology["world_size"]:
        raise ValueError(f"verify=true rebuilds the training engine: run with the checkpoint's world size "
                         f"(torchrun --nproc_per_node {topology['world_size']}), not {world_size}")
    cfg = OmegaConf.merge(OmegaConf.structured(PretrainConfig), source.run_config)
    cfg.parallel.ep_size = topology["ep_size"]
    cfg.deepspeed.zero_stage = topology["zero_stage"]
    cfg.model.init_from = None  # the weights come from the checkpoint
    cfg.model.activation_checkpointing = False
    from train.checkpoint.ds_checkpoint_reader import DeepSpeedCheckpointReader

    hf_config = export_hf_config(source, DeepSpeedCheckpointReader(source.ckpt_dir))
    tokenizer = hf_side_files.load_tokenizer(source.tokenizer_dir, source.family)
    hf_side_files.set_token_ids(hf_config, tokenizer)
    # Another seed than training's: a checkpoint that failed to load cannot pass for the trained weights.
    model = build_model(cfg.model, hf_config, resolve_dtype(cfg.trainer.precision), cfg.trainer.seed + 1)
    engine = build_engine(cfg, model)
    with weights_only_loads():
        load_path, _ = engine.load_checkpoint(str(source.ckpt_dir.parent), tag=source.ckpt_dir.name)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load {source.ckpt_dir}")
    engine.eval()
    if hasattr(engine.module, "mtp"):
        return _with_mtp(engine.module, batches)
    with torch.no_grad():
        return [engine(**b, use_cache=False).logits.float().cpu() for b in batches]


def export_logits(out: Path, family: str, batches: list[dict], mtp: bool = False) -> list[torch.Tensor]:
    """Logits of the export as transformers loads it (fp32 compute, whatever the stored dtype); with `mtp`, the MTP
    head read from the export's `mtp.*` after them."""
    from train.models.build import FAMILIES
    from train.models.mtp import load_mtp

    model = FAMILIES[family][1].from_pretrained(str(out), dtype=torch.float32).eval()
    if mtp:
        if not load_mtp(model, str(out)):
            raise ValueError(f"verify: {out} has no mtp.* tensors but the run trained a multi-token prediction layer")
        return _with_mtp(model, batches)
    with torch.no_grad():
        return [model(**b, use_cache=False).logits.float() for b in batches]


def compare(reference: list[torch.Tensor], exported: list[torch.Tensor], atol: float) -> float:
    """Max |difference| over all inputs; raises above `atol`."""
    worst = 0.0
    for i, (a, b) in enumerate(zip(reference, exported, strict=True)):
        if a.shape != b.shape:
            raise ValueError(f"verify: input {i}: logits shape {list(b.shape)} from the export, "
                             f"{list(a.shape)} from the training model")
        worst = max(worst, (a - b).abs().max().item())
    print(f"verify: max |logit difference| export vs training model = {worst:.3e} (tolerance {atol:.1e})",
          flush=True)
    if not worst <= atol:
        raise ValueError(f"verify failed: max logit difference {worst:.3e} > tolerance {atol:.1e}")
    return worst

"""Convert one DeepSpeed checkpoint of a run into a Hugging Face folder that transformers, vLLM and SGLang load.

Layer by layer and expert by expert: tensors stream from `DeepSpeedCheckpointReader` through the key map
(`train.models.hf_adapter`) into safetensors shards of at most `max_shard_bytes`, so memory stays at one
shard plus one tensor whatever the model size. Everything is written into `.<out>.tmp-<pid>` next to the
destination and renamed at the end; the index and `manifest.json` (sha256 per file) are written last, so a
folder with them is complete and an export killed midway leaves only a temp folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PretrainedConfig

from train.checkpoint.ds_checkpoint_reader import DeepSpeedCheckpointReader
from train.checkpoint.manifest import MANIFEST, build_manifest, verify_manifest, write_manifest
from train.config import ModelConfig
from train.models import hf_side_files
from train.models.hf_adapter import HEAD_WEIGHT, expert_to_hf, family_keys, head_is_tied, to_hf
from train.models.hf_import import shard_index
from train.models.lora import EXPERTS_LORA, LORA_A, LORA_B, lora_spec, merge_experts, merge_linear
from train.models.mtp import MTP_PREFIX

log = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"
_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass
class ExportSource:
    """A checkpoint tag and what its run recorded: family, topology, model config, tokenizer."""

    ckpt_dir: Path
    run_dir: Path
    meta: dict[str, Any]
    run_config: dict[str, Any]

    @property
    def family(self) -> str:
        return self.meta.get("family") or self.run_config["model"]["family"]

    @property
    def tokenizer_dir(self) -> Path:
        return self.run_dir / "tokenizer"

    @property
    def init_from(self) -> str | None:
        return self.run_config.get("model", {}).get("init_from")


def open_source(ckpt_dir: str | Path, check_files: bool = True) -> ExportSource:
    """Check the checkpoint is complete and intact (its files against `manifest.json`, before anything in them is
    unpickled; `check_files=False` skips the hashing) and find its run's config and tokenizer."""
    ckpt = Path(ckpt_dir).resolve()
    if not ckpt.is_dir():
        raise ValueError(f"checkpoint={ckpt}: no such directory")
    if not (ckpt / "COMPLETE").exists():
        raise ValueError(f"checkpoint={ckpt}: no COMPLETE marker (an interrupted save?)")
    if check_files and (ckpt / MANIFEST).exists():
        problems = verify_manifest(ckpt, collective=False)  # this process alone (export reads on rank 0 only)
        if problems:
            raise ValueError(f"checkpoint={ckpt} is damaged:\n  " + "\n  ".join(problems))
    meta_path = ckpt / "meta.json"
    if not meta_path.exists():
        raise ValueError(f"{meta_path}: missing; it records the model family and topology")
    run_dir = ckpt.parent.parent
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise ValueError(f"{cfg_path}: missing; the run's resolved config describes the model")
    run_config = json.loads(cfg_path.read_text())
    run_config.pop("plan", None)  # the prediction train.plan wrote beside the config (train/pretrain.py), no key of it
    source = ExportSource(ckpt, run_dir, json.loads(meta_path.read_text()), run_config)
    if not (source.tokenizer_dir / "tokenizer_config.json").exists():
        raise ValueError(f"{source.tokenizer_dir}: the run's tokenizer is missing")
    return source


def model_config(source: ExportSource) -> ModelConfig:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), source.run_config["model"]))


def export_hf_config(source: ExportSource, reader: DeepSpeedCheckpointReader) -> PretrainedConfig:
    """The transformers config of the trained model; the vocabulary comes from the embedding's shape."""
    from train.models.build import build_hf_config

    embed = next(n for n in reader.dense_names() if n.endswith("embed_tokens.weight"))
    vocab = reader.shape(embed)[0]
    model_cfg = model_config(source)
    hf_config = build_hf_config(model_cfg, vocab_size=vocab)
    if hf_config.get_text_config().vocab_size != vocab:
        raise ValueError(f"{source.ckpt_dir}: embedding has {vocab} rows, the run's model config says "
                         f"{hf_config.get_text_config().vocab_size}")
    if model_cfg.mtp_layers:  # the key vLLM and SGLang read to build the draft model
        hf_config.get_text_config().mtp_num_hidden_layers = model_cfg.mtp_layers
    return hf_config


class ShardWriter:
    """Safetensors shards of bounded size; final names and the index are written by `finish`."""

    def __init__(self, folder: Path, dtype: torch.dtype, max_shard_bytes: int) -> None:
        self.folder, self.dtype, self.max_bytes = folder, dtype, max_shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []
        self.total_bytes = 0
        self.peak_pending_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if any(name in s for s in self.shards) or name in self.pending:
            raise ValueError(f"tensor {name} written twice")
        t = tensor.detach().to(self.dtype).contiguous()
        if self.pending and self.pending_bytes + t.nbytes > self.max_bytes:
            self.flush()
        self.pending[name] = t
        self.pending_bytes += t.nbytes
        self.peak_pending_bytes = max(self.peak_pending_bytes, self.pending_bytes)

    def flush(self) -> None:
        if not self.pending:
            return
        save_file(self.pending, str(self.folder / f"shard-{len(self.shards):05d}.tmp"), metadata={"format": "pt"})
        self.shards.append(list(self.pending))
        self.total_bytes += self.pending_bytes
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> None:
        self.flush()
        n = len(self.shards)
        weight_map = {}
        for i, names in enumerate(self.shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.folder / f"shard-{i:05d}.tmp", self.folder / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")


def _layer_order(name: str) -> tuple[int, int]:
    """Embeddings and the vision tower first, then decoder layers in order, then the final norm and head, then the
    multi-token prediction module (its own layers after its projection and norms)."""
    m = _LAYER.search(name)
    if name.startswith(MTP_PREFIX):
        return (3, 1 + int(m.group(1))) if m else (3, 0)
    if m and "visual" not in name:
        return (1, int(m.group(1)))
    return (0, 0) if "embed" in name or "visual" in name else (2, 0)


def _dense_and_adapters(reader: DeepSpeedCheckpointReader, scale: float | None) -> tuple[list[str], set[str]]:
    """The dense names to export, and the adapter names (merged into their base weights, never written)."""
    names = reader.dense_names()
    adapters = {n for n in names if n.endswith((f".{LORA_A}", f".{LORA_B}")) or f".{EXPERTS_LORA}." in n}
    if adapters and scale is None:
        raise ValueError(f"{reader.dir}: the checkpoint holds LoRA adapters ({sorted(adapters)[0]}, ...) but the "
                         "run's config has model.lora.enabled=false; cannot merge them")
    return [n for n in names if n not in adapters], adapters


def hf_tensors(reader: DeepSpeedCheckpointReader, family: str, tied_head: bool = False,
               lora_scale: float | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) for the whole model, one layer (and within it one expert) at a time.

    With `tied_head` the output head is the embedding and is left out, as `save_pretrained` leaves it out.
    LoRA adapters (`lora_scale` = alpha / rank) are merged into the weights they adapt (float32, W + s B A).
    """
    layers_prefix = family_keys(family).layers_prefix
    moe = {_layer_order(layer.module_path + "."): layer for layer in reader.moe_layers()}
    names, adapters = _dense_and_adapters(reader, lora_scale)
    dense = sorted(names, key=_layer_order)
    by_layer: dict[tuple[int, int], list[str]] = {}
    for name in dense:
        by_layer.setdefault(_layer_order(name), []).append(name)
    for key in sorted(by_layer):
        for name in by_layer[key]:
            hf = to_hf(name)
            if hf is None or (tied_head and hf == HEAD_WEIGHT):
                continue
            tensor = reader.read(name)
            module = name.removesuffix(".weight")
            if f"{module}.{LORA_A}" in adapters:
                tensor = merge_linear(tensor, reader.read(f"{module}.{LORA_A}"), reader.read(f"{module}.{LORA_B}"),
                                      lora_scale)
            yield hf, tensor
        if key in moe:
            layer = moe[key]
            if not layer.module_path.startswith((layers_prefix, MTP_PREFIX)):
                raise ValueError(f"MoE layer {layer.module_path} is not under {layers_prefix} for family {family}")
            prefix = f"{layer.module_path.rsplit('.', 1)[0]}.{EXPERTS_LORA}."
            expert_adapters = {n.removeprefix(prefix): reader.read(n) for n in adapters if n.startswith(prefix)}
            for e in range(layer.num_experts):
                weights = reader.read_expert(layer, e)
                if expert_adapters:
                    weights = merge_experts(weights, expert_adapters, e, lora_scale)
                yield from expert_to_hf(layer.module_path, e, weights).items()


def mtp_tensors(init_from: str | None) -> Iterator[tuple[str, torch.Tensor]]:
    """`mtp.*` tensors of the checkpoint the run started from (transformers drops them; vLLM uses them), for a run
    that did not train its own (model.mtp_layers=0): the draft head stays as it was."""
    if not init_from or not Path(init_from).is_dir():
        return
    index = shard_index(init_from)
    for name, path in sorted(index.items()):
        if name.startswith("mtp."):
            with safe_open(str(path), framework="pt") as f:
                yield name, f.get_tensor(name)


def warn_if_upcast(layout: str, weight_dtype: torch.dtype, dtype: torch.dtype) -> bool:
    """ZeRO-1/2 checkpoints are read from the module weights (training dtype), not the optimizer's fp32 masters.

    For a bf16 run those are the bf16 cast of the masters: a bf16 export is exact, but a float32 export holds
    the bf16 values widened (the masters' extra precision is not read). ZeRO-3 and universal read the masters.
    """
    if layout != "zero12" or weight_dtype.itemsize >= dtype.itemsize:
        return False
    log.warning("export.dtype=%s from a %s ZeRO-1/2 checkpoint: the weights are the training model's %s module "
                "weights widened, not the optimizer's fp32 master copies", str(dtype).removeprefix("torch."),
                str(weight_dtype).removeprefix("torch."), str(weight_dtype).removeprefix("torch."))
    return True


def export_checkpoint(ckpt_dir: str | Path, out: str | Path, dtype: torch.dtype = torch.bfloat16,
                      max_shard_bytes: int = 4 << 30, overwrite: bool = False) -> dict[str, Any]:
    """Write the HF folder `out` from a DeepSpeed checkpoint tag; returns counts and sizes."""
    source = open_source(ckpt_dir)
    out = Path(out).resolve()
    if out.exists() and not overwrite:
        raise ValueError(f"out={out} already exists (set export.overwrite=true to replace it)")
    reader = DeepSpeedCheckpointReader(source.ckpt_dir)
    hf_config = export_hf_config(source, reader)
    tokenizer = hf_side_files.load_tokenizer(source.tokenizer_dir, source.family)
    hf_side_files.set_token_ids(hf_config, tokenizer)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        writer = ShardWriter(tmp, dtype, max_shard_bytes)
        n_tensors = n_mtp = 0
        lora = model_config(source).lora
        for name, tensor in hf_tensors(reader, source.family, tied_head=head_is_tied(hf_config),
                                       lora_scale=lora_spec(lora).scale if lora.enabled else None):
            if n_tensors == 0:
                warn_if_upcast(reader.layout, tensor.dtype, dtype)
            writer.add(name, tensor)
            trained = name.startswith(MTP_PREFIX)  # the run's own MTP layer (model.mtp_layers)
            n_tensors, n_mtp = n_tensors + (not trained), n_mtp + trained
        trained_mtp = n_mtp > 0
        if not trained_mtp:
            for name, tensor in mtp_tensors(source.init_from):
                writer.add(name, tensor)
                n_mtp += 1
        hf_side_files.write_config(hf_config, source.family, dtype, tmp)
        hf_side_files.write_generation_config(tokenizer, tmp)
        hf_side_files.write_tokenizer(tokenizer, tmp)
        if source.family == "qwen3_5_moe":
            hf_side_files.write_image_processor(tmp)
        (tmp / "export_source.json").write_text(json.dumps(
            {"checkpoint": str(source.ckpt_dir), "step": source.meta.get("step"),
             "topology": source.meta.get("topology"), "layout": reader.layout,
             "mtp": "trained" if trained_mtp else "carried from init_from" if n_mtp else None}, indent=2) + "\n")
        writer.finish()
        write_manifest(tmp, build_manifest(tmp, exclude={MANIFEST}, collective=False))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s -> %s: %d tensors (+%d mtp), %d shards, %.1f MB", source.ckpt_dir, out, n_tensors,
             n_mtp, len(writer.shards), writer.total_bytes / 1e6)
    return {"tensors": n_tensors, "mtp_tensors": n_mtp, "shards": len(writer.shards),
            "bytes": writer.total_bytes, "peak_shard_buffer_bytes": writer.peak_pending_bytes}

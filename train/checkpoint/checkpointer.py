"""Save, rotate and auto-resume DeepSpeed checkpoints, with a safe path across topology changes.

Layout: `<run>/checkpoints/step_00000100/` holds DeepSpeed's files, `trainer_state_rank<r>.pt` per rank
(RNG), `manifest.json` (sha256 per file), `meta.json` (step, data position, wandb id, topology) and, last,
the `COMPLETE` marker. A folder without the marker is never resumed from; one whose files do not match
its manifest is reported by file name and the previous checkpoint is used instead; only then is anything
unpickled, and every load (DeepSpeed's own too) is `weights_only=True` (train/checkpoint/weights_only_load_shim.py).
A save refuses non-finite weights (under ZeRO-3 each rank checks its own partition; all ranks agree), and a failed
write (a full disk) raises naming the folder and removes the partial one; older checkpoints are rotated only after
the new one is complete. Resuming with another EP size or world size would silently
corrupt a normal checkpoint's optimizer state (CONTEXT.md §3), so it goes through DeepSpeed's universal
checkpoint conversion instead; that is chosen before the engine is built (`load_universal`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.checkpoint.manifest import MANIFEST, build_manifest, verify_manifest, write_manifest
from train.checkpoint.weights_only_load_shim import load_weights_only, weights_only_loads
from train.engine import fault_injection
from train.engine.distributed import barrier

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
META = "meta.json"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, quota, I/O error); the partial folder is removed."""


def _all_ranks_ok(ok: bool) -> bool:
    """Collective: True when every rank reports ok (so all ranks raise together instead of one waiting forever)."""
    import torch.distributed as dist

    flag = torch.tensor([0.0 if ok else 1.0])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag)
    return flag.item() == 0


def first_nonfinite_param(module: torch.nn.Module) -> str | None:
    """The name of the first parameter holding NaN/Inf in this rank's share; one reduction per tensor.

    Under ZeRO-3 `param.data` is an empty placeholder and the rank's values are its partition `param.ds_tensor`.
    """
    for name, p in module.named_parameters():
        local = getattr(p, "ds_tensor", None)
        values = p.detach() if local is None else local.detach()
        if values.numel() and not torch.isfinite(values).all():
            return name
    return None


def first_nonfinite_on_any_rank(module: torch.nn.Module) -> tuple[str, int] | None:
    """Collective: (parameter, rank) of the first non-finite parameter on the lowest such rank, the same on all."""
    import torch.distributed as dist

    bad = first_nonfinite_param(module)
    found = [bad]
    if dist.is_initialized() and dist.get_world_size() > 1:
        found = [None] * dist.get_world_size()
        dist.all_gather_object(found, bad)
    return next(((name, rank) for rank, name in enumerate(found) if name is not None), None)


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def rng_state() -> dict[str, Any]:
    """Plain types and tensors only, so the file loads with `torch.load(weights_only=True)`."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@dataclass(frozen=True)
class Topology:
    world_size: int
    ep_size: int
    zero_stage: int

    def as_dict(self) -> dict[str, int]:
        return {"world_size": self.world_size, "ep_size": self.ep_size, "zero_stage": self.zero_stage}


@dataclass(frozen=True)
class ResumePlan:
    tag: str
    step: int
    meta: dict[str, Any]
    universal: bool

    @property
    def load_tag(self) -> str:
        return self.tag + "_universal" if self.universal else self.tag


class Checkpointer:
    def __init__(self, ckpt_dir: Path, keep_last: int, rank: int, world_size: int) -> None:
        self.dir = Path(ckpt_dir)
        self.keep_last = keep_last
        self.rank = rank
        self.world_size = world_size

    def complete_tags(self) -> list[str]:
        """Tags with a COMPLETE marker, oldest first; incomplete folders are reported and skipped."""
        if not self.dir.is_dir():
            return []
        tags = []
        for p in sorted(self.dir.iterdir()):
            if not _STEP_DIR.match(p.name):
                continue
            if (p / COMPLETE).exists():
                tags.append(p.name)
            elif self.rank == 0:
                log.warning("skipping incomplete checkpoint %s (no %s marker)", p, COMPLETE)
        return tags

    def latest_intact(self) -> str | None:
        """Collective: the newest complete checkpoint whose files match its manifest; damaged ones are skipped."""
        for tag in reversed(self.complete_tags()):
            problems = verify_manifest(self.dir / tag)
            if not problems:
                return tag
            if self.rank == 0:
                log.error("checkpoint %s is damaged, falling back to an earlier one:\n  %s", self.dir / tag,
                          "\n  ".join(problems))
        return None

    def plan_resume(self, topology: Topology, no_universal: str | None = None) -> ResumePlan | None:
        """The latest intact checkpoint and whether it must be loaded through a universal conversion.

        `no_universal`: why this run's checkpoints cannot be converted; a topology change is then refused with it.
        """
        tag = self.latest_intact()
        if tag is None:
            return None
        meta = json.loads((self.dir / tag / META).read_text())
        saved = Topology(**meta["topology"])
        universal = (saved.world_size, saved.ep_size) != (topology.world_size, topology.ep_size)
        if saved.zero_stage != topology.zero_stage:
            universal = True
        if universal:
            if 3 in (saved.zero_stage, topology.zero_stage):
                raise ValueError(f"{self.dir / tag}: saved with {saved}, this run has {topology}; "
                                 "changing topology is supported for ZeRO stages 0-2 only (ZeRO-3 universal "
                                 "checkpoints drift after one step). Resume with the saved ep_size and world size.")
            if no_universal:
                raise ValueError(f"{self.dir / tag}: saved with {saved}, this run has {topology}; {no_universal}. "
                                 "Resume with the saved world size, ep_size and ZeRO stage, or export the checkpoint "
                                 "and start a new run from it (model.init_from=<export>).")
            log.info("checkpoint %s was saved with %s; this run has %s: loading through a universal checkpoint",
                     tag, saved, topology)
            self._convert_to_universal(tag)
        return ResumePlan(tag=tag, step=int(meta["step"]), meta=meta, universal=universal)

    def _convert_to_universal(self, tag: str) -> None:
        """DeepSpeed's ds_to_universal on rank 0 into `<tag>_universal`, atomically; others wait."""
        out = self.dir / (tag + "_universal")
        if self.rank == 0 and not (out / COMPLETE).exists():
            tmp = self.dir / (tag + "_universal.tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            cmd = [sys.executable, "-m", "train.checkpoint.weights_only_load_shim",
                   "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(self.dir / tag),
                   "--output_folder", str(tmp), "--num_extract_workers", "1", "--num_merge_workers", "1"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"ds_to_universal failed for {self.dir / tag}:\n{proc.stderr[-4000:]}")
            log.info("ds_to_universal: %s", proc.stderr.strip().splitlines()[-1])
            for name in (META,):
                shutil.copy(self.dir / tag / name, tmp / name)
            (tmp / COMPLETE).write_text("ok\n")
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        barrier()

    def save(self, engine, step: int, rank_state: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Collective: every rank calls it. The COMPLETE marker is written only after all ranks finished."""
        tag = tag_for(step)
        path = self.dir / tag
        fault_injection.poison_weights(engine.module, step)
        bad = first_nonfinite_on_any_rank(engine.module)
        if bad is not None:
            raise FloatingPointError(f"refusing to write {path}: non-finite weights ({bad[0]} on rank {bad[1]}); "
                                     "the previous checkpoint stays the latest")
        if self.rank == 0 and path.exists():
            shutil.rmtree(path)
        barrier()
        error = None
        try:
            engine.save_checkpoint(str(self.dir), tag=tag, client_state={"step": step}, save_latest=False)
            torch.save(rank_state, path / f"trainer_state_rank{self.rank}.pt")
        except (OSError, RuntimeError) as e:  # torch.save reports ENOSPC as RuntimeError (PytorchStreamWriter)
            error = e
        fault_injection.inside_save(step)
        if not _all_ranks_ok(error is None):
            self._fail(path, error)
        manifest = build_manifest(path, exclude={MANIFEST, META, COMPLETE})
        if self.rank == 0:
            try:
                write_manifest(path, manifest)
                (path / META).write_text(json.dumps({"step": step, **meta}, indent=2))
                (path / COMPLETE).write_text("ok\n")
            except OSError as e:
                error = e
        if not _all_ranks_ok(error is None):
            self._fail(path, error)
        if self.rank == 0:
            self._rotate()
        barrier()
        return path

    def _fail(self, path: Path, error: BaseException | None) -> None:
        free = shutil.disk_usage(self.dir).free if self.dir.exists() else 0
        if self.rank == 0:
            shutil.rmtree(path, ignore_errors=True)
        barrier()
        cause = f"{type(error).__name__}: {error}" if error else "a write failed on another rank"
        full = " (the disk is full)" if free < 2**20 else ""
        raise CheckpointWriteError(f"could not write checkpoint {path} ({cause}); {free / 2**20:.1f} MiB free on that "
                                   f"file system{full}; the partial folder was removed, earlier checkpoints are "
                                   "untouched")

    def _rotate(self) -> None:
        tags = self.complete_tags()
        for old in tags[:-self.keep_last]:
            shutil.rmtree(self.dir / old, ignore_errors=True)
            shutil.rmtree(self.dir / (old + "_universal"), ignore_errors=True)

    def load(self, engine, plan: ResumePlan) -> dict[str, Any] | None:
        """Load engine states, every file with weights_only=True; returns this rank's trainer state (None when
        the world size changed)."""
        with weights_only_loads() as loads:
            load_path, _ = engine.load_checkpoint(str(self.dir), tag=plan.load_tag)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load {self.dir / plan.load_tag}")
        log.info("%s: DeepSpeed read %d files on rank %d, all with weights_only=True", self.dir / plan.load_tag,
                 loads.files, self.rank)
        rank_file = self.dir / plan.tag / f"trainer_state_rank{self.rank}.pt"
        if plan.universal or not rank_file.exists():
            return None
        return load_weights_only(rank_file)

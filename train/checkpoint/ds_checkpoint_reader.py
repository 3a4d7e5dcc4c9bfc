"""Read a DeepSpeed (ZeRO 0-3, any EP size) or universal checkpoint one tensor and one expert at a time.

DeepSpeed's own `zero_to_fp32` fails on AutoEP checkpoints and materialises the whole model; this reader
memory-maps the files (`torch.load(mmap=True)`) and copies out only the tensor asked for, so converting a
model needs memory for one layer, not the model. Three layouts are understood:

- ZeRO 0/1/2: `mp_rank_00_model_states.pt` holds every non-expert module weight in full, and
  `layer_{L}_expert_{E}_mp_rank_00_model_states.pt` one expert each (`...experts.w1.{e_local}`).
  These are the module (training-dtype) weights: for a bf16 run they are the bf16 cast of the fp32 master,
  which is exactly what a bf16 export writes.
- ZeRO-3: module files hold empty placeholders; the fp32 master weights are the `fp32_flat_groups` of
  `zero_pp_rank_{r}_mp_rank_00_optim_states.pt`. Each sub-group is partitioned over its `partition_ranks`:
  every parameter is split into `ceil(numel / P)` elements per rank and the rank's pieces are concatenated
  in `param_shapes` order. Expert sub-groups are partitioned within their expert-data-parallel group, and
  each EP rank's `ds_autoep_layers` say which global experts it holds.
- universal (`ds_to_universal`): `zero/<param name>/fp32.pt`, experts as one logical [E, ...] tensor.

Names are the training model's (AutoEP) names; `train.models.hf_adapter` maps them to Hugging Face names.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from train.checkpoint.weights_only_load_shim import UnsafeCheckpointError, load_weights_only

EXPERT_PARAM = re.compile(r"^(?P<prefix>.+)\.experts\.(?P<w>w[123])$")
EXPERT_WEIGHTS = ("w1", "w2", "w3")


@dataclass(frozen=True)
class MoELayer:
    module_path: str  # e.g. "model.layers.3.mlp"
    moe_layer_id: int
    num_experts: int


def _load(path: Path) -> dict:
    """weights_only=True plus the three DeepSpeed classes its files hold (see weights_only_load_shim)."""
    try:
        return load_weights_only(path, map_location="cpu", mmap=True)
    except UnsafeCheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"{path}: cannot read DeepSpeed checkpoint file ({type(e).__name__}: {e})") from e


class DeepSpeedCheckpointReader:
    """Random access to the full tensors of one checkpoint tag; `dense_names`, `read`, `moe_layers`, `read_expert`."""

    def __init__(self, ckpt_dir: str | Path) -> None:
        self.dir = Path(ckpt_dir)
        if not self.dir.is_dir():
            raise ValueError(f"{self.dir}: no such checkpoint directory")
        if (self.dir / "zero").is_dir() and (self.dir / "mp_rank_00_model_states.pt").exists():
            self.layout = "universal"
        elif (self.dir / "mp_rank_00_model_states.pt").exists():
            self.layout = "zero12"
        elif list(self.dir.glob("zero_pp_rank_*_mp_rank_00_model_states.pt")):
            self.layout = "zero3"
        else:
            raise ValueError(f"{self.dir}: neither mp_rank_00_model_states.pt nor zero_pp_rank_*_model_states.pt "
                             "found; is this a DeepSpeed checkpoint tag folder?")
        if self.layout == "zero3":
            self._init_zero3()
        else:
            self._states = _load(self.dir / "mp_rank_00_model_states.pt")
            self._autoep = self._states.get("ds_autoep_layers") or []
            if self.layout == "universal":
                self._dense = [p.name for p in sorted((self.dir / "zero").iterdir())
                               if (p / "fp32.pt").exists() and not EXPERT_PARAM.match(p.name)]
            else:
                self._dense = [n for n in self._states["module"] if not EXPERT_PARAM.match(n)]
        self._layers = [MoELayer(e["module_path"], int(e["moe_layer_id"]), int(e["num_experts"]))
                        for e in self._autoep if isinstance(e, dict) and "module_path" in e]
        self._expert_files: dict[str, dict] = {}

    # ------------------------------------------------------------------ public
    def dense_names(self) -> list[str]:
        """Every non-expert parameter name, in the training model's order."""
        return list(self._dense)

    def moe_layers(self) -> list[MoELayer]:
        return list(self._layers)

    def read(self, name: str) -> torch.Tensor:
        """One full non-expert tensor (a copy; the checkpoint files stay memory-mapped)."""
        if self.layout == "zero12":
            return self._states["module"][name].clone()
        if self.layout == "universal":
            return _load(self.dir / "zero" / name / "fp32.pt")["param"].clone()
        return self._zero3_read(name)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of a non-expert tensor without reading its values."""
        if self.layout == "zero12":
            return tuple(self._states["module"][name].shape)
        if self.layout == "universal":
            return tuple(_load(self.dir / "zero" / name / "fp32.pt")["param"].shape)
        return self._z3_dense_index[name][2] if name in self._z3_dense_index else self._z3_frozen[name]

    def read_expert(self, layer: MoELayer, expert: int) -> dict[str, torch.Tensor]:
        """{"w1": [I, H], "w2": [H, I], "w3": [I, H]} of one global expert."""
        if not 0 <= expert < layer.num_experts:
            raise ValueError(f"{layer.module_path}: expert {expert} out of range (num_experts={layer.num_experts})")
        if self.layout == "zero12":
            path = self.dir / f"layer_{layer.moe_layer_id}_expert_{expert}_mp_rank_00_model_states.pt"
            if not path.exists():
                raise ValueError(f"{path}: missing expert file for {layer.module_path} expert {expert}")
            sd = _load(path)  # keys end with the global expert id: "<module>.experts.w1.<e>"
            return {w: sd[f"{layer.module_path}.experts.{w}.{expert}"].clone() for w in EXPERT_WEIGHTS}
        if self.layout == "universal":
            out = {}
            for w in EXPERT_WEIGHTS:
                out[w] = _load(self.dir / "zero" / f"{layer.module_path}.experts.{w}" / "fp32.pt")["param"][expert].clone()
            return out
        return {w: self._zero3_read_expert(layer, expert, w) for w in EXPERT_WEIGHTS}

    # ------------------------------------------------------------------ ZeRO-3
    def _init_zero3(self) -> None:
        model_files = sorted(self.dir.glob("zero_pp_rank_*_mp_rank_00_model_states.pt"),
                             key=lambda p: int(re.search(r"zero_pp_rank_(\d+)_", p.name).group(1)))
        self._z3_models = [_load(p) for p in model_files]
        self._world = len(model_files)
        self._z3_optim: dict[int, dict] = {}
        first = self._z3_models[0]
        self._autoep = first.get("ds_autoep_layers") or []
        # Non-expert sub-groups are the same on every rank; expert sub-groups differ by EP rank.
        self._z3_dense_index: dict[str, tuple[int, int, tuple[int, ...]]] = {}
        self._dense = []
        for g, shapes in enumerate(first["param_shapes"]):
            offset = 0
            for name, shape in shapes.items():
                if EXPERT_PARAM.match(name):
                    break
                numel = math.prod(shape)
                self._z3_dense_index[name] = (g, offset, tuple(shape))
                self._dense.append(name)
                offset += math.ceil(numel / self._optim_meta(0, g)["partition_count"])
        # Frozen parameters (model.frozen, a text-only run's vision tower) have no optimizer partition: each rank's
        # model states hold its flat fragment, as DeepSpeed's zero_to_fp32 merges them.
        self._z3_frozen = {n: tuple(shape) for n, shape in (first.get("frozen_param_shapes") or {}).items()
                           if not EXPERT_PARAM.match(n)}
        self._dense += [n for n in self._z3_frozen if n not in self._z3_dense_index]

    def _optim(self, rank: int) -> dict:
        if rank not in self._z3_optim:
            path = self.dir / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
            if not path.exists():
                raise ValueError(f"{path}: missing ZeRO-3 optimizer shard (the fp32 weights live there)")
            self._z3_optim[rank] = _load(path)["optimizer_state_dict"]
        return self._z3_optim[rank]

    def _optim_meta(self, rank: int, group: int) -> dict:
        return self._optim(rank)["ds_zero_partition_groups"][group]

    def _gather(self, group: int, offset: int, shape: tuple[int, ...], ranks: list[int]) -> torch.Tensor:
        numel = math.prod(shape)
        chunk = math.ceil(numel / len(ranks))
        pieces = [self._optim(r)["fp32_flat_groups"][group][offset:offset + chunk] for r in ranks]
        return torch.cat(pieces)[:numel].view(shape).detach().clone()

    def _zero3_read(self, name: str) -> torch.Tensor:
        if name in self._z3_frozen and name not in self._z3_dense_index:
            shape = self._z3_frozen[name]
            pieces = [states["frozen_param_fragments"][name] for states in self._z3_models]
            return torch.cat(pieces)[:math.prod(shape)].view(shape).detach().clone()
        if name not in self._z3_dense_index:
            raise KeyError(f"{self.dir}: no parameter {name!r}")
        group, offset, shape = self._z3_dense_index[name]
        return self._gather(group, offset, shape, list(self._optim_meta(0, group)["partition_ranks"]))

    def _zero3_read_expert(self, layer: MoELayer, expert: int, w: str) -> torch.Tensor:
        target = f"{layer.module_path}.experts.{w}"
        for rank, states in enumerate(self._z3_models):
            entry = states["ds_autoep_layers"][layer.moe_layer_id]
            start, end = int(entry["global_expert_start"]), int(entry["global_expert_end"])
            if not start <= expert < end:
                continue
            for g, shapes in enumerate(states["param_shapes"]):
                offset = 0
                meta = self._optim_meta(rank, g)
                for name, shape in shapes.items():
                    if name == target:
                        full = self._gather(g, offset, tuple(shape), list(meta["partition_ranks"]))
                        return full[expert - start].detach().clone()
                    offset += math.ceil(math.prod(shape) / meta["partition_count"])
        raise ValueError(f"{self.dir}: no rank holds {target} expert {expert}")

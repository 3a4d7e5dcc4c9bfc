"""Load a local Hugging Face checkpoint into the transformers model, reading only what this EP rank owns.

Called by `build_model` for `model.init_from`, before `deepspeed.initialize`: AutoEP then keeps only the
local experts of each MoE layer, so this rank reads every non-expert tensor but only the experts
`[ep_rank * E / ep_size, (ep_rank + 1) * E / ep_size)` (per-expert keys, or row slices of fused keys through
safetensors' lazy `get_slice`). `build_rank_local` builds the model on the meta device and gives every
parameter uninitialised memory (`torch.empty`): nothing is random-initialised, and the rows of the other
ranks' experts are never written, so the OS never backs them with pages; AutoEP slices out the owned rows
and the source tensors are freed. (On a model built the ordinary way the other experts keep their init.)
Bad input fails naming the file and the tensor: a missing index, a shard missing or truncated, a tensor
whose shape does not match the model, a model tensor absent from the checkpoint.
`mtp.*` tensors (multi-token prediction) have no place in the transformers model: without `model.mtp_layers` they
are skipped here and the exporter carries them from this folder to the export; with it they are read into `model.mtp`
(train/models/mtp.py), or, when the folder has none, the MTP layer starts fresh.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn as nn
from accelerate import init_empty_weights
from safetensors import safe_open
from transformers import PretrainedConfig, PreTrainedModel

from train.models.hf_adapter import HEAD_WEIGHT, ImportTarget, from_hf, head_is_tied

log = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# Weights from outside are read from safetensors only: these formats unpickle arbitrary objects.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
SKIPPED_PREFIXES = ("mtp.",)


def shard_index(folder: str | Path) -> dict[str, Path]:
    """{tensor name: shard file} from the index, or from a single `model.safetensors`."""
    folder = Path(folder)
    index = folder / INDEX
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{index}: not a valid safetensors index ({e})") from e
        return {name: folder / file for name, file in weight_map.items()}
    if (folder / SINGLE).exists():
        with _open(folder / SINGLE, "<header>") as f:
            return {name: folder / SINGLE for name in f.keys()}
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    if shards:
        raise ValueError(f"{index}: missing, but {folder} holds {len(shards)} shard(s) ({shards[0]}, ...); "
                         f"the index is needed to know which tensor is in which file")
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise ValueError(f"{folder}: only pickle-based weights ({', '.join(pickled[:3])}); they can run code when "
                         "loaded and are refused. Convert them to safetensors with a trusted tool first.")
    raise ValueError(f"{folder}: neither {INDEX} nor {SINGLE} found")


class _open:
    """safe_open with errors that name the file and the tensor being read."""

    def __init__(self, path: Path, tensor: str) -> None:
        self.path, self.tensor = path, tensor

    def __enter__(self):
        if not self.path.exists():
            raise ValueError(f"{self.path}: shard file missing (needed for tensor {self.tensor})")
        try:
            self._ctx = safe_open(str(self.path), framework="pt", device="cpu")
            return self._ctx.__enter__()
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type
            raise ValueError(f"{self.path}: corrupt or truncated safetensors file while reading tensor "
                             f"{self.tensor} ({e})") from e

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)


def _read(f, path: Path, name: str, rows: slice | None = None) -> torch.Tensor:
    try:
        return f.get_slice(name)[rows] if rows is not None else f.get_tensor(name)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: cannot read tensor {name} (corrupt or truncated file?): {e}") from e


def _check_shape(path: Path, name: str, got: tuple[int, ...], want: tuple[int, ...], param: str) -> None:
    if tuple(got) != tuple(want):
        raise ValueError(f"{path}: tensor {name} has shape {list(got)}, the model's {param} needs {list(want)}")


def build_rank_local(model_cls: type[PreTrainedModel], hf_config: PretrainedConfig, dtype: torch.dtype,
                     folder: str | Path, ep_rank: int = 0, ep_size: int = 1, mtp_layers: int = 0) -> PreTrainedModel:
    """The model holding this EP rank's weights from `folder`, without ever materialising the whole model.

    Parameters are created on the meta device (buffers such as rotary frequencies stay real), then given
    uninitialised CPU memory; `load_hf_weights` writes every non-expert tensor and the owned expert rows.
    With `mtp_layers` the model gets `model.mtp`: read from the folder's `mtp.*` (which must have that many layers),
    or drawn fresh (global RNG) when the folder has none.
    """
    from train.models.mtp import attach_mtp, stored_mtp_layers

    stored = stored_mtp_layers(list(shard_index(folder)))
    if stored is not None and not mtp_layers:
        log.warning("%s holds a multi-token prediction module (mtp.*); with model.mtp_layers=0 it goes to the export "
                    "unchanged and will draft for the trunk it was trained with, not this one (set model.mtp_layers="
                    "%d and loss.mtp_coef to train it along)", folder, stored or 1)
    if mtp_layers and stored is not None and stored != mtp_layers:
        raise ValueError(f"{folder}: the checkpoint holds {stored} MTP layer(s) (mtp.layers.N.*) but "
                         f"model.mtp_layers={mtp_layers}")
    with init_empty_weights(include_buffers=False):
        model = model_cls._from_config(hf_config, dtype=dtype)
        if mtp_layers and stored:
            attach_mtp(model, mtp_layers, initialise=False)
    materialize_empty(model)
    load_hf_weights(model, folder, ep_rank, ep_size)
    if mtp_layers and stored is None:
        log.info("%s has no mtp.* tensors: the MTP layer starts from a fresh initialisation", folder)
        attach_mtp(model, mtp_layers)
    return model


def materialize_empty(model: nn.Module) -> None:
    """Replace meta parameters by `torch.empty` CPU tensors (untouched pages cost no memory); ties are kept."""
    done: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None or p.device.type != "meta":
                continue
            if id(p) not in done:
                done[id(p)] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="cpu"),
                                           requires_grad=p.requires_grad)
            module._parameters[name] = done[id(p)]


def load_hf_weights(model: nn.Module, folder: str | Path, ep_rank: int = 0, ep_size: int = 1,
                    prefix: str = "") -> dict[str, int]:
    """Copy the checkpoint in `folder` into `model`, reading only this EP rank's experts; with `prefix` only the
    tensors (and model parameters) under it, e.g. "mtp." into a model transformers loaded without them.

    Returns {"read": tensors read, "bytes": bytes of tensor data read, "skipped": mtp tensors left out (all of them
    unless the model has `model.mtp`)}.
    """
    index = {name: path for name, path in shard_index(folder).items() if name.startswith(prefix)}
    params = {n: p for n, p in model.state_dict(keep_vars=True).items() if n.startswith(prefix)}
    by_file: dict[Path, list[tuple[str, ImportTarget]]] = defaultdict(list)
    skipped = 0
    skipped_prefixes = () if hasattr(model, "mtp") else SKIPPED_PREFIXES
    for name, path in index.items():
        if name.startswith(skipped_prefixes):
            skipped += 1
            continue
        target = from_hf(name)
        if target.param not in params:
            raise ValueError(f"{path}: tensor {name} has no place in {type(model).__name__} (as {target.param})")
        by_file[path].append((name, target))

    filled: dict[str, set[int] | bool] = {}
    read = nbytes = 0
    with torch.no_grad():
        for path, entries in by_file.items():
            with _open(path, entries[0][0]) as f:
                for name, t in entries:
                    got = _copy_one(f, path, name, t, params[t.param], ep_rank, ep_size, filled)
                    if got is not None:
                        read, nbytes = read + 1, nbytes + got
    _check_complete(model, params, filled, Path(folder), ep_rank, ep_size)
    log.info("loaded %d tensors from %s (ep_rank %d of %d; %d mtp tensors left for export)", read, folder,
             ep_rank, ep_size, skipped)
    return {"read": read, "bytes": nbytes, "skipped": skipped}


def _owned(num_experts: int, ep_rank: int, ep_size: int) -> range:
    n = num_experts // ep_size
    return range(ep_rank * n, (ep_rank + 1) * n)


def _copy_one(f, path: Path, name: str, t: ImportTarget, param: torch.Tensor, ep_rank: int, ep_size: int,
              filled: dict) -> int | None:
    """Copy one on-disk tensor (or this rank's rows of it) into `param`. Returns the bytes read; None: not owned."""
    if t.expert is None and not t.fused:
        shape = tuple(f.get_slice(name).get_shape())
        _check_shape(path, name, shape, tuple(param.shape), t.param)
        data = _read(f, path, name)
        param.copy_(data.to(param.dtype))
        filled[t.param] = True
        return _nbytes(data)
    owned = _owned(param.shape[0], ep_rank, ep_size)
    if t.fused:
        shape = tuple(f.get_slice(name).get_shape())
        _check_shape(path, name, shape, tuple(param.shape), t.param)
        rows = slice(owned.start, owned.stop)
        data = _read(f, path, name, rows)
        param[rows].copy_(data.to(param.dtype))
        filled.setdefault(t.param, set()).update(("whole", e) for e in owned)
        return _nbytes(data)
    if t.expert not in owned:
        return None
    if t.expert >= param.shape[0]:
        raise ValueError(f"{path}: tensor {name}: expert {t.expert} but the model has {param.shape[0]} experts")
    dest = param[t.expert]
    if t.half is not None:
        half = dest.shape[0] // 2
        dest = dest[:half] if t.half == "gate" else dest[half:]
    shape = tuple(f.get_slice(name).get_shape())
    _check_shape(path, name, shape, tuple(dest.shape), f"{t.param}[{t.expert}]" + (f" {t.half} rows" if t.half else ""))
    data = _read(f, path, name)
    dest.copy_(data.to(param.dtype))
    filled.setdefault(t.param, set()).add((t.half or "whole", t.expert))
    return _nbytes(data)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _check_complete(model: nn.Module, params: dict, filled: dict, folder: Path, ep_rank: int, ep_size: int) -> None:
    tied = head_is_tied(model.config) and HEAD_WEIGHT in params
    missing = []
    for pname, p in params.items():
        if pname.endswith(".experts.gate_up_proj") or pname.endswith(".experts.down_proj"):
            parts = ("whole",) if pname.endswith("down_proj") else ("gate", "up")
            got = filled.get(pname, set())
            need = {(h, e) for e in _owned(p.shape[0], ep_rank, ep_size) for h in parts}
            if isinstance(got, set) and any(("whole", e) in got for _, e in need):
                got = got | {(h, e) for h, e in need if ("whole", e) in got}
            if not need <= got:
                missing.append(f"{pname} (experts {sorted({e for _, e in need - got})})")
        elif pname not in filled and not (tied and pname == HEAD_WEIGHT) and isinstance(p, nn.Parameter):
            missing.append(pname)
    if missing:
        raise ValueError(f"{folder}: {len(missing)} model tensor(s) not found in the checkpoint: {missing[:5]}")
    if tied:
        model.tie_weights()

"""A sha256 manifest per checkpoint folder, hashed and verified in parallel by all ranks.

Verification runs before anything in the folder is unpickled, so a truncated or bit-flipped file is
reported by name instead of surfacing as an unpickling error (or, worse, as silently wrong weights).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch.distributed as dist

MANIFEST = "manifest.json"
_CHUNK = 1 << 22


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _all_gather(obj: object) -> list:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _rank_world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def payload_files(folder: Path, exclude: set[str]) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name not in exclude)


def build_manifest(folder: Path, exclude: set[str], collective: bool = True) -> dict[str, dict]:
    """Collective (every rank hashes a slice of the files; every rank gets the whole manifest) unless
    `collective=False`: then this process hashes every file, alone."""
    rank, world = _rank_world() if collective else (0, 1)
    names = payload_files(folder, exclude)
    mine = {n: {"sha256": sha256_file(folder / n), "bytes": (folder / n).stat().st_size} for n in names[rank::world]}
    manifest: dict[str, dict] = {}
    for part in _all_gather(mine) if collective else [mine]:
        manifest.update(part)
    return manifest


def write_manifest(folder: Path, manifest: dict[str, dict]) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def verify_manifest(folder: Path, collective: bool = True) -> list[str]:
    """The problems found (missing manifest, missing, resized or changed files); empty when intact. Collective
    (every rank checks a slice) unless `collective=False`: then this process checks every file, alone."""
    path = folder / MANIFEST
    if not path.exists():
        return [f"{path}: missing"]
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        return [f"{path}: unreadable ({e})"]
    rank, world = _rank_world() if collective else (0, 1)
    problems = []
    for name in sorted(manifest)[rank::world]:
        f = folder / name
        entry = manifest[name]
        if not f.exists():
            problems.append(f"{f}: missing")
        elif f.stat().st_size != entry["bytes"]:
            problems.append(f"{f}: {f.stat().st_size} bytes, manifest says {entry['bytes']} (truncated?)")
        elif sha256_file(f) != entry["sha256"]:
            problems.append(f"{f}: sha256 differs from the manifest (corrupted)")
    return sorted(p for part in (_all_gather(problems) if collective else [problems]) for p in part)

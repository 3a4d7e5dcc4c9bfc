"""Key map between the training model's names (AutoEP/DeepSpeed) and Hugging Face on-disk names, per family.

Three name spaces meet here:
- DS (training): `...mlp.router.gate.weight`, `...mlp.experts.w1|w2|w3` [E, ...] (w1 gate, w3 up, w2 down),
  `...mlp.shared_experts.*`, `...mlp.shared_experts_gate.weight`, plus the alias `...mlp.gate.gate.weight`.
- HF on disk (released checkpoints, vLLM/SGLang): `...mlp.gate.weight`, per-expert
  `...mlp.experts.{e}.gate_proj|up_proj|down_proj.weight`, `...mlp.shared_expert.*`,
  `...mlp.shared_expert_gate.weight`; fused `...mlp.experts.gate_up_proj` [E, 2I, H] / `down_proj` [E, H, I]
  are accepted on import.
- HF in memory (transformers 5): fused `...mlp.experts.gate_up_proj` [E, 2I, H] (gate rows first) and
  `...mlp.experts.down_proj` [E, H, I].
`to_hf` goes DS -> disk (export), `from_hf` goes disk -> memory (import). Everything else keeps its name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

# DS -> HF renames shared by both families (applied to non-expert names), and DS aliases with no HF tensor.
_DS_TO_HF = (
    (re.compile(r"\.mlp\.router\.gate\.(weight|bias)$"), r".mlp.gate.\1"),
    (re.compile(r"\.mlp\.shared_experts_gate\."), ".mlp.shared_expert_gate."),
    (re.compile(r"\.mlp\.shared_experts\."), ".mlp.shared_expert."),
)
_DS_ALIASES = (re.compile(r"\.mlp\.gate\.gate\.(weight|bias)$"),)

# Per-expert projection -> (AutoEP weight, row half of the fused gate_up_proj or None for down_proj).
PROJ_TO_DS = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}
_PER_EXPERT = re.compile(r"^(?P<mlp>.+\.mlp)\.experts\.(?P<e>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight$")
_FUSED = re.compile(r"^(?P<mlp>.+\.mlp)\.experts\.(?P<proj>gate_up_proj|down_proj)$")


@dataclass(frozen=True)
class FamilyKeys:
    """What differs between families: where the decoder layers live and which extra prefixes exist."""

    layers_prefix: str
    extra_prefixes: tuple[str, ...]  # carried as they are (vision tower, multi-token prediction)


FAMILY_KEYS = {
    "qwen3_moe": FamilyKeys("model.layers.", ()),
    "qwen3_5_moe": FamilyKeys("model.language_model.layers.", ("model.visual.", "mtp.")),
}


def family_keys(family: str) -> FamilyKeys:
    if family not in FAMILY_KEYS:
        raise ValueError(f"model family {family!r} has no HF key map (known: {sorted(FAMILY_KEYS)})")
    return FAMILY_KEYS[family]


HEAD_WEIGHT = "lm_head.weight"  # the output head, in both families; absent on disk when tied to the embedding


def head_is_tied(config) -> bool:
    """Whether the output head is the input embedding: transformers decides it from the model's own config (for
    Qwen3.5-MoE the top level, whatever its text_config says), so import and export read it from there too."""
    return bool(getattr(config, "tie_word_embeddings", False))


def to_hf(ds_name: str) -> str | None:
    """HF on-disk name of a non-expert training parameter; None for DS-only aliases."""
    if any(p.search(ds_name) for p in _DS_ALIASES):
        return None
    for pattern, repl in _DS_TO_HF:
        ds_name = pattern.sub(repl, ds_name)
    return ds_name


def expert_to_hf(module_path: str, expert: int, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One expert's AutoEP weights {"w1","w2","w3"} as per-expert HF tensors (`module_path` is `...mlp`)."""
    base = f"{module_path}.experts.{expert}"
    return {f"{base}.{proj}.weight": weights[w] for proj, w in PROJ_TO_DS.items()}


@dataclass(frozen=True)
class ImportTarget:
    """Where an on-disk tensor goes in the transformers model (before AutoEP)."""

    param: str
    expert: int | None = None  # per-expert key: the expert index
    half: str | None = None  # "gate" or "up" rows of gate_up_proj; None for the whole expert slice
    fused: bool = False  # a fused [E, ...] tensor: only the owned expert rows are read


def from_hf(disk_name: str) -> ImportTarget:
    """Map an on-disk HF name (per-expert or fused) to the in-memory transformers parameter."""
    m = _PER_EXPERT.match(disk_name)
    if m:
        proj = m["proj"]
        param = f"{m['mlp']}.experts.{'down_proj' if proj == 'down_proj' else 'gate_up_proj'}"
        half = {"gate_proj": "gate", "up_proj": "up", "down_proj": None}[proj]
        return ImportTarget(param, expert=int(m["e"]), half=half)
    if _FUSED.match(disk_name):
        return ImportTarget(disk_name, fused=True)
    return ImportTarget(disk_name)

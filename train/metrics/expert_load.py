"""Per-layer expert load: the routed counts of each step's real tokens, summed over a logging window.

AutoEP's own `tokens_per_expert` buffer is never reset and also counts activation-checkpoint recomputes, so
the counts come from the top-k of the captured router logits of the real forward passes only, without padding
(`train.engine.load_balance.routed_counts`, the counts the load-balancing loss uses).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


class ExpertLoad:
    def __init__(self, num_layers: int, num_experts: int, top_k: int) -> None:
        self.num_experts = num_experts
        self.top_k = top_k
        self.counts = torch.zeros(num_layers, num_experts, dtype=torch.float64)

    def update(self, counts: torch.Tensor) -> None:
        """Add one micro-batch's (MoE layers, experts) routed counts (kept on their device: no sync here)."""
        if self.counts.device != counts.device:
            self.counts = self.counts.to(counts.device)
        self.counts[:len(counts)] += counts.detach().double()

    def reduce_and_reset(self, device: torch.device) -> dict:
        """Sum over all ranks (collective: every rank must call it) and summarise; then start a new window."""
        counts = self.counts.clone().to(device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(counts)
        counts = counts.cpu()
        self.counts.zero_()
        return summarize(counts)


def summarize(counts: torch.Tensor) -> dict:
    """Imbalance (max/mean), dead experts and load entropy (1.0 = uniform) per layer and overall."""
    mean = counts.mean(dim=1).clamp_min(1e-12)
    imbalance = counts.max(dim=1).values / mean
    dead = (counts == 0).sum(dim=1)
    p = counts / counts.sum(dim=1, keepdim=True).clamp_min(1e-12)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(dim=1) / math.log(counts.shape[1])
    return {
        "expert/imbalance_max": float(imbalance.max()),
        "expert/imbalance_mean": float(imbalance.mean()),
        "expert/dead": int(dead.sum()),
        "expert/entropy_min": float(entropy.min()),
        "expert/per_layer": {
            "imbalance": [round(float(x), 4) for x in imbalance],
            "dead": [int(x) for x in dead],
            "entropy": [round(float(x), 4) for x in entropy],
            "load": counts.to(torch.int64).tolist(),
        },
    }


class CollapseMonitor:
    """Warns when an expert gets no tokens for `dead_windows` logging windows in a row, or when a layer's
    load imbalance (max/mean) exceeds `max_imbalance`: the two faces of expert collapse."""

    def __init__(self, dead_windows: int, max_imbalance: float) -> None:
        self.dead_windows = dead_windows
        self.max_imbalance = max_imbalance
        self._dead_streak: torch.Tensor | None = None

    def check(self, summary: dict) -> list[str]:
        per_layer = summary["expert/per_layer"]
        load = torch.tensor(per_layer["load"])
        dead = load == 0
        self._dead_streak = (self._dead_streak + 1) * dead if self._dead_streak is not None else dead.long()
        warnings = []
        for layer, streak in enumerate(self._dead_streak):
            experts = (streak >= self.dead_windows).nonzero().flatten().tolist()
            if experts:
                warnings.append(f"layer {layer}: experts {experts} received no tokens for "
                                f"{self.dead_windows}+ logging windows")
        for layer, imbalance in enumerate(per_layer["imbalance"]):
            if imbalance > self.max_imbalance:
                warnings.append(f"layer {layer}: load imbalance {imbalance:.2f} > {self.max_imbalance}")
        return warnings

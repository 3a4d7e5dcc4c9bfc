"""The multi-token prediction loss: cross entropy of the MTP head on the labels shifted by one more position.

The trunk's loss at position t predicts labels[t+1]; the MTP head at t (which has read token t+1) predicts
labels[t+2]. Whatever the labels mask (the SFT loss mask, padding, each document's first token) stays masked, and in
packed rows a target counts only when t and t+2 lie in the same document (position ids restart at 0 per document):
at a document's last position the MTP head has read the next document's first token, and predicts nothing.
The loss is the mean over the remaining positions, like the trunk's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from train.engine.losses import IGNORE_INDEX
from train.models.mtp import TrunkTap, mtp_logits


def mtp_targets(labels: torch.Tensor, text_positions: torch.Tensor | None) -> torch.Tensor:
    """[B, T]: labels[t+2] where t and t+2 are in the same document, IGNORE_INDEX elsewhere (and at the last two)."""
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-2] = labels[:, 2:]
    if text_positions is not None:
        document = (text_positions == 0).cumsum(dim=1)
        targets[:, :-2].masked_fill_(document[:, :-2] != document[:, 2:], IGNORE_INDEX)
    return targets


@dataclass
class MtpTerms:
    loss: torch.Tensor
    router_logits: tuple[torch.Tensor, ...]
    logits: torch.Tensor  # rows of MTP logits computed (a count, for FLOPs)


class MtpObjective:
    """Reads each trunk forward through a `TrunkTap` and returns the MTP head's loss on its batch."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.tap = TrunkTap(model)

    def __call__(self, labels: torch.Tensor) -> MtpTerms:
        trunk = self.tap.pop()
        targets = mtp_targets(labels.to(trunk.hidden.device), trunk.text_positions)
        keep = targets != IGNORE_INDEX
        logits, router_logits = mtp_logits(self.model, trunk, keep)
        if logits.shape[0] == 0:  # no target in this micro-batch: a zero that still reaches every MTP parameter
            loss = torch.stack([p.sum() for p in self.model.mtp.parameters()]).sum() * 0.0
        else:
            loss = F.cross_entropy(logits.float(), targets[keep])
        return MtpTerms(loss=loss, router_logits=router_logits, logits=keep.sum())

"""Training losses: causal-LM cross entropy, HF's load-balancing aux loss, and a router z-loss.

All three read the model's outputs; router logits come from HF's output capture (AutoEP returns them raw
after `autoep_shims.capture_raw_router_logits`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

IGNORE_INDEX = -100


@dataclass
class LossTerms:
    total: torch.Tensor
    lm: torch.Tensor
    aux: torch.Tensor
    z: torch.Tensor


def labelled_logit_positions(labels: torch.Tensor) -> torch.Tensor:
    """Boolean (batch, seq) mask of the positions whose next token is labelled: the only logits the loss reads.

    Passed to the model as `logits_to_keep`, the LM head runs on these rows alone. At the tiny demo's size the
    head (hidden x vocab) costs about as much as the three layers under it, and fine-tuning labels only the
    assistant's tokens, so most of that cost was spent on logits nobody used.
    """
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy over labelled positions, in fp32, as transformers computes it.

    `logits` is either (batch, seq, vocab) or (n, vocab): the rows at `labelled_logit_positions(labels)`, in order.
    """
    shift_labels = labels[:, 1:].to(logits.device)
    if logits.dim() == 2:
        return F.cross_entropy(logits.float(), shift_labels[shift_labels != IGNORE_INDEX])
    shift_logits = logits[:, :-1, :].float().reshape(-1, logits.shape[-1])
    return F.cross_entropy(shift_logits, shift_labels.reshape(-1), ignore_index=IGNORE_INDEX)


def load_balancing_loss(router_logits: tuple[torch.Tensor, ...], num_experts: int, top_k: int) -> torch.Tensor:
    """transformers' own Switch-style aux loss over all MoE layers (no re-implementation)."""
    return load_balancing_loss_func(router_logits, num_experts, top_k, None)


def router_z_loss(router_logits: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """ST-MoE z-loss: mean squared log-partition of the router logits, averaged over layers."""
    per_layer = [torch.logsumexp(x.float(), dim=-1).square().mean() for x in router_logits]
    return torch.stack(per_layer).mean()


def moe_losses(logits: torch.Tensor, labels: torch.Tensor, router_logits: tuple[torch.Tensor, ...],
               num_experts: int, top_k: int, aux_coef: float, z_coef: float,
               aux: torch.Tensor | None = None) -> LossTerms:
    """`aux`: a load-balancing loss computed by the caller (train/engine/load_balance.py), else transformers'."""
    lm = causal_lm_loss(logits, labels)
    aux = load_balancing_loss(router_logits, num_experts, top_k) if aux is None else aux
    z = router_z_loss(router_logits)
    return LossTerms(total=lm + aux_coef * aux + z_coef * z, lm=lm, aux=aux, z=z)


def vision_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The vision tower's trainable parameters (empty for text-only models)."""
    return [p for n, p in model.named_parameters() if p.requires_grad and ".visual." in f".{n}"]


def touch_unused(params: list[torch.nn.Parameter], unused: bool) -> torch.Tensor | float:
    """0 x the parameters that a text-only micro-batch leaves out of the graph. Every rank must produce a
    gradient for every parameter, or ZeRO's gradient reduction sees different buffer sizes on different
    ranks (gloo: "Received data size doesn't match expected size") when one rank's batch has images and
    another's has none."""
    if not (unused and params):
        return 0.0
    return torch.stack([p.sum() for p in params]).sum() * 0.0

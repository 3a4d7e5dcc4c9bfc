"""The load-balancing loss over a micro-batch (transformers' Qwen loss) or over the global batch (Qwen's).

Both modes are one formula, transformers' `load_balancing_loss_func`, with the same coefficient (`loss.aux_coef`):

    aux = E * sum_i f_i * P_i,   f_i = n_i / (L * T),   P_i = sum_{l, x} p_{l,x,i} / (L * T)

over E experts and the L MoE layers of the model (transformers averages f and P over the layers before the
product), where n_i counts the top-k choices of expert i over the layers, p_{l,x,i} is layer l's router
probability of expert i for token x, and T counts real tokens (padding is excluded). At perfect balance
aux = k, the router's top-k. What differs is the set of tokens f is counted over:

- `micro_batch`: each micro-batch of each rank on its own (transformers' function itself). With one or two
  sequences per micro-batch this is close to sequence-level balancing: every sequence must spread over every
  expert, so experts cannot specialise by domain.
- `global_batch` (Qwen, arXiv 2501.11873; Megatron-Core's `global_aux_loss`): f over every data-parallel rank
  and every gradient-accumulation micro-batch of the step. Micro-batch m's f is the share over the global
  micro-batches 1..m of the step (a running count reset at each step, all-reduced across ranks in the forward
  pass, so micro-batch m does not wait for the later ones), as Megatron-Core keeps `global_tokens_per_expert`
  and `ga_steps` in its router (`router.py`, `_apply_global_aux_loss`). Megatron divides the running mean count
  by the current micro-batch's tokens; here the running count is divided by the running token count, the same
  number whenever micro-batches have equal numbers of real tokens (Megatron's case without a padding mask), and
  still a share when they differ. f is a constant (top-k counts carry no gradient); P stays local: rank r's
  P_i is its probability mass over T_m / W, with T_m the micro-batch's real tokens over all W ranks, so that the
  mean over ranks of the per-rank losses (what data-parallel gradient averaging differentiates, and what the
  loop logs) is exactly the single-process loss on every rank's tokens together. Megatron-Core normalises by
  T_m instead, which scales its gradient down by the data-parallel size (NVIDIA/Megatron-LM#3672).

At world size 1 with one micro-batch the two modes are the same number. The routed counts (real tokens only,
per layer) are also what the expert-load metrics log.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

from train.config import BALANCE_MODES


def routed_counts(router_logits: tuple[torch.Tensor, ...], top_k: int, num_experts: int,
                  token_mask: torch.Tensor | None) -> torch.Tensor:
    """(layers, experts) float64: how many real tokens each layer sent to each expert (its top-k of the softmax,
    as the router picks them)."""
    counts = []
    for logits_NE in router_logits:
        chosen_NK = torch.softmax(logits_NE.detach().float(), dim=-1).topk(top_k, dim=-1).indices
        weight_NK = (torch.ones_like(chosen_NK, dtype=torch.float64) if token_mask is None else
                     token_mask.reshape(-1, 1).to(chosen_NK.device, torch.float64).expand_as(chosen_NK))
        counts.append(torch.zeros(num_experts, dtype=torch.float64, device=chosen_NK.device)
                      .scatter_add_(0, chosen_NK.reshape(-1), weight_NK.reshape(-1)))
    return torch.stack(counts)


class LoadBalancingLoss:
    """Called once per micro-batch with the model's router logits; `start_step()` before each optimizer step.

    Returns the loss and this rank's routed counts of the micro-batch. In `global_batch` mode every rank must
    call it for every micro-batch (one all-reduce of layers x experts + 1 numbers each time).
    """

    def __init__(self, mode: str, num_experts: int, top_k: int, group: dist.ProcessGroup | None = None) -> None:
        if mode not in BALANCE_MODES:
            raise ValueError(f"loss.balance={mode!r} is not one of {BALANCE_MODES}")
        self.mode = mode
        self.num_experts = num_experts
        self.top_k = top_k
        self.group = group
        self._step_counts: torch.Tensor | None = None  # (layers, experts), global, micro-batches 1..m of the step
        self._step_tokens: torch.Tensor | None = None

    def start_step(self) -> None:
        self._step_counts, self._step_tokens = None, None

    def __call__(self, router_logits: tuple[torch.Tensor, ...],
                 token_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        counts = routed_counts(router_logits, self.top_k, self.num_experts, token_mask)
        if self.mode == "micro_batch":
            return load_balancing_loss_func(router_logits, self.num_experts, self.top_k, token_mask), counts
        return self._global_batch_loss(router_logits, token_mask, counts), counts

    def _global_batch_loss(self, router_logits: tuple[torch.Tensor, ...], token_mask: torch.Tensor | None,
                           counts_LE: torch.Tensor) -> torch.Tensor:
        device = router_logits[0].device
        num_layers = len(router_logits)
        mask_N = None if token_mask is None else token_mask.reshape(-1).to(device, torch.float32)
        local_tokens = float(router_logits[0].shape[0]) if mask_N is None else mask_N.sum().double()
        stats = torch.cat([counts_LE.reshape(-1), torch.as_tensor(local_tokens, dtype=torch.float64,
                                                                  device=device).reshape(1)])
        world = 1
        if dist.is_initialized() and dist.get_world_size(self.group) > 1:
            world = dist.get_world_size(self.group)
            dist.all_reduce(stats, group=self.group)
        micro_counts, micro_tokens = stats[:-1].reshape(counts_LE.shape), stats[-1]
        if self._step_counts is None:
            self._step_counts, self._step_tokens = micro_counts, micro_tokens
        else:
            self._step_counts, self._step_tokens = self._step_counts + micro_counts, self._step_tokens + micro_tokens
        f_E = (self._step_counts.sum(0) / (num_layers * self._step_tokens.clamp_min(1))).float()
        # the same accumulation as transformers' function, so one process with one micro-batch matches it exactly
        prob_sum_E = torch.zeros(self.num_experts, dtype=torch.float32, device=device)
        for logits_NE in router_logits:
            probs_NE = torch.softmax(logits_NE.float(), dim=-1)
            prob_sum_E = prob_sum_E + (probs_NE.sum(0) if mask_N is None else (probs_NE * mask_N[:, None]).sum(0))
        local_share = (micro_tokens / world).clamp_min(1).float()  # T_m / W
        p_E = prob_sum_E / (num_layers * local_share)
        return torch.sum(f_E * p_E) * self.num_experts

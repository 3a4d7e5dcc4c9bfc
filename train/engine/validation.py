"""Validation loss while training: every rank runs its held-out micro-batches, without gradients, in eval mode.

Every rank runs the same number of forwards (expert parallelism all-to-alls in each one); the sums are reduced
over all ranks. The training run does not notice: the RNG state is restored afterwards, the model is back in
train mode, and the training batches are never touched (the held-out batches are their own object).

    val/lm_loss          next-token cross entropy over every labelled held-out position (token-weighted mean)
    val/loss             val/lm_loss + aux_coef x aux + z_coef x z (batch means), the training loss's definition
    val/<name>/loss      one held-out set's token-weighted cross entropy
    val/tokens, val/seconds   labelled positions evaluated (all ranks), wall time of the evaluation
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from train.checkpoint.checkpointer import rng_state, set_rng_state
from train.engine.losses import labelled_logit_positions, moe_losses


@dataclass
class ValidationSettings:
    num_experts: int
    top_k: int
    aux_coef: float
    z_coef: float


def evaluate(engine, batches, s: ValidationSettings, device: torch.device) -> dict[str, float]:
    """Collective: call on every rank. The metrics above, the same on every rank."""
    t0 = time.perf_counter()
    rng = rng_state()
    sums = torch.zeros(len(batches.names), 5, dtype=torch.float64)  # lm x tokens, tokens, aux, z, batches
    engine.eval()
    try:
        with torch.no_grad():
            for i, mb in batches:
                inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in mb["inputs"].items()}
                labels = mb["labels"].to(device)
                keep = labelled_logit_positions(labels)
                out = engine(**inputs, output_router_logits=True, use_cache=False, logits_to_keep=keep)
                terms = moe_losses(out.logits, labels, out.router_logits, s.num_experts, s.top_k, s.aux_coef,
                                   s.z_coef)
                n = keep.sum().double().cpu()
                lm_sum = terms.lm.double().cpu() * n if n > 0 else torch.zeros((), dtype=torch.float64)
                sums[i] += torch.stack([lm_sum, n, terms.aux.double().cpu(), terms.z.double().cpu(),
                                        torch.ones((), dtype=torch.float64)])
    finally:
        engine.train()
        set_rng_state(rng)
    reduced = sums.to(device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(reduced)
    lm_sum, tokens, aux, z, count = reduced.cpu().sum(0).tolist()
    lm = lm_sum / max(tokens, 1.0)
    out = {"val/loss": lm + s.aux_coef * aux / count + s.z_coef * z / count, "val/lm_loss": lm,
           "val/tokens": int(tokens)}
    for name, row in zip(batches.names, reduced.cpu(), strict=True):
        out[f"val/{name}/loss"] = float(row[0] / max(float(row[1]), 1.0))
    out["val/seconds"] = time.perf_counter() - t0
    return out

"""Shim 4: AutoEP's single-rank (EP=1) expert path on CPU as one sort, one gather and a per-expert loop of GEMMs.

Why: DeepSpeed 0.19.8 `AutoEPMoELayer._forward` at autoep_size=1 sorts the routed tokens, then
`permute_by_local_expert` pads every expert's rows to a multiple of 8 (on CPU a Python loop with `.item()` per
expert, a `vstack` copy and a padded gather whose backward is an accumulating `index_put_`), runs
`torch._grouped_mm` on transposed views of w1/w2/w3, scatters back with `index_put_` into zeros and combines
through a second `index_put_` into a zero [T*K, H] buffer. On the issue-7 CPU grid these copies cost about as
much as a third of the GEMM time (profile in docs/performance.md).

What this does instead, for layers with EP=1, the plain collective backend, no AutoTP folding, SwiGLU experts
and routing weights applied after the experts (both Qwen presets): the router is AutoEP's own; rows are sorted
by expert once and gathered once; the experts run as one autograd Function whose forward and backward loop over
experts with `torch.mm(..., out=)` on contiguous row slices (no padding, no index copies, weight gradients
written in place, only idle experts zero-filled); the combine is a permutation gather (its backward the inverse
gather) and the same per-token weighted `sum` over the top-k slots as upstream. Logits, losses and every
gradient equal upstream's up to float32 rounding: bitwise on the CPU this was written on, within one
ulp (6e-8 on logits) on an AMD EPYC whose GEMM rounds unpadded and padded row counts differently
(tests/models/test_autoep_local_experts.py); parity with
transformers is therefore that of upstream (tests/engine/test_autoep_matches_transformers.py).
Every other case (EP>1, DeepEP, folding, pre-scoring, Triton GEMM, experts partitioned by ZeRO-3) runs upstream's
`_forward` unchanged.

Remove when: AutoEP's EP=1 CPU path stops padding and calls a contiguous-weight grouped GEMM; the test
`test_upstream_still_pads_expert_rows_on_cpu` fails at that point.
"""

from __future__ import annotations

import types

import torch
import torch.nn as nn
import torch.nn.functional as F

from train.models.lora import expert_weights

EXPERTS_IMPLS = ("auto", "upstream", "local_loop")


class _RowPermutation(torch.autograd.Function):
    """rows[index] for a permutation `index`; the backward is the inverse gather (no accumulation, exact)."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return rows.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


class _LocalSwiGLUExperts(torch.autograd.Function):
    """SwiGLU experts over expert-contiguous rows: per expert `down(silu(x w1^T) * (x w3^T))`.

    `counts` (a Python list) gives each expert's number of rows; they must sum to the rows of `x`.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor,
                counts: list[int]) -> torch.Tensor:
        n_rows, inter = x.shape[0], w1.shape[1]
        gate_up = x.new_empty(n_rows, 2 * inter)
        gate, up = gate_up[:, :inter], gate_up[:, inter:]
        out = x.new_empty(n_rows, w2.shape[1])
        spans = _spans(counts)
        for e, (lo, hi) in spans:
            torch.mm(x[lo:hi], w1[e].t(), out=gate[lo:hi])
            torch.mm(x[lo:hi], w3[e].t(), out=up[lo:hi])
        h = F.silu(gate) * up
        for e, (lo, hi) in spans:
            torch.mm(h[lo:hi], w2[e].t(), out=out[lo:hi])
        ctx.spans = spans
        ctx.save_for_backward(x, w1, w2, w3, gate_up, h)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, w1, w2, w3, gate_up, h = ctx.saved_tensors
        spans = ctx.spans
        inter = w1.shape[1]
        gate, up = gate_up[:, :inter], gate_up[:, inter:]
        grad_out = grad_out.contiguous()
        # Written expert by expert; only experts that received no row are zero-filled (a full fill costs as much
        # memory traffic as the GEMMs at E/k = 16).
        grad_w1, grad_w2, grad_w3 = torch.empty_like(w1), torch.empty_like(w2), torch.empty_like(w3)
        idle = sorted(set(range(w1.shape[0])) - {e for e, _ in spans})
        for grad_w in (grad_w1, grad_w2, grad_w3):
            grad_w[idle] = 0
        grad_h = h.new_empty(h.shape)
        for e, (lo, hi) in spans:
            torch.mm(grad_out[lo:hi], w2[e], out=grad_h[lo:hi])
            torch.mm(grad_out[lo:hi].t(), h[lo:hi], out=grad_w2[e])
        # The same elementwise kernels autograd runs for `F.silu(gate) * up`.
        grad_gate_up = torch.empty_like(gate_up)
        torch.mul(grad_h, F.silu(gate), out=grad_gate_up[:, inter:])
        grad_gate_up[:, :inter] = torch.ops.aten.silu_backward(grad_h * up, gate)
        grad_x = x.new_empty(x.shape)
        for e, (lo, hi) in spans:
            grad_gate, grad_up = grad_gate_up[lo:hi, :inter], grad_gate_up[lo:hi, inter:]
            torch.mm(grad_gate.t(), x[lo:hi], out=grad_w1[e])
            torch.mm(grad_up.t(), x[lo:hi], out=grad_w3[e])
            torch.mm(grad_gate, w1[e], out=grad_x[lo:hi])
            grad_x[lo:hi].addmm_(grad_up, w3[e])
        return grad_x, grad_w1, grad_w2, grad_w3, None


def _spans(counts: list[int]) -> list[tuple[int, tuple[int, int]]]:
    spans, lo = [], 0
    for e, c in enumerate(counts):
        if c:
            spans.append((e, (lo, lo + c)))
        lo += c
    return spans


def local_experts_forward(layer: nn.Module, hidden_states: torch.Tensor):
    """EP=1 forward of an `AutoEPMoELayer`: route, sort once, gather once, expert loop, permutation combine."""
    bsz, seqlen, hdim = hidden_states.shape
    x = hidden_states.reshape(-1, hdim)
    top_scores, selected, counts = layer.router(x, layer.expert_bias)
    with torch.no_grad():
        layer.tokens_per_expert.add_(counts)
    k = layer.top_k
    order = torch.argsort(selected.reshape(-1), stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    routed = x.index_select(0, order // k)
    w1, w2, w3 = expert_weights(layer.experts)  # with the LoRA delta when train/models/lora.py attached one
    out = _LocalSwiGLUExperts.apply(routed, w1.to(x.dtype), w2.to(x.dtype), w3.to(x.dtype), counts.tolist())
    weighted = out * top_scores.reshape(-1)[order].unsqueeze(-1)
    output = _RowPermutation.apply(weighted, inverse, order).view(-1, k, hdim).sum(dim=1).to(x.dtype)
    return layer._finalize_output(output.reshape(bsz, seqlen, hdim), x, hidden_states, hdim)


def _eligible(layer: nn.Module) -> bool:
    from deepspeed.module_inject.auto_ep_comm import COMM_BACKEND

    experts = layer.experts
    return (layer.ep_size == 1 and layer.comm_backend == COMM_BACKEND and layer.folding_group_handles is None
            and layer.score_apply == "post" and layer.combine_impl == "weighted_sum"
            and experts.activation == "swiglu" and not experts.use_triton_grouped_mm
            # ZeRO-3 partitions w1/w2/w3 (`ds_id`) and gathers them only around the experts module's own forward,
            # which this path does not call: such layers keep upstream's path
            and not hasattr(experts.w1, "ds_id"))


def use_local_experts(model: nn.Module, impl: str) -> int:
    """Route eligible AutoEP layers through `local_experts_forward`. Returns the number of layers switched.

    impl: "upstream" keeps DeepSpeed's path; "local_loop" switches eligible layers; "auto" switches them only
    while their expert weights are on the CPU (on a GPU upstream's grouped GEMM is the faster path).
    """
    from deepspeed.module_inject.auto_ep_layer import AutoEPMoELayer

    if impl not in EXPERTS_IMPLS:
        raise ValueError(f"parallel.experts_impl={impl!r} is not one of {list(EXPERTS_IMPLS)}")
    n = 0
    for module in model.modules():
        if not isinstance(module, AutoEPMoELayer) or impl == "upstream" or not _eligible(module):
            continue
        if impl == "auto" and module.experts.w1.device.type != "cpu":
            continue
        module._forward = types.MethodType(local_experts_forward, module)
        n += 1
    return n

"""Bytes a training micro-batch keeps for the backward pass, per token, as transformers' Qwen MoE layers and
DeepSpeed AutoEP save them, and what the loss adds on top while it is differentiated.

Every term is one tensor that autograd saves (counted from the code, then checked tensor by tensor with
`torch.autograd.graph.saved_tensors_hooks` in tests/plan/test_activations.py). `e` is the element size of the
compute dtype (2 for bf16, 4 for fp32); RMSNorm, softmax routing and Gated DeltaNet keep some fp32 tensors
either way. Names: H hidden, Q = heads x head_dim, K = kv_heads x head_dim, E experts, k top-k,
I expert width, Is shared-expert width.

Two kernel sets differ: `cuda` (SDPA flash/efficient attention, flash-linear-attention's Gated DeltaNet,
AutoEP's padded grouped GEMM) and `cpu` (SDPA's CPU flash kernel, transformers' torch Gated DeltaNet, and at
EP=1 the local expert loop of train/models/autoep_local_experts.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from transformers import PretrainedConfig

GDN_CHUNK = 64  # transformers' torch_chunk_gated_delta_rule and fla both work in chunks of 64 positions
INT64 = 8
FP32 = 4


@dataclass(frozen=True)
class Kernels:
    """Which implementation runs each part (it decides what is saved)."""

    device: str  # "cuda" | "cpu"
    experts: str  # "local_loop" | "upstream"
    gdn: str  # "fla" | "torch"


def kernels_for(cluster_kernels: str, experts_impl: str, ep_size: int) -> Kernels:
    """Mirror of the run's own choice (`use_local_experts`: the local loop only at EP=1)."""
    local = ep_size == 1 and (experts_impl == "local_loop" or (experts_impl == "auto" and cluster_kernels == "cpu"))
    return Kernels(cluster_kernels, "local_loop" if local else "upstream",
                   "fla" if cluster_kernels == "cuda" else "torch")


def _dims(t: PretrainedConfig) -> dict[str, int]:
    hd = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    return {"H": t.hidden_size, "Q": t.num_attention_heads * hd, "K": t.num_key_value_heads * hd,
            "nh": t.num_attention_heads, "nkv": t.num_key_value_heads, "E": t.num_experts,
            "k": t.num_experts_per_tok, "I": t.moe_intermediate_size,
            "Is": getattr(t, "shared_expert_intermediate_size", 0) or 0}


def is_qwen3_5(t: PretrainedConfig) -> bool:
    return t.model_type.startswith("qwen3_5")


def rms_norm(H: int, e: int, zero_centred: bool) -> float:
    """One RMSNorm over H, its output included (saved by the projections after it). Qwen3: fp32 input, rsqrt,
    the normalised value cast back, the output; Qwen3.5's `x * (1 + w)` keeps the normalised value in fp32."""
    return FP32 * H + FP32 + (FP32 if zero_centred else e) * H + e * H


def full_attention(t: PretrainedConfig, e: int, masked: bool = False, kernels: Kernels | None = None,
                   seq_len: int = 0) -> float:
    """Qwen3 attention: q/k RMSNorm (fp32 input, rsqrt, cast), rotated q and k, v, SDPA output and logsumexp.
    Qwen3.5's gated attention adds the gate (sigmoid, a contiguous copy of the output, the gated product), and
    its zero-centred q/k norms keep fp32 values; in fp32 the q norm's input is the whole [q | gate] projection.

    `masked`: packed rows (documents kept apart by a block-causal mask built from the position ids). SDPA then
    gets k and v repeated to every query head (transformers uses SDPA's grouped-query path only without a mask),
    and on the CPU each layer saves the mask converted to the compute dtype (e bytes per position pair)."""
    d = _dims(t)
    Q, K, nh, nkv = d["Q"], d["K"], d["nh"], d["nkv"]
    if not is_qwen3_5(t):
        out = Q * (4 + 3 * e) + K * (4 + 3 * e) + 8 * nh + 4 * nkv
    else:
        q_in = 8 if e == FP32 else 4
        out = Q * (q_in + 4 + 5 * e) + K * (8 + 2 * e) + 8 * nh + 4 * nkv
    if masked:
        out += 2 * e * (Q - K)
        if kernels is not None and kernels.device == "cpu":
            out += e * seq_len
    return out


def linear_attention(t: PretrainedConfig, e: int, kernels: Kernels, seq_len: int) -> float:
    """Gated DeltaNet: in_proj outputs, the causal conv, gates, the delta rule, the gated RMSNorm, out_proj input.

    torch fallback (CPU): fp32 copies of q/k/v, chunk-local attention matrices (64 per position and head) and the
    recurrent state at every chunk boundary (dk x dv per head every 64 positions). fla (GPU) saves q, k, v, g,
    beta, its A matrix (64 per position and head) and the l2-norm statistics, and recomputes states in backward.
    """
    hk, hv = t.linear_num_key_heads, t.linear_num_value_heads
    dk, dv = t.linear_key_head_dim, t.linear_value_head_dim
    ck, vd, kv = hk * dk, hv * dv, hv * dk  # q/k width, v width, q/k width after repeating to the value heads
    conv_dim = 2 * ck + vd
    kernel = t.linear_conv_kernel_dim
    padded = math.ceil(seq_len / GDN_CHUNK) * GDN_CHUNK / seq_len
    gated_norm = FP32 * vd + FP32 * hv + e * vd + e * vd + FP32 * vd + FP32 * vd + e * vd  # ... and out_proj input
    if kernels.gdn == "torch":
        conv = e * conv_dim + e * conv_dim * (seq_len + kernel - 1) / seq_len  # F.conv1d input, padded output
        gates = FP32 * hv * 2 + e * hv  # softplus input/output, sigmoid(b)
        prep = FP32 * (3 * kv + 3 * hv + vd)  # fp32 q and k (+ their l2 norm), beta, v, normalised k
        chunked = FP32 * (5 * hv * GDN_CHUNK + 9 * kv + 2 * vd + 3 * hv + hv * dk * dv / GDN_CHUNK) * padded
        if e == FP32:  # the norm's input and the fp32 copy are one tensor; silu(z)'s input is z itself
            gated_norm = FP32 * (5 * vd + hv) + e * vd
        return conv + gates + prep + chunked + gated_norm
    # fla (with causal-conv1d): the conv input, the conv output (v is a view of it), softplus input/output and
    # sigmoid(b), fla's l2-normalised q and k with their rstd, fp32 cumulative g and A; then the gated norm.
    return (2 * e * conv_dim + FP32 * hv * 2 + e * hv + e * 2 * ck + FP32 * 2 * hk + FP32 * hv
            + e * hv * GDN_CHUNK + gated_norm)


def router(t: PretrainedConfig) -> float:
    """AutoEP's router: fp32 softmax output, top-k indices, the renormalisation's sum and scores."""
    d = _dims(t)
    return FP32 * d["E"] + 12 * d["k"] + FP32


def routed_experts(t: PretrainedConfig, e: int, kernels: Kernels) -> float:
    """Routed experts and the combine. Local loop (CPU, EP=1): sort order, gathered rows, [gate | up], the
    activation product, the inverse order, sorted scores, expert output. Upstream (grouped GEMM, all-to-all):
    index tensors, permuted rows, gate, up, silu(gate), their product, expert output, fp32 scores."""
    d = _dims(t)
    k, hidden, inter = d["k"], d["H"], d["I"]
    if kernels.experts == "local_loop":
        return 20 * k + e * k * (2 * hidden + 3 * inter)
    return 28 * k + e * k * (2 * hidden + 4 * inter)


def shared_expert(t: PretrainedConfig, e: int) -> float:
    """Qwen3.5's shared expert (SwiGLU: gate, silu(gate), up, product) and its sigmoid gate times its output."""
    d = _dims(t)
    if not d["Is"]:
        return 0.0
    return 4 * e * d["Is"] + e * d["H"] + e


def router_logits_for_loss(t: PretrainedConfig, e: int) -> float:
    """Per MoE layer: the router logits returned for the losses (`output_router_logits`), and what the
    load-balancing and z-losses save of them (fp32 softmax, logsumexp input)."""
    d = _dims(t)
    return (e + 8) * d["E"] + 16 * d["k"]


def decoder_layer(t: PretrainedConfig, layer_type: str, e: int, kernels: Kernels, seq_len: int,
                  masked: bool = False) -> float:
    """Bytes per token one decoder layer saves: two norms, the token mixer, router, experts, shared expert."""
    zero_centred = is_qwen3_5(t)
    mixer = (full_attention(t, e, masked, kernels, seq_len) if layer_type == "full_attention"
             else linear_attention(t, e, kernels, seq_len))
    return (2 * rms_norm(t.hidden_size, e, zero_centred) + mixer + router(t) + routed_experts(t, e, kernels)
            + shared_expert(t, e) + router_logits_for_loss(t, e))


def mtp_module(t: PretrainedConfig, e: int, kernels: Kernels, seq_len: int, masked: bool = False) -> float:
    """Bytes per token one multi-token prediction layer saves (train/models/mtp.py; it is not checkpointed). Its
    three zero-centred norms feed ops that do not save their output (a cat, the layer's residual, a row gather),
    so each keeps its fp32 input, rsqrt and normalised value; the hidden-state norm's input is the trunk's output
    (saved by the trunk's head) in fp32, its fp32 copy in bf16. Then the concatenated fc input and one
    full-attention decoder layer with its MoE block. Its logits are `mtp_logits_row`."""
    H = t.hidden_size
    kept_norm = 2 * FP32 * H + FP32
    hidden_norm = FP32 * H + FP32 + (0 if e == FP32 else FP32 * H)
    return (2 * kept_norm + hidden_norm + 2 * e * H
            + decoder_layer(t, "full_attention", e, kernels, seq_len, masked))


def mtp_logits_row(t: PretrainedConfig, e: int) -> float:
    """Per row the MTP head predicts: the gathered head input and cross entropy's fp32 log-softmax (the logits
    themselves, and their fp32 copy in bf16, are not saved)."""
    return e * t.hidden_size + FP32 * t.vocab_size


def layer_types(t: PretrainedConfig) -> list[str]:
    return list(getattr(t, "layer_types", None) or ["full_attention"] * t.num_hidden_layers)


@dataclass(frozen=True)
class ActivationBytes:
    """What one micro-batch adds during forward and backward, in bytes (one rank)."""

    saved: float  # every tensor kept for backward at the end of the forward pass (logits included)
    loss_backward: float  # extra while the cross entropy is differentiated (two fp32 [N, V] gradients)
    layer_recompute: float  # with checkpointing: the largest layer's saved tensors, recomputed in backward
    layer_backward: float  # while one layer's backward runs: gradients of its experts' activations
    per_layer: dict[str, float]  # bytes per token of each layer type, for the printout


def micro_batch_activations(t: PretrainedConfig, micro_batch: int, seq_len: int, logits_rows: float, e: int,
                            kernels: Kernels, checkpointing: bool, expert_lora_bytes: float = 0.0,
                            vision_bytes: float = 0.0, masked: bool = False, mtp_layers: int = 0) -> ActivationBytes:
    """Saved activations of one micro-batch of `micro_batch` rows x `seq_len` positions, `logits_rows` of which
    reach the LM head (`losses.labelled_logit_positions`).

    With activation checkpointing (transformers' non-reentrant checkpoint around each decoder layer) a layer
    keeps only its input until backward recomputes it; the layer being recomputed then holds its full set.
    `expert_lora_bytes`: per MoE layer, the merged expert weights LoRA keeps in the graph. `mtp_layers`: a
    multi-token prediction layer (not checkpointed) and its head's logits, on as many rows as the LM head's.
    """
    tokens = micro_batch * seq_len
    H, V = t.hidden_size, t.vocab_size
    types = layer_types(t)
    per_type = {lt: decoder_layer(t, lt, e, kernels, seq_len, masked) for lt in set(types)}
    layers = sum(per_type[lt] for lt in types) * tokens + expert_lora_bytes * len(types)
    if checkpointing:
        layer_inputs = len(types) * e * H * tokens + len(types) * router_logits_for_loss(t, e) * tokens
        recompute = max(per_type.values()) * tokens + expert_lora_bytes
        layers = layer_inputs
    else:
        recompute = 0.0
    embeddings = e * H * tokens  # the embedding output (input of the first layer's norm)
    final = rms_norm(H, e, is_qwen3_5(t)) * tokens + e * H * logits_rows  # final norm, the head's input rows
    logits = e * V * logits_rows + FP32 * V * logits_rows  # logits, and cross entropy's fp32 log-softmax
    if masked and kernels.device == "cuda":
        embeddings += micro_batch * seq_len * seq_len / tokens * tokens  # the boolean mask, shared by the layers
    mtp = mtp_layers * (mtp_module(t, e, kernels, seq_len, masked) * tokens + mtp_logits_row(t, e) * logits_rows)
    saved = embeddings + layers + final + logits + vision_bytes + mtp
    # the gradients flowing through one MoE layer's experts are about as large as what they saved
    layer_backward = (routed_experts(t, e, kernels) + shared_expert(t, e)) * tokens
    return ActivationBytes(saved=saved, loss_backward=2 * FP32 * V * logits_rows, layer_recompute=recompute,
                           layer_backward=layer_backward, per_layer=per_type)


def vision_tower(v: PretrainedConfig, patches: float, e: int, checkpointing: bool = False) -> float:
    """Qwen3.5's vision tower for `patches` patches (before the 2x2 merge): per block two LayerNorms, qkv,
    rotated q and k, attention output and logsumexp, the projection input, the GELU MLP; then the merger. Its
    blocks are checkpointed like the decoder layers. Counted from the code, not checked against a measurement."""
    h, i, heads = v.hidden_size, v.intermediate_size, v.num_heads
    block = e * (2 * h + 2 + 3 * h + 2 * h + h + h + 2 * i) + FP32 * heads + e * 2 * h
    merger = e * (h * 4 * 2 + v.out_hidden_size) / 4
    if checkpointing:
        return patches * (v.depth * e * h + block + merger)
    return patches * (v.depth * block + merger)

"""Model FLOPs per token from active parameters, and the device peak that MFU divides by."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig

# Dense bf16 peak TFLOP/s (no sparsity) for GPUs we expect; others set trainer.peak_tflops_per_device.
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
                   "B200": 2250.0}


def lm_head_params(config: PretrainedConfig) -> int:
    t = config.get_text_config()
    return t.hidden_size * t.vocab_size


def active_params_per_token(config: PretrainedConfig) -> int:
    """Non-embedding parameters one token passes through: attention/GDN, router, top-k + shared experts, head."""
    t = config.get_text_config()
    h = t.hidden_size
    head_dim = getattr(t, "head_dim", None) or h // t.num_attention_heads
    layer_types = getattr(t, "layer_types", None) or ["full_attention"] * t.num_hidden_layers
    gated = t.model_type.startswith("qwen3_5")
    q_out = t.num_attention_heads * head_dim * (2 if gated else 1)
    full_attn = h * q_out + 2 * h * t.num_key_value_heads * head_dim + t.num_attention_heads * head_dim * h
    if "linear_attention" in layer_types:
        k = t.linear_num_key_heads * t.linear_key_head_dim
        v = t.linear_num_value_heads * t.linear_value_head_dim
        linear_attn = h * (2 * k + 2 * v + 2 * t.linear_num_value_heads) + v * h
    else:
        linear_attn = 0
    expert = 3 * h * t.moe_intermediate_size
    shared = 3 * h * getattr(t, "shared_expert_intermediate_size", 0) + (h if gated else 0)
    moe = h * t.num_experts + t.num_experts_per_tok * expert + shared
    total = sum(full_attn if lt == "full_attention" else linear_attn for lt in layer_types)
    return total + t.num_hidden_layers * moe + lm_head_params(config)


@dataclass(frozen=True)
class TrainingFlops:
    """Training FLOPs (forward + backward) of a step, split where the work differs: the layers run on every
    position, the LM head only on the positions whose next token is labelled (`losses.labelled_logit_positions`).
    Counting the head on every position made fine-tuning's MFU read high: the head is 31% of the tiny demo
    model's active parameters, and fine-tuning labels about half of the positions."""

    per_token: float  # layers and attention scores, per position
    per_logit: float  # the LM head, per row of logits computed

    def of(self, tokens: float, logits: float) -> float:
        return tokens * self.per_token + logits * self.per_logit

    def recomputed(self, tokens: float) -> float:
        """FLOPs activation checkpointing adds: the layers' forward (a third of their training FLOPs) once more.
        Not part of model FLOPs (MFU), but time the device spends (train/plan/speed.py)."""
        return tokens * self.per_token / 3.0


def mtp_params_per_token(config: PretrainedConfig, mtp_layers: int) -> int:
    """Parameters one token passes through in the multi-token prediction layers (train/models/mtp.py): the [H, 2H]
    projection plus a full-attention MoE layer each; their logits go through the shared head (counted per logit)."""
    if not mtp_layers:
        return 0
    t = config.get_text_config()
    one_layer = copy.deepcopy(t)
    one_layer.layer_types, one_layer.num_hidden_layers = ["full_attention"], 1
    return mtp_layers * (2 * t.hidden_size ** 2 + active_params_per_token(one_layer) - lm_head_params(config))


def training_flops(config: PretrainedConfig, seq_len: int, mtp_layers: int = 0) -> TrainingFlops:
    """6 x active parameters, plus causal attention scores (6 * layers * heads * dim * S/2 * 2) per token; with
    `mtp_layers`, the MTP layers too."""
    t = config.get_text_config()
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    layer_types = getattr(t, "layer_types", None) or ["full_attention"] * t.num_hidden_layers
    n_full = sum(1 for lt in layer_types if lt == "full_attention") + mtp_layers
    head = lm_head_params(config)
    attention_scores = 6.0 * n_full * t.num_attention_heads * head_dim * seq_len
    layers = active_params_per_token(config) - head + mtp_params_per_token(config, mtp_layers)
    return TrainingFlops(per_token=6.0 * layers + attention_scores, per_logit=6.0 * head)


def measure_cpu_peak_tflops(n: int = 1024, repeats: int = 5) -> float:
    """fp32 matmul rate of this process's threads: the roofline a CPU run is compared to."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def device_peak_tflops(configured: float | None) -> float:
    if configured is not None:
        return configured
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, peak in GPU_PEAK_TFLOPS.items():
            if key in name:
                return peak
        raise ValueError(f"unknown GPU {name!r}: set trainer.peak_tflops_per_device for MFU")
    return measure_cpu_peak_tflops()

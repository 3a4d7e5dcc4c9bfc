"""The DeepSpeed engine with ZeRO and AutoEP expert parallelism, built from the typed config."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn

from train.config import PretrainConfig
from train.models import autoep_local_experts, autoep_shims

log = logging.getLogger(__name__)


def resolve_dtype(precision: str) -> torch.dtype:
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


def deepspeed_config(cfg: PretrainConfig, model: nn.Module, load_universal: bool = False) -> dict[str, Any]:
    """The DeepSpeed JSON config. Clipping is always explicit (DeepSpeed's own default is 1.0)."""
    zero: dict[str, Any] = {
        "stage": cfg.deepspeed.zero_stage,
        "overlap_comm": cfg.deepspeed.overlap_comm,
        "contiguous_gradients": cfg.deepspeed.contiguous_gradients,
        "reduce_bucket_size": cfg.deepspeed.reduce_bucket_size,
        "allgather_bucket_size": cfg.deepspeed.allgather_bucket_size,
    }
    if cfg.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    expert_parallel: dict[str, Any] = {
        "enabled": True,
        "autoep_size": cfg.parallel.ep_size,
        "preset_model": cfg.model.family,
        "use_grouped_mm": cfg.parallel.use_grouped_mm,
        "gate_up_impl": cfg.parallel.gate_up_impl,
    }
    pattern = autoep_shims.moe_layer_pattern(model)
    if pattern is not None:
        expert_parallel["moe_layer_pattern"] = pattern
    return {
        "train_micro_batch_size_per_gpu": cfg.trainer.micro_batch_size,
        "gradient_accumulation_steps": cfg.trainer.grad_accum_steps,
        "gradient_clipping": cfg.optim.grad_clip,
        "steps_per_print": 1 << 30,
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": cfg.optim.lr,
                "betas": [cfg.optim.beta1, cfg.optim.beta2],
                "eps": cfg.optim.eps,
                "weight_decay": cfg.optim.weight_decay,
                # torch's (foreach) AdamW: no JIT-compiled FusedAdam op on GPU nodes, no oneCCL Adam on CPU.
                # Optimizer offload needs DeepSpeed's CPU Adam instead.
                "torch_adam": not cfg.deepspeed.offload_optimizer,
            },
        },
        "bf16": {"enabled": resolve_dtype(cfg.trainer.precision) == torch.bfloat16},
        "expert_parallel": expert_parallel,
        "checkpoint": {"load_universal": load_universal},
    }


def optimizer_param_groups(model: nn.Module, weight_decay: float, embedding_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """Decay matrices and expert weights, not norms or biases; DeepSpeed splits out its MoE groups after AutoEP.

    With `embedding_lr_scale` != 1 the input embedding (the output one too when tied) gets its own group whose
    `lr_scale` the training loop applies (embedding lr multipliers are common in small-model recipes; see
    configs/optim/adamw.yaml for what it did on benchmarks/copy_task.py).
    """
    embedding = model.get_input_embeddings().weight if embedding_lr_scale != 1.0 else None
    decay, no_decay, embed = [], [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (embed if p is embedding else decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    if embed:
        groups.append({"params": embed, "weight_decay": weight_decay, "name": "embedding",
                       "lr_scale": embedding_lr_scale})
    return groups


def build_engine(cfg: PretrainConfig, model: nn.Module, load_universal: bool = False):
    """deepspeed.initialize with AutoEP and the shims it needs; returns the engine."""
    import deepspeed

    autoep_shims.patch_output_capture_registry()
    autoep_shims.patch_frozen_expert_restore()
    ds_config = deepspeed_config(cfg, model, load_universal)
    groups = optimizer_param_groups(model, cfg.optim.weight_decay, cfg.optim.embedding_lr_scale)
    with autoep_shims.autoep_text_view(model), autoep_shims.frozen_experts_optimizer():
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=ds_config)
    n = autoep_shims.capture_raw_router_logits(engine.module)
    if n == 0:
        raise RuntimeError("AutoEP replaced no MoE layer: check model.family and the expert_parallel preset")
    if cfg.model.lora.enabled and cfg.model.lora.experts:
        from train.models.lora import attach_expert_lora

        attached = attach_expert_lora(engine.module)
        if attached != n:
            raise RuntimeError(f"LoRA: {attached} of {n} AutoEP layers found their experts_lora adapter")
    impl = cfg.parallel.experts_impl
    if impl != "upstream" and cfg.parallel.gate_up_impl == "fused":
        impl = "upstream"  # the fused gate/up GEMM is upstream's; auto keeps it rather than replacing it
    local = autoep_local_experts.use_local_experts(engine.module, impl)
    log.info("AutoEP: %d MoE layers (%d on the local expert loop), ep_size=%d, ZeRO stage %d", n, local,
             cfg.parallel.ep_size, cfg.deepspeed.zero_stage)
    return engine

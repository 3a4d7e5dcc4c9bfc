"""LoRA on attention projections and on AutoEP's routed experts, kept under the base weights' own names.

Why this shape:
- Attention (and any other nn.Linear named in `model.lora.target_modules`): the module stays the transformers
  module; `lora_A` [r, in] and `lora_B` [out, r] are registered on it and a forward hook adds
  `scale * x A^T B^T`. Parameter names stay `...q_proj.weight` (+ `...q_proj.lora_A/B`), so checkpoints, the
  HF key map and the exporter see the same base names as a full fine-tune.
- Routed experts: AutoEP replaces each MoE block inside `deepspeed.initialize` and builds its own grouped
  weights w1/w2/w3 [E_local, out, in], and DeepSpeed checkpoints only those three per expert. So the expert
  adapters live beside the MoE block, on the decoder layer (`layers.N.experts_lora`, [E, ...] over all global
  experts, replicated on every rank like any dense weight), exist before `deepspeed.initialize` (in the
  optimizer, broadcast, saved in model_states, universal-convertible like any dense weight), and
  `attach_expert_lora` points each AutoEP layer at its rank's rows after initialization. Each forward uses
  `w + scale * B A` for the local experts, so every expert path (upstream grouped GEMM, Triton, the local
  loop) runs unchanged on merged weights. Cost: the adapters of all E experts on every rank
  (E * r * 3 * (H + I) per layer: 2.7% of Qwen3-30B-A3B at r=16, 1.9% of Qwen3.5-397B-A17B) and one
  [E_local, out, in] merged weight per projection per layer in the autograd graph.
- Frozen experts need two DeepSpeed shims (train/models/autoep_shims.py, 5 and 6).
- Export merges: `W + scale * B A` (`merge_linear`, `merge_experts`), so the export is a plain HF folder.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass

import torch
import torch.nn as nn

from train.checkpoint.ds_checkpoint_reader import EXPERT_WEIGHTS  # AutoEP: w1 gate [E, I, H], w2 down, w3 up

LORA_A, LORA_B = "lora_A", "lora_B"
EXPERTS_LORA = "experts_lora"


@dataclass(frozen=True)
class LoraSpec:
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    experts: bool

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def lora_spec(cfg) -> LoraSpec:
    """The spec of a `model.lora` config node."""
    return LoraSpec(int(cfg.rank), float(cfg.alpha), tuple(cfg.target_modules), bool(cfg.experts))


def _kaiming(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> torch.Tensor:
    """nn.Linear's (and PEFT's) default for lora_A: kaiming-uniform with a = sqrt(5), i.e. U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


def _linear_hook(module: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor:
    delta = nn.functional.linear(nn.functional.linear(args[0], module.lora_A), module.lora_B)
    return output + module.lora_scale * delta


class ExpertLoRA(nn.Module):
    """Adapters of every routed expert of one MoE layer: `{w}_A` [E, r, in] and `{w}_B` [E, out, r] per weight."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int, rank: int, scale: float,
                 dtype: torch.dtype, generator: torch.Generator) -> None:
        super().__init__()
        self.scale = scale
        shapes = {"w1": (intermediate, hidden), "w2": (hidden, intermediate), "w3": (intermediate, hidden)}
        for w, (out_dim, in_dim) in shapes.items():
            a = _kaiming((num_experts, rank, in_dim), in_dim, generator)
            self.register_parameter(f"{w}_A", nn.Parameter(a.to(dtype)))
            self.register_parameter(f"{w}_B", nn.Parameter(torch.zeros(num_experts, out_dim, rank, dtype=dtype)))

    def delta(self, w: str, experts: torch.Tensor) -> torch.Tensor:
        """scale * B A for the experts at global indices `experts`, [len(experts), out, in]."""
        a = getattr(self, f"{w}_A").index_select(0, experts)
        b = getattr(self, f"{w}_B").index_select(0, experts)
        return self.scale * torch.bmm(b, a)


def apply_lora(model: nn.Module, spec: LoraSpec, seed: int, exclude_prefixes: tuple[str, ...] = ()) -> int:
    """Freeze every base weight and add the adapters; returns the number of adapter parameters.

    Runs before `deepspeed.initialize` (the adapters must be in the optimizer). Identical on every rank: the
    adapters are drawn from `seed`, not from the global RNG. A target that matches no module is an error.
    """
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    matched = {t: 0 for t in spec.target_modules}
    n = 0
    for name, module in list(model.named_modules()):
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in matched or not isinstance(module, nn.Linear) or name.startswith(exclude_prefixes):
            continue
        w = module.weight
        module.register_parameter(LORA_A, nn.Parameter(
            _kaiming((spec.rank, module.in_features), module.in_features, generator).to(w.device, w.dtype)))
        module.register_parameter(LORA_B, nn.Parameter(
            torch.zeros(module.out_features, spec.rank, device=w.device, dtype=w.dtype)))
        module.lora_scale = spec.scale
        module.register_forward_hook(_linear_hook)
        matched[leaf] += 1
        n += module.lora_A.numel() + module.lora_B.numel()
    missing = [t for t, count in matched.items() if count == 0]
    if missing:
        raise ValueError(f"model.lora.target_modules: {missing} match no nn.Linear of the model (outside "
                         f"{list(exclude_prefixes)})")
    if spec.experts:
        n += _add_expert_adapters(model, spec, generator)
    return n


def _add_expert_adapters(model: nn.Module, spec: LoraSpec, generator: torch.Generator) -> int:
    """One `experts_lora` per decoder layer whose `mlp.experts` is a transformers fused expert module."""
    text = model.config.get_text_config()
    n = 0
    for module in list(model.modules()):
        experts = getattr(getattr(module, "mlp", None), "experts", None)
        if experts is None or not hasattr(experts, "gate_up_proj"):
            continue
        dtype = experts.gate_up_proj.dtype
        adapter = ExpertLoRA(text.num_experts, text.hidden_size, text.moe_intermediate_size, spec.rank,
                             spec.scale, dtype, generator)
        module.add_module(EXPERTS_LORA, adapter)
        n += sum(p.numel() for p in adapter.parameters())
    if n == 0:
        raise ValueError("model.lora.experts=true but the model has no routed experts (mlp.experts.gate_up_proj)")
    return n


def expert_weights(experts: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AutoEP's w1, w2, w3, with the LoRA delta of this rank's experts added when an adapter is attached."""
    adapter, local = getattr(experts, "_lora", None), getattr(experts, "_lora_experts", None)
    if adapter is None:
        return experts.w1, experts.w2, experts.w3
    return tuple(getattr(experts, w) + adapter.delta(w, local).to(getattr(experts, w).dtype)
                 for w in EXPERT_WEIGHTS)


def _grouped_experts_forward(self, x: torch.Tensor, num_tokens_per_expert: torch.Tensor) -> torch.Tensor:
    """`GroupedExperts.forward` (DeepSpeed 0.19.8) on `expert_weights(self)` instead of the bare parameters."""
    from deepspeed.moe import ep_experts

    act = (self.activation, self.activation_alpha, self.activation_limit)
    if self.use_triton_grouped_mm:
        run = ep_experts._run_experts_triton_grouped_mm
    elif self.use_grouped_mm:
        run = (ep_experts._run_experts_grouped_mm_fused_gate_up if self.gate_up_impl == "fused"
               else ep_experts._run_experts_grouped_mm)
    else:
        run = ep_experts._run_experts_for_loop
    return run(*expert_weights(self), x, num_tokens_per_expert, *act)


def attach_expert_lora(model: nn.Module) -> int:
    """After `deepspeed.initialize`: give every AutoEP layer its decoder layer's `experts_lora` and the global
    indices of its local experts. Returns the number of layers attached."""
    from deepspeed.checkpoint.autoep_affine import autoep_experts_for_rank
    from deepspeed.module_inject.auto_ep_layer import AutoEPMoELayer

    modules = dict(model.named_modules())
    n = 0
    for name, layer in modules.items():
        if not isinstance(layer, AutoEPMoELayer):
            continue
        adapter = modules.get(f"{name.rsplit('.', 1)[0]}.{EXPERTS_LORA}")
        if adapter is None:
            continue
        local = autoep_experts_for_rank(layer.expert_placement_descriptor, layer.ep_rank)
        experts = layer.experts
        # Plain attributes, not submodules: the adapter's parameters stay registered once, on the decoder layer.
        object.__setattr__(experts, "_lora", adapter)
        object.__setattr__(experts, "_lora_experts", torch.tensor(list(local), dtype=torch.long,
                                                                  device=experts.w1.device))
        experts.forward = types.MethodType(_grouped_experts_forward, experts)
        n += 1
    return n


def merge_linear(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    """The exported weight: W + scale * B A, computed in float32."""
    return weight.float() + scale * (lora_b.float() @ lora_a.float())


def merge_experts(weights: dict[str, torch.Tensor], adapters: dict[str, torch.Tensor], expert: int,
                  scale: float) -> dict[str, torch.Tensor]:
    """One expert's {"w1","w2","w3"} with its adapter rows merged (`adapters` holds `w1_A`, `w1_B`, ...)."""
    return {w: merge_linear(t, adapters[f"{w}_A"][expert], adapters[f"{w}_B"][expert], scale)
            for w, t in weights.items()}

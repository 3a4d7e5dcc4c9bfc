"""A job's plan from its composed config: memory per rank, step time, tokens/s and cost, and when the job does
not fit, the changes that make it fit."""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from transformers import PretrainedConfig

from train.metrics.throughput import training_flops
from train.plan.activations import Kernels, kernels_for, micro_batch_activations, vision_tower
from train.plan.inventory import Inventory, build_inventory
from train.plan.measured import MEASURED, Borrowed, MeasuredStep, best_measured  # noqa: F401 - re-exported
from train.plan.memory import GIB, Layout, MemoryPlan, memory_plan
from train.plan.speed import (
    Links,
    SpeedPlan,
    StepWork,
    anchor_rates,
    calibrate_mfu,
    optimizer_bytes,
    step_time,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_MFU = 0.15  # used only when nothing at all was measured (the plan says so)


@dataclass
class Plan:
    """Everything `python -m train.plan` prints and each run writes into config.json's `plan`."""

    summary: dict[str, Any]
    memory: MemoryPlan
    speed: SpeedPlan
    notes: list[str] = field(default_factory=list)
    suggestions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.memory.fits

    def as_dict(self) -> dict[str, Any]:
        return {**self.summary, "memory": self.memory.as_dict(), "speed": self.speed.as_dict(),
                "notes": list(self.notes), "suggestions": list(self.suggestions)}


def compose(overrides: list[str], config_name: str = "pretrain") -> DictConfig:
    """A job's config as the CLI composes it, from inside a Hydra app or outside one."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    from train.config import register_configs

    register_configs()
    if GlobalHydra.instance().is_initialized():
        return hydra.compose(config_name=config_name, overrides=list(overrides))
    with hydra.initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra.compose(config_name=config_name, overrides=list(overrides))


def _hf_config(cfg) -> PretrainedConfig:
    """The job's transformers config: the checkpoint's config.json when `model.init_from` is here, else the model
    group's `hf_config` (planning on a login node without the checkpoint), vocabulary padded as a run pads it."""
    import os

    from train.models.build import build_hf_config

    model = _model_cfg(cfg)
    if model.init_from is not None and not os.path.isfile(os.path.join(model.init_from, "config.json")):
        model = OmegaConf.merge(model, {"init_from": None})
    if model.init_from is None and "vocab_size" not in _hf_keys(model):
        padded = (cfg.data.vocab_size + 63) // 64 * 64  # the run pads its tokenizer's vocabulary the same way
        return build_hf_config(model, vocab_size=padded)
    return build_hf_config(model)


def _hf_keys(model) -> set[str]:
    hf = OmegaConf.to_container(model.hf_config) if OmegaConf.is_config(model.hf_config) else dict(model.hf_config)
    return set(hf) | set(hf.get("text_config", {}) or {})


def _model_cfg(cfg):
    """The model config as the run builds it: `init_from` resolved, and the vision tower frozen when the data has no
    images (`train.models.build.frozen_for_text_only`, which the run applies once it has read its data)."""
    from train.models.build import frozen_for_text_only

    model = cfg.model
    if OmegaConf.is_config(model) and OmegaConf.is_missing(model, "init_from"):
        model = OmegaConf.merge(model, {"init_from": None})
    frozen = frozen_for_text_only(model, _images_per_micro_batch(cfg) > 0)
    if frozen is not None:
        model = OmegaConf.merge(model, {"frozen": frozen})
    return model


def element_size(precision: str, kernels: str) -> int:
    if precision == "auto":
        return 2 if kernels == "cuda" else 4
    return {"bf16": 2, "fp32": 4}[precision]


def _masked(cfg, hf: PretrainedConfig, kernels: Kernels) -> bool:
    """Packed rows (data_pipelines.packing): the attention layers get a block-causal mask from the position ids."""
    from data_pipelines.packing import resolve_packing_mode

    try:
        mode = resolve_packing_mode(cfg.data.packing, hf, varlen_available=kernels.device == "cuda")
    except ValueError:
        return False
    return mode in ("packed", "varlen")


def _images_per_micro_batch(cfg) -> int:
    """Images a micro-batch is planned with: one of `data.image.max_pixels` when the data has image sources (a
    micro-batch of full-size images on every row is rare; plan a larger number with more memory headroom)."""
    if cfg.model.family != "qwen3_5_moe" or cfg.data.kind == "text":
        return 0
    sources = cfg.data.sources if not OmegaConf.is_missing(cfg.data, "sources") else []
    kinds = {s.kind for s in sources}
    has_images = bool(kinds & {"image_text", "interleaved"}) or (cfg.data.kind == "sft" and any(
        s.image_root is not None for s in sources))
    return 1 if has_images else 0


def _work(cfg, hf: PretrainedConfig, inv: Inventory, layout: Layout, world: int, gpus_per_node: int,
          tokens_rank: float, logits_rank: float, accum: int) -> StepWork:
    t = hf.get_text_config()
    e = layout.element_size
    flops = training_flops(hf, cfg.data.seq_len, cfg.model.mtp_layers)
    model_flops = flops.of(tokens_rank, logits_rank)
    head_flops = flops.of(0, logits_rank)
    recompute = flops.recomputed(tokens_rank) if cfg.model.activation_checkpointing else 0.0
    trainable = inv.on_rank(layout.ep_size, trainable=True)
    local = sum(trainable.values())
    dense = local - trainable["experts"]
    partition = dense / world + trainable["experts"] / layout.expert_dp
    if layout.zero_stage == 0:
        partition = local
    n_moe = t.num_hidden_layers
    passes = 4 + (2 if cfg.model.activation_checkpointing else 0)  # dispatch + combine, forward and backward
    ep = layout.ep_size
    a2a = passes * n_moe * tokens_rank * t.num_experts_per_tok * t.hidden_size * e * (ep - 1) / ep
    remote = max(0.0, (ep - gpus_per_node) / ep) if ep > gpus_per_node else 0.0
    # Gradients: ZeRO-1 reduces once per step; ZeRO-2/3 reduce-scatter every micro-batch into the partitions.
    # Then the updated parameters are all-gathered once per step (ring: (n-1)/n of the bytes each way).
    reductions = 1 if layout.zero_stage <= 1 else accum
    edp = layout.expert_dp
    dense_coll = (reductions + 1) * (world - 1) / world * dense * e if world > 1 else 0.0
    expert_coll = (reductions + 1) * (edp - 1) / edp * trainable["experts"] * e if edp > 1 else 0.0
    if layout.zero_stage == 3:  # parameters gathered for every micro-batch's forward and backward (and recompute)
        gathers = accum * (2 + (1 if cfg.model.activation_checkpointing else 0))
        dense_coll += gathers * (world - 1) / world * dense * e if world > 1 else 0.0
        expert_coll += gathers * (edp - 1) / edp * trainable["experts"] * e if edp > 1 else 0.0
    # Ranks fill nodes in order; an EP group is consecutive ranks, an expert-data-parallel group strides by ep.
    nodes = math.ceil(world / gpus_per_node)
    inter = nodes > 1  # both data-parallel groups then span nodes (experts' whenever it has more than one rank)
    intra_bytes = 0.0 if inter else dense_coll + expert_coll
    inter_bytes = dense_coll + expert_coll if inter else 0.0
    return StepWork(model_flops=model_flops, head_flops=head_flops, logit_elements=logits_rank * t.vocab_size,
                    recompute_flops=recompute,
                    param_bytes=optimizer_bytes(local, partition, e, accum, layout.zero_stage >= 2),
                    all_to_all_bytes=a2a,
                    all_to_all_remote_share=remote, reduce_bytes_intra=intra_bytes, reduce_bytes_inter=inter_bytes,
                    overlap_comm=bool(cfg.deepspeed.overlap_comm))


def _links(cluster, measure: bool = True) -> Links:
    """The cluster's device figures; a CPU's unstated peak is measured (`measure=False`: left at 0)."""
    peak = cluster.peak_tflops
    if peak is None and not measure:
        peak = 0.0
    elif peak is None:
        from train.metrics.throughput import measure_cpu_peak_tflops

        peak = measure_cpu_peak_tflops()
    from train.plan.measured import dense_gemm_efficiency

    return Links(float(peak), float(cluster.hbm_tbps), float(cluster.intra_node_gbps),
                 float(cluster.inter_node_gbps), dense_gemm_efficiency(cluster.gpu))


_CALIBRATED: dict[str, float] = {}


def _calibrated_mfu(step: MeasuredStep) -> float:
    """Compute MFU of a measured step: the step planned as it ran (its overrides, the device it ran on as
    configs/cluster describes it; a CPU at the peak measured when it ran), solved for the measured step time."""
    if step.source not in _CALIBRATED:
        cfg = compose([*step.overrides, f"trainer.micro_batch_size={step.micro_batch}",
                       f"data.seq_len={step.seq_len}", f"cluster={step.gpu}"])
        links = dataclasses.replace(_links(cfg.cluster, measure=False), peak_tflops=step.peak_tflops)
        parts = _parts(cfg, step.world_size, links)
        _CALIBRATED[step.source] = calibrate_mfu(parts["work"], links, step.step_ms / 1e3)
    return _CALIBRATED[step.source]


_MODELS: dict[str, tuple[PretrainedConfig, Inventory]] = {}


def _model(cfg, hf_config: PretrainedConfig | None) -> tuple[PretrainedConfig, Inventory]:
    """The transformers config and parameter inventory, built once per model config (a plan search re-plans
    the same model many times)."""
    import json

    model = OmegaConf.to_container(_model_cfg(cfg), resolve=True) if OmegaConf.is_config(cfg.model) else None
    key = json.dumps([model, cfg.data.vocab_size, hf_config.to_json_string() if hf_config is not None else None],
                     sort_keys=True, default=str)
    if key not in _MODELS:
        hf = hf_config if hf_config is not None else _hf_config(cfg)
        _MODELS[key] = (hf, build_inventory(_model_cfg(cfg), hf))
    return _MODELS[key]


def _parts(cfg, world: int, links: Links, hf_config: PretrainedConfig | None = None) -> dict[str, Any]:
    cluster = cfg.cluster
    hf, inv = _model(cfg, hf_config)
    t = hf.get_text_config()
    e = element_size(cfg.trainer.precision, cluster.kernels)
    layout = Layout(world_size=world, ep_size=cfg.parallel.ep_size, zero_stage=cfg.deepspeed.zero_stage,
                    element_size=e, overlap_comm=bool(cfg.deepspeed.overlap_comm),
                    reduce_bucket_size=int(cfg.deepspeed.reduce_bucket_size),
                    allgather_bucket_size=int(cfg.deepspeed.allgather_bucket_size),
                    lazy_pages=cluster.kernels == "cpu")
    mb, seq = cfg.trainer.micro_batch_size, cfg.data.seq_len
    logits_rows = mb * (seq - 1)  # every position but the last: an upper bound for fine-tuning
    kernels = kernels_for(cluster.kernels, cfg.parallel.experts_impl, cfg.parallel.ep_size)
    lora = cfg.model.lora
    expert_lora = (3 * t.num_experts / cfg.parallel.ep_size * t.hidden_size * t.moe_intermediate_size * e
                   if lora.enabled and lora.experts else 0.0)
    images = _images_per_micro_batch(cfg)
    vision = 0.0
    if images:
        patches = cfg.data.image.max_pixels / (hf.vision_config.patch_size ** 2)
        vision = images * vision_tower(hf.vision_config, patches, e, bool(cfg.model.activation_checkpointing))
    act = micro_batch_activations(t, mb, seq, logits_rows, e, kernels, bool(cfg.model.activation_checkpointing),
                                  expert_lora, vision, _masked(cfg, hf, kernels), cfg.model.mtp_layers)
    other = micro_batch_activations(t, mb, seq, logits_rows, e, kernels, not cfg.model.activation_checkpointing,
                                    expert_lora, vision, _masked(cfg, hf, kernels), cfg.model.mtp_layers)
    with_ckpt, without = (act, other) if cfg.model.activation_checkpointing else (other, act)
    a2a_buffers = 2 * e * mb * seq * t.num_experts_per_tok * t.hidden_size if cfg.parallel.ep_size > 1 else 0.0
    mem = memory_plan(inv, layout, act, bool(cfg.model.activation_checkpointing), a2a_buffers,
                      cluster.runtime_reserve_gib * GIB, cluster.memory_gib * GIB, t.num_hidden_layers)
    accum = cfg.trainer.grad_accum_steps
    tokens_rank, logits_rank = mb * seq * accum, logits_rows * accum
    work = _work(cfg, hf, inv, layout, world, cluster.gpus_per_node, tokens_rank, logits_rank, accum)
    return {"hf": hf, "inventory": inv, "layout": layout, "activations": act, "memory": mem, "work": work,
            "kernels": kernels, "images": images, "a2a": a2a_buffers,
            "activations_gib": {"checkpointing": (with_ckpt.saved + with_ckpt.layer_recompute) / GIB,
                                "no checkpointing": without.saved / GIB}}


def make_plan(cfg, world_size: int | None = None, mfu: float | None = None, suggest: bool = True,
              hf_config: PretrainedConfig | None = None) -> Plan:
    """Plan the job `cfg` describes on `cfg.cluster` (world size: the cluster's, unless given; `hf_config`: the
    model config a running job built, vocabulary included)."""
    cluster = cfg.cluster
    world = world_size or cluster.nodes * cluster.gpus_per_node
    links = _links(cluster)
    parts = _parts(cfg, world, links, hf_config)
    notes: list[str] = list(parts["memory"].notes)
    mfu_source: str
    if mfu is None and cluster.mfu is not None:
        mfu, mfu_source = float(cluster.mfu), "stated (cluster.mfu)"
    elif mfu is not None:
        mfu_source = "stated"
    else:
        borrowed = best_measured(cfg.model.family, cluster.gpu)
        if borrowed is None:
            mfu, mfu_source = DEFAULT_MFU, "assumed: nothing measured on this device"
        else:
            mfu = _calibrated_mfu(borrowed.step)
            mfu_source = (f"calibrated on {borrowed.step.source} (whole-step MFU {100 * borrowed.step.mfu:.1f}%, "
                          f"{borrowed.note})")
    step, compute, optimizer, comm = step_time(parts["work"], links, mfu)
    t = parts["hf"].get_text_config()
    accum = cfg.trainer.grad_accum_steps
    tokens_step = world * cfg.trainer.micro_batch_size * cfg.data.seq_len * accum
    speed = SpeedPlan(step_s=step, compute_s=compute, optimizer_s=optimizer, comm_s=comm,
                      tokens_per_step=tokens_step, world_size=world, mfu_compute=mfu, mfu_source=mfu_source,
                      peak_tflops=links.peak_tflops, model_flops_per_rank=parts["work"].model_flops,
                      price_per_gpu_hour=float(cluster.price_per_gpu_hour))
    flops_per_token = parts["work"].model_flops / (tokens_step / world)
    speed.anchors = anchor_rates(flops_per_token, world, float(cluster.price_per_gpu_hour))
    if parts["images"]:
        notes.append(f"vision tower counted for {parts['images']} image(s) of data.image.max_pixels per micro-batch")
    if cluster.kernels == "cuda" and t.model_type.startswith("qwen3_5"):
        notes.append("Gated DeltaNet counted as flash-linear-attention saves it (install fla and causal-conv1d)")
    inv = parts["inventory"]
    init_from = None if OmegaConf.is_missing(cfg.model, "init_from") else cfg.model.init_from
    if init_from is not None and hf_config is None:
        import os

        if not os.path.isfile(os.path.join(init_from, "config.json")):
            notes.append(f"model.init_from={init_from} is not here: planned with the model group's shape "
                         "(configs/model), which the released checkpoint's config.json matches")
    summary = {
        "model": cfg.model.family, "parameters": inv.all(), "vocab_size": t.vocab_size,
        "parameters_trainable": sum(inv.trainable.values()),
        "cluster": {"gpu": cluster.gpu, "nodes": math.ceil(world / cluster.gpus_per_node),
                    "gpus_per_node": cluster.gpus_per_node, "world_size": world,
                    "memory_gib": cluster.memory_gib, "price_per_gpu_hour": cluster.price_per_gpu_hour,
                    "currency": cluster.currency},
        "layout": {"ep_size": cfg.parallel.ep_size, "zero_stage": cfg.deepspeed.zero_stage,
                   "micro_batch_size": cfg.trainer.micro_batch_size, "grad_accum_steps": accum,
                   "seq_len": cfg.data.seq_len, "activation_checkpointing": bool(cfg.model.activation_checkpointing),
                   "precision": "bf16" if parts["layout"].element_size == 2 else "fp32",
                   "kernels": dataclasses.asdict(parts["kernels"])},
        "per_rank_parameters": inv.on_rank(cfg.parallel.ep_size),
        "activations_per_micro_batch_gib": parts["activations_gib"],
        "all_to_all_buffers_gib": parts["a2a"] / GIB,
        "activation_bytes_per_token_per_layer": parts["activations"].per_layer,
    }
    plan = Plan(summary, parts["memory"], speed, notes)
    if suggest and not plan.fits:
        plan.suggestions = suggestions(cfg, world, mfu)
    return plan


def _variant(cfg, changes: dict[str, Any]):
    new = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    for key, value in changes.items():
        OmegaConf.update(new, key, value, merge=False)
    return new


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def suggestions(cfg, world: int, mfu: float, max_nodes: int = 64, limit: int = 6) -> list[dict[str, Any]]:
    """Changes that make the job fit, fewest knobs first, then cheapest per token: EP size, ZeRO stage,
    micro-batch (with more accumulation, so the global batch stays), activation checkpointing, and failing all
    of those on this cluster, the fewest nodes that fit."""
    t = _hf_config(cfg).get_text_config()
    ep0, z0, mb0 = cfg.parallel.ep_size, cfg.deepspeed.zero_stage, cfg.trainer.micro_batch_size
    accum0, ckpt0 = cfg.trainer.grad_accum_steps, bool(cfg.model.activation_checkpointing)
    mbs = [mb0]
    while mbs[-1] > 1:
        mbs.append(mbs[-1] // 2)

    def layouts(w: int):
        eps = [e for e in _divisors(t.num_experts) if e >= ep0 and w % e == 0]
        for ep, zero, mb, ckpt in itertools.product(eps, range(z0, 4), mbs, sorted({ckpt0, True})):
            labels, changes = [], {}
            if ep != ep0:
                labels.append(f"parallel.ep_size={ep}")
                changes["parallel.ep_size"] = ep
            if zero != z0:
                labels.append(f"deepspeed=zero{zero}")
                changes.update({"deepspeed.zero_stage": zero, "deepspeed.overlap_comm": zero > 1})
            if mb != mb0:
                labels.append(f"trainer.micro_batch_size={mb} trainer.grad_accum_steps={accum0 * mb0 // mb}")
                changes.update({"trainer.micro_batch_size": mb, "trainer.grad_accum_steps": accum0 * mb0 // mb})
            if ckpt != ckpt0:
                labels.append("model.activation_checkpointing=true")
                changes["model.activation_checkpointing"] = True
            yield labels, changes

    def fitting(w: int, extra_labels: list[str], extra: dict[str, Any]) -> list[dict[str, Any]]:
        found = []
        for labels, changes in layouts(w):
            if not labels and not extra:
                continue
            plan = make_plan(_variant(cfg, {**extra, **changes}), w, mfu, suggest=False)
            if plan.fits:
                found.append({"change": " ".join(extra_labels + labels), "knobs": len(labels) + len(extra_labels),
                              "peak_gib": plan.memory.total / GIB, "tokens_per_s": plan.speed.tokens_per_s,
                              "cost_per_billion_tokens": plan.speed.cost_per_billion_tokens})
        return found

    found = fitting(world, [], {})
    gpn = cfg.cluster.gpus_per_node
    n = math.ceil(world / gpn) * 2
    while not found and n <= max_nodes:  # nothing fits here: the fewest nodes where something does
        found = fitting(n * gpn, [f"cluster.nodes={n}"], {"cluster.nodes": n})
        n *= 2
    found.sort(key=lambda f: (f["knobs"], f["cost_per_billion_tokens"]))
    return found[:limit]


def plan_measured(step: MeasuredStep, cluster_overrides: list[str] | None = None) -> Plan:
    """The plan of a measured benchmark step, as configured when it ran (tests compare the two)."""
    cfg = compose([*step.overrides, f"trainer.micro_batch_size={step.micro_batch}", f"data.seq_len={step.seq_len}",
                   f"cluster={step.gpu}", *(cluster_overrides or [])])
    return make_plan(cfg, step.world_size)


__all__ = ["MEASURED", "Borrowed", "Kernels", "Plan", "compose", "make_plan", "plan_measured", "suggestions"]

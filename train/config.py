"""Typed schemas for every Hydra config group, so a typo or a wrong type fails at composition time.

The schemas are registered in Hydra's ConfigStore; `configs/*.yaml` list them first in their defaults so
that every group file is merged onto a typed node. `validate()` adds the cross-field checks a schema
cannot express, and runs before any process group is created.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from data_pipelines.config import DataConfig, validate_data
from data_pipelines.config import check_choice as _choice
from train.engine.lr_schedule import SCHEDULES

MODEL_FAMILIES = ("qwen3_moe", "qwen3_5_moe")


@dataclass
class LoraConfig:
    """LoRA instead of full fine-tuning: every base weight frozen, adapters merged into the export."""
    enabled: bool = False
    rank: int = 16
    alpha: float = 32.0
    # nn.Linear modules (by their last name component) that get an adapter; the vision tower never does.
    # Qwen3.5: full attention q/k/v/o and Gated DeltaNet in_proj_qkv/in_proj_z/out_proj; Qwen3: q/k/v/o.
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # Adapters on every routed expert's gate, up and down projection (AutoEP's w1, w3, w2).
    experts: bool = True
    # Parameter-name prefixes trained in full beside the adapters (PEFT's modules_to_save), e.g. the embedding
    # and head of a small model whose fine-tuning format uses tokens pretraining rarely saw.
    trainable: list[str] = field(default_factory=list)


@dataclass
class ModelConfig:
    family: str = MISSING
    # A local Hugging Face folder (config.json + safetensors). Its config wins over `hf_config`.
    init_from: str | None = None
    # Keyword arguments for the transformers config class; nested `text_config`/`vision_config` for Qwen3.5.
    hf_config: dict[str, Any] = field(default_factory=dict)
    activation_checkpointing: bool = False
    attn_implementation: str = "sdpa"
    # Parameter-name prefixes kept frozen (requires_grad=False), e.g. ["model.visual."] to fine-tune the language
    # model on top of a pretrained vision tower. A prefix that matches nothing is an error.
    frozen: list[str] = field(default_factory=list)
    # Qwen3.5: when the training data has no image, add "model.visual." to `frozen` (the tower would get only zero
    # gradients and weight decay). false: keep it trainable (to resume a checkpoint saved with it trainable).
    freeze_vision_without_images: bool = True
    trust_remote_code: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    # Qwen3.5 multi-token prediction layers trained beside the trunk (`mtp.*`, the draft head of vLLM/SGLang
    # speculative decoding): 0 or 1. Read from `init_from` when it has them, else initialised fresh; needs
    # loss.mtp_coef > 0. With 0, an `init_from` model's mtp.* go to the export unchanged (a stale draft head).
    mtp_layers: int = 0


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 1
    overlap_comm: bool = False
    contiguous_gradients: bool = True
    reduce_bucket_size: int = 500_000_000
    allgather_bucket_size: int = 500_000_000
    offload_optimizer: bool = False


@dataclass
class ParallelConfig:
    ep_size: int = 1
    backend: str = "auto"  # auto: nccl with CUDA, gloo on CPU
    timeout_s: int = 1800
    use_grouped_mm: bool = True
    # AutoEP experts: "separate" runs gate and up as two grouped GEMMs, "fused" as one over [w1 | w3]
    # (parameters and checkpoints keep the separate layout).
    gate_up_impl: str = "separate"
    # AutoEP expert path at EP=1: "auto" runs train/models/autoep_local_experts.py (sort once, per-expert GEMMs on
    # contiguous rows; outputs and gradients equal to upstream's up to float32 rounding) while the experts are on the CPU,
    # "local_loop" always, "upstream" never (DeepSpeed's padded torch._grouped_mm path).
    experts_impl: str = "auto"


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    # after warmup: "cosine" decays from there, "wsd" holds lr and decays linearly over the last decay_fraction
    schedule: str = "cosine"
    decay_fraction: float = 0.2
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    # lr multiplier of the input embedding (and of the output embedding when tied); 0 keeps it frozen in place.
    embedding_lr_scale: float = 1.0


BALANCE_MODES = ("micro_batch", "global_batch")


@dataclass
class LossConfig:
    aux_coef: float = 1e-3
    z_coef: float = 1e-3
    # The tokens the load-balancing loss's expert frequencies are counted over (train/engine/load_balance.py).
    balance: str = "micro_batch"
    # Weight of the multi-token prediction loss (model.mtp_layers): loss = lm + mtp_coef * mtp + aux and z terms.
    mtp_coef: float = 0.0



@dataclass
class LoggerConfig:
    wandb_mode: str = "offline"  # offline | online | disabled
    project: str = "moe-pipeline"
    entity: str | None = None
    log_every: int = 10
    progress: bool = True
    # Expert-collapse warnings: an expert dead for this many logging windows, or a layer's max/mean load above this.
    collapse_dead_windows: int = 5
    collapse_max_imbalance: float = 8.0


@dataclass
class TrainerConfig:
    max_steps: int = 100
    micro_batch_size: int = 8
    grad_accum_steps: int = 1
    precision: str = "auto"  # auto: bf16 with CUDA, fp32 on CPU
    seed: int = 1234
    checkpoint_every: int = 50
    keep_last: int = 3
    resume: bool = True
    # Peak dense TFLOP/s of one device for MFU; null measures an fp32 matmul on CPU or looks the GPU up.
    peak_tflops_per_device: float | None = None
    # Stop after this many steps in this process (tests and preemption drills); null runs to max_steps.
    stop_after_steps: int | None = None
    # A step with NaN/Inf loss or gradients: stop (naming the batch's rows), or skip it (no update applied) up to
    # max_nonfinite_skips times in this process, then stop.
    nonfinite: str = "stop"
    max_nonfinite_skips: int = 0
    # Validation loss on the held-out sets (data.validation, data.validation_fraction) every this many steps and
    # at the last step; a multiple of logger.log_every, since it is logged with that step's record. 0: off.
    eval_every: int = 0


@dataclass
class ClusterConfig:
    """The machines a job runs on, for `python -m train.plan` and each run's predicted memory, speed and cost.

    Device figures are the vendor's (memory, dense bf16 peak, HBM bandwidth); link bandwidths are what one device
    can expect from NCCL, stated per device and per direction. `mfu` null: the best MFU measured for the model
    family on this device (train/plan/measured.py), shown as such in the plan.
    """
    gpu: str = "cpu"  # a name the plan prints, and the measured-MFU table's key: h200 | h100 | cpu
    nodes: int = 1
    gpus_per_node: int = 1
    memory_gib: float = 12.0  # usable by one rank
    # Dense bf16 TFLOP/s of one device (fp32 on CPU); null measures this CPU's fp32 matmul rate.
    peak_tflops: float | None = None
    hbm_tbps: float = 0.02  # device-memory bandwidth, TB/s
    intra_node_gbps: float = 10.0  # all-to-all / reduce bandwidth per device inside a node, GB/s
    inter_node_gbps: float = 10.0  # the same across nodes (network per device), GB/s
    # What the allocator, NCCL/gloo and the CUDA context hold beyond tensors the model counts.
    runtime_reserve_gib: float = 0.0
    price_per_gpu_hour: float = 0.0  # currency units per device-hour; the ledger and plan multiply by it
    currency: str = "USD"
    mfu: float | None = None
    # Kernels the run uses: "cuda" (flash/efficient SDPA, fla Gated DeltaNet, AutoEP grouped GEMM) or "cpu"
    # (torch fallbacks, the local expert loop); the activation memory differs.
    kernels: str = "cpu"


@dataclass
class PathsConfig:
    root_dir: str = "."
    runs_dir: str = "runs"
    data_dir: str = "data"
    cache_dir: str = ".cache"
    # The generated commerce world (python -m data_pipelines.commerce_world out=...).
    world_dir: str = "data/commerce_world"


@dataclass
class PretrainConfig:
    run_name: str = "default"
    # null: Hydra's run directory (runs/<run_name>, the same on every rank and across restarts).
    run_dir: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


@dataclass
class ExportSettings:
    dtype: str = "bfloat16"  # bfloat16 | float32 | float16
    max_shard_size_mb: int = 4096
    overwrite: bool = False
    # null: 1e-4 for float32 exports, 0.1 for bfloat16, 0.05 for float16 (max |logit difference|).
    verify_atol: float | None = None


@dataclass
class ExportConfig:
    """`python -m train.export checkpoint=runs/X/checkpoints/step_N out=exports/my-model [verify=true]`."""

    checkpoint: str = MISSING
    out: str = MISSING
    verify: bool = False
    export: ExportSettings = field(default_factory=ExportSettings)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


def register_configs() -> None:
    """Make the schemas available to the `defaults` lists in configs/."""
    cs = ConfigStore.instance()
    cs.store(name="pretrain_schema", node=PretrainConfig)
    cs.store(name="export_schema", node=ExportConfig)


EXPORT_DTYPES = ("bfloat16", "float32", "float16")


def validate_export(cfg: ExportConfig | DictConfig) -> None:
    """Checks for `train.export`; raise ValueError naming the key."""
    _choice("export.dtype", cfg.export.dtype, EXPORT_DTYPES)
    if cfg.export.max_shard_size_mb < 1:
        raise ValueError(f"export.max_shard_size_mb={cfg.export.max_shard_size_mb} must be >= 1")
    if not os.path.isdir(cfg.checkpoint):
        raise ValueError(f"checkpoint={cfg.checkpoint!r}: no such directory")


def validate(cfg: PretrainConfig | DictConfig, world_size: int | None = None) -> None:
    """Cross-field checks; raise ValueError naming the key. Runs before any process group exists."""
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    _choice("model.family", cfg.model.family, MODEL_FAMILIES)
    _choice("deepspeed.zero_stage", cfg.deepspeed.zero_stage, (0, 1, 2, 3))
    _choice("parallel.backend", cfg.parallel.backend, ("auto", "nccl", "gloo"))
    _choice("parallel.gate_up_impl", cfg.parallel.gate_up_impl, ("separate", "fused"))
    _choice("parallel.experts_impl", cfg.parallel.experts_impl, ("auto", "upstream", "local_loop"))
    if cfg.parallel.experts_impl == "local_loop" and cfg.parallel.gate_up_impl == "fused":
        raise ValueError("parallel.experts_impl=local_loop runs its own gate/up GEMMs; parallel.gate_up_impl=fused "
                         "only applies to experts_impl=upstream")
    _choice("trainer.precision", cfg.trainer.precision, ("auto", "fp32", "bf16"))
    _choice("logger.wandb_mode", cfg.logger.wandb_mode, ("offline", "online", "disabled"))
    validate_data(cfg.data)
    _choice("trainer.nonfinite", cfg.trainer.nonfinite, ("stop", "skip"))
    _choice("loss.balance", cfg.loss.balance, BALANCE_MODES)
    if cfg.trainer.max_nonfinite_skips < 0:
        raise ValueError(f"trainer.max_nonfinite_skips={cfg.trainer.max_nonfinite_skips} must be >= 0")
    _validate_eval(cfg)
    if cfg.run_name in ("", ".", "..") or "/" in cfg.run_name or os.sep in cfg.run_name:
        raise ValueError(f"run_name={cfg.run_name!r} must be a plain folder name: runs go to "
                         f"{cfg.paths.runs_dir}/<run_name> and may not escape it")
    _validate_lora(cfg)
    _validate_mtp(cfg)
    if cfg.model.trust_remote_code:
        raise ValueError("model.trust_remote_code=true is refused: the model classes are transformers' own")
    if cfg.model.init_from is not None and not os.path.isdir(cfg.model.init_from):
        raise ValueError(f"model.init_from={cfg.model.init_from!r}: no such directory")
    if cfg.model.init_from is not None and not os.path.isfile(os.path.join(cfg.model.init_from, "config.json")):
        raise ValueError(f"model.init_from={cfg.model.init_from!r}: no config.json in that directory")
    positive = {
        "parallel.ep_size": cfg.parallel.ep_size,
        "trainer.max_steps": cfg.trainer.max_steps,
        "trainer.micro_batch_size": cfg.trainer.micro_batch_size,
        "trainer.grad_accum_steps": cfg.trainer.grad_accum_steps,
        "trainer.checkpoint_every": cfg.trainer.checkpoint_every,
        "trainer.keep_last": cfg.trainer.keep_last,
        "logger.log_every": cfg.logger.log_every,
    }
    for key, value in positive.items():
        if value < 1:
            raise ValueError(f"{key}={value} must be >= 1")
    if world_size % cfg.parallel.ep_size != 0:
        raise ValueError(f"parallel.ep_size={cfg.parallel.ep_size} does not divide the world size {world_size}")
    if not 0.0 <= cfg.optim.min_lr_ratio <= 1.0:
        raise ValueError(f"optim.min_lr_ratio={cfg.optim.min_lr_ratio} must be in [0, 1]")
    _choice("optim.schedule", cfg.optim.schedule, SCHEDULES)
    if not 0.0 < cfg.optim.decay_fraction <= 1.0:
        raise ValueError(f"optim.decay_fraction={cfg.optim.decay_fraction} must be in (0, 1]")
    if cfg.optim.grad_clip < 0:
        raise ValueError(f"optim.grad_clip={cfg.optim.grad_clip} must be >= 0 (0 disables clipping)")
    if cfg.optim.embedding_lr_scale < 0:
        raise ValueError(f"optim.embedding_lr_scale={cfg.optim.embedding_lr_scale} must be >= 0")


def _validate_eval(cfg: PretrainConfig | DictConfig) -> None:
    every = cfg.trainer.eval_every
    if every < 0:
        raise ValueError(f"trainer.eval_every={every} must be >= 0 (0 disables validation)")
    if every == 0:
        return
    if every % cfg.logger.log_every != 0:
        raise ValueError(f"trainer.eval_every={every} must be a multiple of logger.log_every={cfg.logger.log_every}: "
                         "validation metrics are logged with that step's record")
    if not cfg.data.validation and cfg.data.validation_fraction == 0:
        raise ValueError(f"trainer.eval_every={every} needs held-out data: data.validation sources or "
                         "data.validation_fraction > 0")


def _validate_lora(cfg: PretrainConfig | DictConfig) -> None:
    lora = cfg.model.lora
    if not lora.enabled:
        return
    if lora.rank < 1:
        raise ValueError(f"model.lora.rank={lora.rank} must be >= 1")
    if lora.alpha <= 0:
        raise ValueError(f"model.lora.alpha={lora.alpha} must be > 0")
    if not lora.target_modules and not lora.experts:
        raise ValueError("model.lora.enabled=true with no model.lora.target_modules and model.lora.experts=false "
                         "trains nothing")
    if cfg.deepspeed.zero_stage == 3:
        raise ValueError("model.lora.enabled=true needs deepspeed.zero_stage <= 2: LoRA freezes the experts, and "
                         "DeepSpeed 0.19.8 cannot checkpoint frozen AutoEP experts under ZeRO-3 (the base weights "
                         "are replicated anyway; ZeRO-1/2 partition the adapters' optimizer state)")


def _validate_mtp(cfg: PretrainConfig | DictConfig) -> None:
    layers, coef = cfg.model.mtp_layers, cfg.loss.mtp_coef
    if layers not in (0, 1):
        raise ValueError(f"model.mtp_layers={layers} must be 0 or 1 (released Qwen3.5 checkpoints have one MTP "
                         "layer; vLLM chains it for more draft tokens)")
    if coef < 0:
        raise ValueError(f"loss.mtp_coef={coef} must be >= 0")
    if layers and cfg.model.family != "qwen3_5_moe":
        raise ValueError(f"model.mtp_layers={layers}: multi-token prediction is Qwen3.5's (model.family=qwen3_5_moe), "
                         f"not {cfg.model.family}'s")
    if layers and coef == 0:
        raise ValueError(f"model.mtp_layers={layers} with loss.mtp_coef=0 would carry an MTP layer that never trains; "
                         "set loss.mtp_coef (e.g. 0.3) or model.mtp_layers=0")
    if coef and not layers:
        raise ValueError(f"loss.mtp_coef={coef} needs model.mtp_layers=1 (there is no MTP layer to train)")
    if layers and cfg.model.lora.enabled:
        raise ValueError("model.mtp_layers with model.lora.enabled=true is not supported yet: LoRA freezes every base "
                         "weight, the MTP layer's included; train it in a full fine-tune")
    if layers and cfg.deepspeed.zero_stage == 3:
        raise ValueError("model.mtp_layers with deepspeed.zero_stage=3 is not supported yet: an MTP layer is tested "
                         "under ZeRO-1/2 only, and its loss takes a zero gradient outside any module's forward when a "
                         "micro-batch has no MTP target, which ZeRO-3 cannot reduce; use ZeRO stage 1 or 2")


def to_container(cfg: PretrainConfig | DictConfig) -> dict:
    """Plain dict of the resolved config, for the run directory and wandb."""
    return OmegaConf.to_container(cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg), resolve=True)


@dataclass
class CommerceEvalConfig:
    # A folder written by `python -m data_pipelines.commerce_world out=DIR`.
    world_dir: str = MISSING
    split: str = "test"
    seeds: list[int] = field(default_factory=lambda: [0])
    limit: int | None = None  # first N scenarios (null: all)
    max_new_tokens: int = 160
    max_assistant_turns: int = 16
    # Render the tool schemas into the prompt; the tiny models are trained without them (they cost ~2k tokens).
    render_tools: bool = False
    image_qa: bool = True
    image_qa_limit: int | None = None
    # Teacher-forced accuracy on the split's reference dialogs (assistant tokens; digits = copying); 0: off.
    reference_limit: int | None = None
    # Teacher-forced accuracy on the repeated order ids of the world's validation order records (copying as
    # pretraining should teach it; chance 10%); the first N records, null: all, 0: off.
    record_repeats_limit: int | None = 200


@dataclass
class EvaluateConfig:
    model_path: str = MISSING
    # Where the results JSON goes; null: <model_path>/eval_<split>.json
    out: str | None = None
    precision: str = "fp32"
    # "auto" spreads a model larger than one device over the visible devices (transformers device_map).
    device_map: str | None = None
    eval: CommerceEvalConfig = field(default_factory=CommerceEvalConfig)


def register_eval_configs() -> None:
    ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)

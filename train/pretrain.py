"""Pretrain (or continue pretraining) a Qwen MoE with DeepSpeed ZeRO + AutoEP expert parallelism.

    python -m train.pretrain experiment=pretrain_text_tiny
    torchrun --nproc_per_node 2 -m train.pretrain experiment=pretrain_text_tiny parallel.ep_size=2
    torchrun ... -m train.pretrain model=qwen3_30b_a3b model.init_from=/models/Qwen3-30B-A3B deepspeed=zero2 \
        parallel.ep_size=8

Re-running the same command resumes from the run's latest complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from train.config import PretrainConfig, register_configs, to_container, validate
from train.redaction import install_log_redaction, redact_config

log = logging.getLogger("train.pretrain")
register_configs()


def _pad_vocab(n: int, multiple: int = 64) -> int:
    return (n + multiple - 1) // multiple * multiple


def pretrain(cfg: PretrainConfig | DictConfig, run_dir: str | os.PathLike) -> dict[str, Any]:
    """Validate -> distributed -> data -> model -> engine -> resume -> loop. Returns the last metrics."""
    validate(cfg)
    from train.models.build import build_hf_config

    probe = build_hf_config(cfg.model)  # key typos and family mismatches fail before any process group
    text = probe.get_text_config()
    if text.num_experts % cfg.parallel.ep_size != 0:
        raise ValueError(f"parallel.ep_size={cfg.parallel.ep_size} does not divide num_experts={text.num_experts}")

    from train.engine.distributed import configure_accelerator_env

    configure_accelerator_env(cfg.paths.cache_dir)
    from data_pipelines.tokenizer import align_vision_token_ids
    from data_pipelines.training_data import prepare_data
    from train.checkpoint.checkpointer import Checkpointer, Topology, set_rng_state
    from train.engine.deepspeed_setup import build_engine, resolve_dtype
    from train.engine.distributed import barrier, init_distributed
    from train.engine.loop import LoopSettings, train_loop
    from train.metrics.expert_load import CollapseMonitor, ExpertLoad
    from train.metrics.logger import MetricsLogger
    from train.metrics.throughput import device_peak_tflops, training_flops
    from train.models.build import build_model, check_zero3_vision, frozen_for_text_only

    run_dir = Path(run_dir)
    dist_info = init_distributed(cfg.parallel.backend, cfg.parallel.timeout_s)
    install_log_redaction()  # after deepspeed's import, so its handlers are covered too
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(redact_config(to_container(cfg)), indent=2))

    data = prepare_data(cfg.data, probe, Path(cfg.paths.data_dir), Path(cfg.paths.cache_dir),
                        dist_info.is_main, barrier, dist_info.rank, dist_info.world_size,
                        with_validation=cfg.trainer.eval_every > 0)
    vocab = None if cfg.model.init_from else _pad_vocab(len(data.tokenizer))
    hf_config = build_hf_config(cfg.model, vocab_size=vocab)
    if hf_config.get_text_config().vocab_size < len(data.tokenizer):
        raise ValueError(f"the tokenizer has {len(data.tokenizer)} tokens, the model's vocab_size is "
                         f"{hf_config.get_text_config().vocab_size}")
    align_vision_token_ids(hf_config, data.tokenizer, from_scratch=cfg.model.init_from is None)
    check_zero3_vision(cfg.model, cfg.deepspeed.zero_stage, data.has_images)
    frozen = frozen_for_text_only(cfg.model, data.has_images)
    if frozen is not None:
        with open_dict(cfg):
            cfg.model.frozen = frozen
        if dist_info.is_main:
            log.info("the training data has no images: model.frozen=%s (the vision tower gets no gradient, optimizer "
                     "state or weight decay, and is exported as loaded)", frozen)
    from train.metrics.memory import PeakMemory
    from train.plan.record import predict

    prediction = predict(cfg, hf_config, dist_info.world_size, dist_info.device.type) if dist_info.is_main else {}
    if dist_info.is_main:  # the prediction beside the config, for the measured values to be compared with
        config_json = {**redact_config(to_container(cfg)), "plan": prediction}
        (run_dir / "config.json").write_text(json.dumps(config_json, indent=2))
    peak_memory = PeakMemory(dist_info.device)  # the baseline: what this process holds before the model
    model = build_model(cfg.model, hf_config, resolve_dtype(cfg.trainer.precision), cfg.trainer.seed,
                        dist_info.rank % cfg.parallel.ep_size, cfg.parallel.ep_size)
    if dist_info.is_main:
        data.tokenizer.save_pretrained(run_dir / "tokenizer")

    checkpointer = Checkpointer(run_dir / "checkpoints", cfg.trainer.keep_last, dist_info.rank,
                                dist_info.world_size)
    topology = Topology(dist_info.world_size, cfg.parallel.ep_size, cfg.deepspeed.zero_stage)
    no_universal = ("model.lora freezes the AutoEP experts, and DeepSpeed 0.19.8's ds_to_universal cannot convert "
                    "frozen experts" if cfg.model.lora.enabled else None)
    plan = checkpointer.plan_resume(topology, no_universal) if cfg.trainer.resume else None
    engine = build_engine(cfg, model, load_universal=plan is not None and plan.universal)

    batches = data.batches(cfg.trainer.micro_batch_size, cfg.trainer.grad_accum_steps, dist_info.rank,
                           dist_info.world_size, cfg.data.seed, cfg.data.length_group_steps)
    validation = (data.validation_batches(cfg.trainer.micro_batch_size, dist_info.rank, dist_info.world_size,
                                          cfg.data.validation_max_batches) if cfg.trainer.eval_every > 0 else None)
    start_step, wandb_id = 0, None
    if plan is not None:
        rank_state = checkpointer.load(engine, plan)
        if cfg.data.streaming:  # each rank's own stream position; no meaning at another world size
            if rank_state is None or "data" not in rank_state:
                raise ValueError("data.streaming=true cannot resume at a different world size: stream positions "
                                 "are per rank (resume at the saved world size, or use map-style data)")
            batches.load_state_dict(rank_state["data"])
        else:
            batches.load_state_dict(plan.meta["data"])
        if rank_state is not None:
            set_rng_state(rank_state["rng"])
        start_step, wandb_id = plan.step, plan.meta.get("wandb_id")
        if dist_info.is_main:
            log.info("resumed from %s at step %d", plan.tag, start_step)

    metrics = MetricsLogger(run_dir, dist_info.is_main, cfg.logger.wandb_mode, cfg.logger.project,
                            cfg.logger.entity, cfg.run_name, redact_config(to_container(cfg)), wandb_id,
                            cfg.trainer.max_steps, cfg.logger.progress)
    text = hf_config.get_text_config()
    settings = LoopSettings(
        max_steps=cfg.trainer.max_steps, log_every=cfg.logger.log_every,
        checkpoint_every=cfg.trainer.checkpoint_every, stop_after_steps=cfg.trainer.stop_after_steps,
        lr=cfg.optim.lr, warmup_steps=cfg.optim.warmup_steps, min_lr_ratio=cfg.optim.min_lr_ratio,
        schedule=cfg.optim.schedule, decay_fraction=cfg.optim.decay_fraction,
        aux_coef=cfg.loss.aux_coef, z_coef=cfg.loss.z_coef, balance=cfg.loss.balance, num_experts=text.num_experts,
        top_k=text.num_experts_per_tok, flops=training_flops(hf_config, cfg.data.seq_len, cfg.model.mtp_layers),
        peak_tflops=device_peak_tflops(cfg.trainer.peak_tflops_per_device),
        nonfinite=cfg.trainer.nonfinite, max_nonfinite_skips=cfg.trainer.max_nonfinite_skips,
        mtp_coef=cfg.loss.mtp_coef, eval_every=cfg.trainer.eval_every,
        meta={"topology": topology.as_dict(), "family": cfg.model.family}, memory=peak_memory,
    )
    # the MTP layer, when there is one, is the last row of the per-layer expert load
    expert_load = ExpertLoad(text.num_hidden_layers + cfg.model.mtp_layers, text.num_experts, text.num_experts_per_tok)
    _start_event(cfg, metrics, start_step, dist_info, prediction)
    try:
        monitor = CollapseMonitor(cfg.logger.collapse_dead_windows, cfg.logger.collapse_max_imbalance)
        result = train_loop(engine, batches, settings, metrics, checkpointer, expert_load, monitor, start_step,
                            dist_info.device, validation)
        summary = _summary_event(cfg, metrics, run_dir, result["step"], prediction)
        metrics.summary({**{k: v for k, v in result.items() if not k.startswith("expert/per_layer")}, **summary})
        if data.policy is not None and dist_info.is_main:
            data.policy.log_summary()
    finally:
        metrics.close()
    return result


def _start_event(cfg, metrics, step: int, dist_info, plan: dict[str, Any]) -> None:
    """Record this process start in metrics.jsonl: the ledger sums every start of a run."""
    import torch

    from train.metrics.ledger import process_start_time

    device = dist_info.device
    metrics.event("start", step, {
        "process_start_time": process_start_time(), "world_size": dist_info.world_size, "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "max_steps": cfg.trainer.max_steps, "price_per_device_hour": cfg.cluster.price_per_gpu_hour,
        "currency": cfg.cluster.currency,
        "predicted": {k: v for k, v in (plan.get("memory") or {}).items() if k in ("tensors_gib", "peak_gib")}})


def _summary_event(cfg, metrics, run_dir: Path, step: int, plan: dict[str, Any]) -> dict[str, Any]:
    """The ledger of the run so far and this process's measured values beside the prediction (rank 0)."""
    if not metrics.enabled:
        return {}
    from train.plan.record import run_summary

    summary = run_summary(run_dir / "metrics.jsonl", plan, cfg.cluster.price_per_gpu_hour, cfg.cluster.currency)
    metrics.event("summary", step, summary)
    return summary


@hydra.main(config_path="../configs", config_name="pretrain", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from data_pipelines.bad_input import stop_on_bad_input
    from train.engine.distributed import adopt_slurm_rank_env, destroy_process_group_at_exit

    adopt_slurm_rank_env()  # under srun (one task per GPU): rank and world size from Slurm, before validation
    run_dir = cfg.run_dir or HydraConfig.get().runtime.output_dir
    logging.getLogger().setLevel(logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)
    log.debug(OmegaConf.to_yaml(cfg))
    with stop_on_bad_input():  # bad data ends the run with its one-line message
        pretrain(cfg, run_dir)
    destroy_process_group_at_exit()


if __name__ == "__main__":
    main()

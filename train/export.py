"""Export a training checkpoint as a Hugging Face folder that transformers, vLLM and SGLang load as it is.

    python -m train.export checkpoint=runs/X/checkpoints/step_00001000 out=exports/my-model
    python -m train.export checkpoint=... out=... export.dtype=float32
    torchrun --nproc_per_node 2 -m train.export checkpoint=... out=... verify=true

Any ZeRO stage and EP size: the conversion reads the checkpoint files (rank 0, layer by layer). With
`verify=true` every rank of the checkpoint's topology rebuilds the training engine from the checkpoint and
rank 0 compares its logits with the export's, printing the max difference and failing above the tolerance.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from train.config import ExportConfig, register_configs, validate_export

log = logging.getLogger("train.export")
register_configs()

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def validate(cfg: ExportConfig | DictConfig, world_size: int | None = None) -> None:
    """The export's checks at a world size (scripts/submit.sh runs them before queueing): with `verify=true`
    the training engine is rebuilt, so the job needs the checkpoint's world size. Raises ValueError."""
    validate_export(cfg)
    world = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    meta = Path(cfg.checkpoint) / "meta.json"  # a missing one is named by open_source, in export()
    saved = json.loads(meta.read_text())["topology"]["world_size"] if meta.exists() else world
    if cfg.verify and world != saved:
        raise ValueError(f"verify=true rebuilds the training engine of {cfg.checkpoint}: run it on the checkpoint's "
                         f"world size {saved} (ranks), not {world}")


def export(cfg: ExportConfig | DictConfig) -> dict[str, Any]:
    """Convert (rank 0), then optionally verify (all ranks). Returns the export's counts and the max diff."""
    validate(cfg)  # every rank checks its input before any work
    from train.checkpoint.hf_export import export_checkpoint, open_source

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    # rank 0's export_checkpoint, which reads the files, hashes them
    source = open_source(cfg.checkpoint, check_files=False)
    result: dict[str, Any] = {}
    if world > 1 or cfg.verify:
        from train.engine.distributed import configure_accelerator_env, init_distributed

        configure_accelerator_env(cfg.paths.cache_dir)
        init_distributed(cfg.parallel.backend, cfg.parallel.timeout_s)
    from train.engine.distributed import barrier

    if rank == 0:
        result = export_checkpoint(source.ckpt_dir, cfg.out, DTYPES[cfg.export.dtype],
                                   cfg.export.max_shard_size_mb << 20, cfg.export.overwrite)
    barrier()
    if cfg.verify:
        from train.checkpoint import export_verify
        from train.models.hf_side_files import load_tokenizer

        tokenizer = load_tokenizer(source.tokenizer_dir, source.family)
        batches = export_verify.fixed_inputs(source.family, tokenizer)
        reference = export_verify.training_logits(source, batches, world)
        if rank == 0:
            mtp = bool(source.run_config.get("model", {}).get("mtp_layers"))
            exported = export_verify.export_logits(Path(cfg.out), source.family, batches, mtp)
            atol = cfg.export.verify_atol
            atol = export_verify.DEFAULT_ATOL[cfg.export.dtype] if atol is None else atol
            result["verify_max_diff"] = export_verify.compare(reference, exported, atol)
        barrier()
    return result


@hydra.main(config_path="../configs", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from train.engine.distributed import adopt_slurm_rank_env, destroy_process_group_at_exit

    adopt_slurm_rank_env()  # under srun (slurm/export.sbatch): rank and world size from Slurm
    logging.getLogger().setLevel(logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)
    result = export(cfg)
    destroy_process_group_at_exit()
    if result:
        log.info("export done: %s", result)


if __name__ == "__main__":
    main()

"""Fine-tune a Qwen MoE on commerce dialogs: the pretraining core (engine, losses, metrics, checkpoints) with
the SFT data path (chat template rendering, loss on assistant tokens only).

    python -m train.sft experiment=sft_commerce_tiny model.init_from=exports/pretrain
    torchrun --nproc_per_node 2 -m train.sft experiment=sft_commerce_tiny model.init_from=... parallel.ep_size=2
"""

from __future__ import annotations

import logging
import os

import hydra
from omegaconf import DictConfig

from train.config import register_configs, validate  # noqa: F401  (validate: scripts/submit.sh checks with it)
from train.pretrain import pretrain

log = logging.getLogger("train.sft")
register_configs()


@hydra.main(config_path="../configs", config_name="sft", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from data_pipelines.bad_input import stop_on_bad_input
    from train.engine.distributed import adopt_slurm_rank_env, destroy_process_group_at_exit

    adopt_slurm_rank_env()  # under srun (one task per GPU): rank and world size from Slurm, before validation
    logging.getLogger().setLevel(logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)
    with stop_on_bad_input():  # bad data ends the run with its one-line message
        pretrain(cfg, cfg.run_dir or HydraConfig.get().runtime.output_dir)
    destroy_process_group_at_exit()


if __name__ == "__main__":
    main()

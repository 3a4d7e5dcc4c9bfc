"""Check a job's composed config against its entry point's validate() for a given world size, before queueing.

    python -m train.pretrain --cfg job --resolve <overrides> > job.yaml   # Hydra composes (and names bad keys)
    python -m train.check_config train.pretrain 16 job.yaml                  # cross-field checks at 16 ranks

scripts/submit.sh runs both, so a bad override fails on the login node instead of after the queue wait.
The entry module must expose `validate(cfg, world_size)` (train.pretrain re-exports train.config.validate).
"""

from __future__ import annotations

import importlib
import sys

from omegaconf import OmegaConf


def check(entry: str, world_size: int, job_yaml: str) -> None:
    """Raise ValueError (naming the key) if the entry's validate() refuses the config at this world size."""
    module = importlib.import_module(entry)
    validate = getattr(module, "validate", None)
    if validate is None:
        raise ValueError(f"{entry} has no validate(cfg, world_size) to check the config with")
    validate(OmegaConf.load(job_yaml), world_size)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m train.check_config ENTRY_MODULE WORLD_SIZE JOB_YAML", file=sys.stderr)
        return 2
    entry, world_size, job_yaml = argv[0], int(argv[1]), argv[2]
    try:
        check(entry, world_size, job_yaml)
    except ValueError as err:
        print(f"config error ({entry}, world size {world_size}): {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

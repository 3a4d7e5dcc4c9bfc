"""Will it fit, how fast, what will it cost: `python -m train.plan <the job's overrides>`.

    python -m train.plan experiment=qwen3_5_397b_cpt_16x8
    python -m train.plan model=qwen3_30b_a3b cluster=h200 cluster.nodes=4 parallel.ep_size=8 deepspeed=zero2
    python -m train.plan --config-name sft model=qwen3_5_35b_a3b cluster=h100 --json plan.json
    python -m train.plan ... --check          # exit status 1 when the plan does not fit (scripts/submit.sh)

Takes the same Hydra overrides as `train.pretrain` (or `--config-name sft` for `train.sft`), plus the cluster
(`cluster=h200|h100|cpu`, `cluster.nodes`, `cluster.gpus_per_node`, `cluster.price_per_gpu_hour`, `cluster.mfu`).
"""

from __future__ import annotations

import json
import sys

import hydra
from omegaconf import DictConfig

from train.config import register_configs

register_configs()
_OPTIONS = {"check": False, "json": None}
# Hydra's flags that take a value (`--info` only with one of its choices), so overrides can be told from values
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
                "-cd", "--experimental-rerun"}
_INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
_QUIET = ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]


def _take_options(argv: list[str]) -> list[str]:
    """Our own flags out of argv (Hydra parses the rest)."""
    rest = []
    it = iter(argv)
    for arg in it:
        if arg == "--check":
            _OPTIONS["check"] = True
        elif arg == "--json":
            _OPTIONS["json"] = next(it, None)
        elif arg.startswith("--json="):
            _OPTIONS["json"] = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest


def _hydra_argv(args: list[str]) -> list[str]:
    """Hydra's flags first, then the user's overrides and ours: Hydra reads its overrides as one run of positional
    arguments, so ours appended after `--cfg job` would be refused."""
    flags, overrides = [], []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _VALUE_FLAGS or (arg in ("--info", "-i") and i + 1 < len(args) and args[i + 1] in _INFO_CHOICES):
            flags += args[i:i + 2]
            i += 2
            continue
        (flags if arg.startswith("-") else overrides).append(arg)
        i += 1
    return [*flags, *overrides, *_QUIET]


@hydra.main(config_path="../../configs", config_name="pretrain", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from train.plan.planner import make_plan
    from train.plan.render import render

    try:
        plan = make_plan(cfg)
    except ValueError as e:
        print(f"plan: {e}", file=sys.stderr)
        sys.exit(2)
    print(render(plan))
    if _OPTIONS["json"]:
        with open(_OPTIONS["json"], "w", encoding="utf-8") as f:
            json.dump(plan.as_dict(), f, indent=2)
    if _OPTIONS["check"] and not plan.fits:
        sys.exit(1)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *_hydra_argv(_take_options(sys.argv[1:]))]
    main()

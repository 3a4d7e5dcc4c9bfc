"""Shared fixtures: composed configs, a shared generated-data folder, and a torchrun launcher for runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_SILENT", "true")


# Set by an in-process process group (tests that build a DeepSpeed engine in the pytest process). A child
# process must never inherit them: srun-started tasks would take RANK=0/WORLD_SIZE=1 as given, and a
# child would try to bind the parent's MASTER_PORT.
DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE",
            "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a job a test launches: this process's, minus its process-group variables."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def world_of_one():
    """A process group of one in the pytest process (DeepSpeed reads its variables from os.environ, so they
    stay set: every launcher in the tests builds its child's environment with `subprocess_env`)."""
    from train.engine.distributed import configure_accelerator_env, init_distributed

    configure_accelerator_env(str(ROOT / ".cache"))
    return init_distributed("gloo")


# The smallest Qwen3.5-MoE shape the tests build (the Qwen3-MoE one is `experiment=ci_tiny`).
TINY_QWEN3_5 = [
    "model=qwen3_5_moe_tiny",
    "model.hf_config.text_config.hidden_size=64",
    "model.hf_config.text_config.num_experts=8",
    "model.hf_config.text_config.moe_intermediate_size=32",
    "model.hf_config.text_config.shared_expert_intermediate_size=32",
    "model.hf_config.vision_config.out_hidden_size=64",
]


def compose(overrides: list[str], config_name: str = "pretrain"):
    """The config a user gets from the CLI with these overrides (Hydra's compose API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from train.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory) -> dict[str, str]:
    """Data and cache folders reused by every run in the session (the corpus and tokenizer are built once)."""
    base = tmp_path_factory.mktemp("shared")
    return {"data": str(base / "data"), "cache": str(base / "cache")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunResult:
    def __init__(self, proc: subprocess.CompletedProcess, run_dir: Path) -> None:
        self.proc = proc
        self.run_dir = run_dir
        self.output = proc.stdout + proc.stderr

    @property
    def records(self) -> list[dict]:
        """Every line of metrics.jsonl: step records and process events (start, summary)."""
        path = self.run_dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    @property
    def metrics(self) -> list[dict]:
        """The step records (without the process events)."""
        return [r for r in self.records if "event" not in r]

    @property
    def events(self) -> list[dict]:
        return [r for r in self.records if "event" in r]

    def losses(self) -> dict[int, float]:
        return {m["step"]: m["loss"] for m in self.metrics}


def run_pretrain(run_dir: Path, nproc: int, overrides: list[str], shared: dict[str, str],
                 module: str = "train.pretrain", timeout: int = 900, check: bool = True,
                 env: dict[str, str] | None = None) -> RunResult:
    """`torchrun --nproc_per_node N -m train.pretrain ...` exactly as a user runs it (`env`: extra variables)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={_free_port()}", "-m", module, *overrides,
           f"paths.data_dir={shared['data']}", f"paths.cache_dir={shared['cache']}",
           f"hydra.run.dir={run_dir}"]
    full_env = subprocess_env(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    result = RunResult(proc, run_dir)
    if check and proc.returncode != 0:
        raise AssertionError(f"run failed ({proc.returncode}):\n{result.output[-6000:]}")
    return result

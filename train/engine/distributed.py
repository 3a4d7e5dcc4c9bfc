"""Process-group start-up for torchrun, Slurm or a single process; gloo on CPU, NCCL on GPU."""

from __future__ import annotations

import atexit
import datetime
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from train.engine import subgroup_timeout_shim


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def configure_accelerator_env(cache_dir: str) -> None:
    """Must run before deepspeed is imported: pick DeepSpeed's accelerator and its JIT-op cache."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.abspath(os.path.join(cache_dir, "torch_extensions")))


def first_slurm_host(nodelist: str) -> str:
    """First host of a Slurm hostlist ("gpu[007-010,12],cpu1" -> "gpu007"): where task 0 of a step runs."""
    first = re.split(r",(?![^\[]*\])", nodelist.strip(), maxsplit=1)[0]
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[-,]", m.group(1))[0], first)


def slurm_rank_env(environ: Mapping[str, str]) -> dict[str, str]:
    """RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT for a process that srun started as one task per GPU.

    Empty when a launcher (torchrun) already set RANK, or outside a job step (the batch shell itself has no
    SLURM_STEP_NUM_TASKS), so a plain `python` in an allocation stays a single process.
    """
    if "RANK" in environ or "SLURM_STEP_NUM_TASKS" not in environ or "SLURM_PROCID" not in environ:
        return {}
    env = {
        "RANK": environ["SLURM_PROCID"],
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "WORLD_SIZE": environ["SLURM_STEP_NUM_TASKS"],
        "MASTER_ADDR": environ.get("MASTER_ADDR")
        or first_slurm_host(environ.get("SLURM_STEP_NODELIST") or environ["SLURM_JOB_NODELIST"]),
        # The same port for every restart of a job (requeues keep the job id); jobs sharing a node differ.
        "MASTER_PORT": environ.get("MASTER_PORT") or str(20000 + int(environ.get("SLURM_JOB_ID", "0")) % 40000),
    }
    return env


def adopt_slurm_rank_env() -> None:
    """Export the rank variables of a Slurm task (see slurm_rank_env); call before validating the world size."""
    os.environ.update(slurm_rank_env(os.environ))


def init_distributed(backend: str = "auto", timeout_s: int = 1800) -> DistInfo:
    """Start (or join) the default process group; a single process gets a world of one."""
    import deepspeed
    import torch.distributed as dist

    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    local_rank = int(os.environ["LOCAL_RANK"])
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    subgroup_timeout_shim.apply(datetime.timedelta(seconds=timeout_s))  # AutoEP's groups honour timeout_s too
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def destroy_process_group_at_exit() -> None:
    """Have the default process group destroyed when this process exits, while the interpreter is still alive.

    A gloo process that exits with its group alive can abort in interpreter teardown ("terminate called without
    an active exception", pytorch/pytorch#190489): a quarter of 2-process runs did here. Entry points call this
    after they succeed: the later jobs of a Hydra multirun in the same process keep the group (DeepSpeed caches
    its expert groups from it), and a failed run is not torn down (a rank inside a collective would hang in it).
    """
    global _destroy_at_exit
    if not _destroy_at_exit:
        atexit.register(_destroy_process_group)
        _destroy_at_exit = True


_destroy_at_exit = False


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()

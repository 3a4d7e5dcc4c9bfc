"""Process-group start-up for torchrun, Slurm or a single process; gloo on CPU, NCCL on GPU."""

from __future__ import annotations

import atexit
import datetime
import ipaddress
import os
import re
import socket
import sys
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


def route_to(host: str) -> tuple[str, str] | None:
    """(interface, local address) through which this machine reaches `host`; None if that is loopback.

    A UDP connect() sends nothing: the kernel only picks the route and the source address. On the host itself the
    source is the host's own address, so every node of a job gets the interface the others reach it on.
    """
    import psutil

    family, _, _, _, sockaddr = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((sockaddr[0], 9, *sockaddr[2:]))
        local = probe.getsockname()[0]
    if ipaddress.ip_address(local.split("%")[0]).is_loopback:
        return None
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == family and a.address.split("%")[0] == local for a in addrs):
            return name, local
    return None


def _spans_nodes(environ: Mapping[str, str]) -> bool:
    if "SLURM_STEP_NUM_NODES" in environ and "SLURM_STEP_NUM_TASKS" in environ:
        return int(environ["SLURM_STEP_NUM_NODES"]) > 1
    local_world = environ.get("LOCAL_WORLD_SIZE")  # torchrun
    return local_world is not None and int(environ.get("WORLD_SIZE", "1")) > int(local_world)


def socket_ifname_env(environ: Mapping[str, str], backend: str) -> dict[str, str]:
    """GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME for a multi-process job, each only where the site left it unset.

    Both default to the interface that routes to the rendezvous host (MASTER_ADDR), which every node can reach by
    construction: gloo would otherwise bind the address this machine's hostname resolves to (on many clusters
    127.0.1.1, or a network the other nodes cannot reach), and NCCL its first interface that is not lo or docker*
    (a second Ethernet, virbr0, a container bridge). A job spanning several nodes whose rendezvous host resolves
    to loopback on that host cannot run gloo without GLOO_SOCKET_IFNAME: that is an error naming the variable.
    """
    if int(environ.get("WORLD_SIZE", "1")) <= 1:
        return {}
    master = environ.get("MASTER_ADDR", "127.0.0.1")
    try:
        route = route_to(master)
    except OSError as err:
        raise ValueError(f"MASTER_ADDR={master} does not resolve on {socket.gethostname()}: {err}") from err
    if route is None:
        if backend == "gloo" and _spans_nodes(environ) and not environ.get("GLOO_SOCKET_IFNAME"):
            raise ValueError(f"MASTER_ADDR={master} resolves to a loopback address on {socket.gethostname()}, but "
                             f"the job spans several nodes: fix that host's name resolution (/etc/hosts), or set "
                             f"GLOO_SOCKET_IFNAME to the interface the other nodes reach it on")
        return {}
    ifname = route[0]
    env = {}
    if not environ.get("GLOO_SOCKET_IFNAME"):
        env["GLOO_SOCKET_IFNAME"] = ifname
    if not environ.get("NCCL_SOCKET_IFNAME"):
        env["NCCL_SOCKET_IFNAME"] = f"={ifname}"  # "=": this name exactly, not every name it prefixes
    return env


def _announce_node(backend: str) -> None:
    """One line per node (local rank 0): where this node is, where it meets the others, on which interface."""
    if os.environ.get("LOCAL_RANK", "0") != "0" or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    master = os.environ["MASTER_ADDR"]
    try:
        resolved = socket.getaddrinfo(master, None, type=socket.SOCK_STREAM)[0][4][0]
    except OSError as err:
        resolved = f"unresolved: {err}"
    ifname = os.environ.get("GLOO_SOCKET_IFNAME" if backend == "gloo" else "NCCL_SOCKET_IFNAME", "default")
    print(f"[dist] rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']} (local rank 0) on "
          f"{socket.gethostname()}: rendezvous {master}:{os.environ['MASTER_PORT']} ({resolved}), {backend} "
          f"sockets on {ifname}", file=sys.stderr, flush=True)


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
    os.environ.update(socket_ifname_env(os.environ, backend))
    _announce_node(backend)
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

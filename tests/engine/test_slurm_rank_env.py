"""Rank variables and socket interfaces of a process that srun started as one task per GPU
(train/engine/distributed.py), and the entry points that adopt them."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT, subprocess_env
from train.engine.distributed import first_slurm_host, route_to, slurm_rank_env, socket_ifname_env

NODELISTS = ["localhost", "gpu[007-010,12],cpu1", "a,b[1-2]", "rack[1-2]-n[05-08]", "n1", "dgx-h100-[0003-0005]"]


@pytest.mark.parametrize("nodelist", NODELISTS)
def test_first_host_matches_slurms_own_expansion(nodelist):
    if shutil.which("scontrol") is None:
        pytest.skip("scontrol is not installed (scripts/local_slurm.sh start installs it)")
    expanded = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                              check=True).stdout.split()
    assert first_slurm_host(nodelist) == expanded[0]


def test_task_of_a_step_gets_rank_world_and_rendezvous():
    env = slurm_rank_env({"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "8",
                          "SLURM_STEP_NODELIST": "gpu[03-06]", "SLURM_JOB_NODELIST": "gpu[03-06]",
                          "SLURM_JOB_ID": "4242"})
    assert env == {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "MASTER_ADDR": "gpu03",
                   "MASTER_PORT": str(20000 + 4242 % 40000)}


def test_batch_shell_and_torchrun_workers_are_left_alone():
    batch_shell = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_NODELIST": "gpu[03-06]"}
    assert slurm_rank_env(batch_shell) == {}  # no SLURM_STEP_NUM_TASKS: python run directly in the batch script
    torchrun_worker = {"RANK": "3", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1", "SLURM_JOB_NODELIST": "n1"}
    assert slurm_rank_env(torchrun_worker) == {}


def test_explicit_rendezvous_wins():
    env = slurm_rank_env({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_NODELIST": "n[1-2]",
                          "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29400"})
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.0.0.7", "29400")


def _own_address() -> tuple[str, str] | None:
    """(interface, IPv4 address) of this machine that is not loopback, if it has one."""
    import ipaddress

    import psutil

    for name, addrs in sorted(psutil.net_if_addrs().items()):
        for a in addrs:
            if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback:
                return name, a.address
    return None


def test_route_to_loopback_is_none_and_to_an_own_address_is_its_interface():
    assert route_to("127.0.0.1") is None and route_to("localhost") is None
    own = _own_address()
    if own is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    assert route_to(own[1]) == own  # the first node of a step reaches itself on the address the others use


def test_socket_interfaces_default_to_the_route_to_the_rendezvous_host():
    own = _own_address()
    if own is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    ifname, addr = own
    job = {"WORLD_SIZE": "2", "MASTER_ADDR": addr}
    assert socket_ifname_env(job, "gloo") == {"GLOO_SOCKET_IFNAME": ifname, "NCCL_SOCKET_IFNAME": f"={ifname}"}
    site = {**job, "GLOO_SOCKET_IFNAME": "ib0", "NCCL_SOCKET_IFNAME": "^docker,lo"}
    assert socket_ifname_env(site, "nccl") == {}  # what the site exported wins
    assert socket_ifname_env({**job, "WORLD_SIZE": "1"}, "gloo") == {}


def test_one_node_jobs_on_loopback_are_left_alone():
    for env in ({"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"},
                {"WORLD_SIZE": "2", "MASTER_ADDR": "localhost", "SLURM_STEP_NUM_NODES": "1",
                 "SLURM_STEP_NUM_TASKS": "2"}):
        assert socket_ifname_env(env, "gloo") == {}


def test_a_multi_node_gloo_job_whose_rendezvous_host_is_loopback_is_refused():
    env = {"WORLD_SIZE": "16", "MASTER_ADDR": "localhost", "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NUM_TASKS": "16"}
    with pytest.raises(ValueError, match="MASTER_ADDR=localhost resolves to a loopback address on .* set "
                                         "GLOO_SOCKET_IFNAME to the interface the other nodes reach it on"):
        socket_ifname_env(env, "gloo")
    torchrun = {"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "127.0.1.1"}
    with pytest.raises(ValueError, match="MASTER_ADDR=127.0.1.1 resolves to a loopback address"):
        socket_ifname_env(torchrun, "gloo")
    assert socket_ifname_env({**env, "GLOO_SOCKET_IFNAME": "eth1"}, "gloo") == {}  # the site named it
    assert socket_ifname_env(env, "nccl") == {}  # NCCL picks its own interface; only its bootstrap needs the host


def test_an_unresolvable_rendezvous_host_is_named():
    with pytest.raises(ValueError, match=r"MASTER_ADDR=no-such-host\.invalid does not resolve on "):
        socket_ifname_env({"WORLD_SIZE": "2", "MASTER_ADDR": "no-such-host.invalid"}, "gloo")


@pytest.mark.parametrize("entry", ["train.pretrain", "train.sft"])
def test_entry_points_take_rank_and_world_size_from_a_slurm_task(entry, tmp_path):
    """Each sbatch entry runs under srun as one task per GPU: validate() sees Slurm's world size, not 1."""
    world, model = tmp_path / "world", tmp_path / "model"
    for part in ("dialogs", "image_qa"):
        (world / part).mkdir(parents=True)
        for split in ("train", "validation"):  # the demo's SFT config trains and validates on the world's files
            (world / part / f"{split}.jsonl").write_text("")
    model.mkdir()
    (model / "config.json").write_text("{}")
    experiment = ["experiment=ci_tiny"] if entry == "train.pretrain" else [
        "experiment=sft_commerce_tiny", f"model.init_from={model}", f"paths.world_dir={world}"]
    task = {"SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NUM_NODES": "2",
            "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_ID": "7"}
    proc = subprocess.run([sys.executable, "-m", entry, *experiment, "parallel.ep_size=3",
                           f"paths.runs_dir={tmp_path}/runs"], cwd=ROOT, env=subprocess_env(**task),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "parallel.ep_size=3 does not divide the world size 2" in proc.stderr, proc.stderr[-3000:]

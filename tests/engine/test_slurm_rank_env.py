"""Rank variables of a process that srun started as one task per GPU (train/engine/distributed.py)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from train.engine.distributed import first_slurm_host, slurm_rank_env

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

"""scripts/submit.sh runs the plan of the job it is about to queue and refuses one that does not fit (a fake sbatch
on PATH records whether anything was queued)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from tests.conftest import ROOT, subprocess_env

pytestmark = pytest.mark.slow


@pytest.fixture
def fake_sbatch(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch_calls"
    script = bin_dir / "sbatch"
    script.write_text(f'#!/bin/sh\necho "$@" >> {log}\necho 4242\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bin_dir, log


def submit(fake_sbatch, *args: str) -> subprocess.CompletedProcess:
    bin_dir, _ = fake_sbatch
    env = subprocess_env(PATH=f"{bin_dir}:{os.environ['PATH']}", MOE_PYTHON=sys.executable)
    return subprocess.run(["bash", "scripts/submit.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


def test_a_job_that_does_not_fit_is_not_queued_unless_forced(fake_sbatch):
    _, log = fake_sbatch
    job = ["--nodes=1", "slurm/pretrain.sbatch", "model=qwen3_5_397b_a17b", "cluster=h100", "data.seq_len=4096"]
    refused = submit(fake_sbatch, *job)
    assert refused.returncode != 0
    assert "DOES NOT FIT" in refused.stderr and "does not fit the device's memory" in refused.stderr
    assert "8 ranks" in refused.stderr and "nothing was queued" in refused.stderr
    assert not log.exists()
    forced = submit(fake_sbatch, "--force", *job)
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert forced.stdout.strip().splitlines()[-1] == "4242"
    assert "--force" not in log.read_text() and "model=qwen3_5_397b_a17b" in log.read_text()


def test_a_gpu_job_planned_for_the_cpu_default_is_refused(fake_sbatch):
    _, log = fake_sbatch
    refused = submit(fake_sbatch, "slurm/pretrain.sbatch", "experiment=ci_tiny")
    assert refused.returncode != 0 and "plan is for cluster=cpu: pass cluster=h200" in refused.stderr
    assert not log.exists()

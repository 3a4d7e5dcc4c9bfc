"""Slurm jobs on one node of the local cluster: sbatch launch, preemption + requeue + resume, submitit sweeps.

Runs, in order (2 CPUs: one 2-task job at a time):
  U  slurm/pretrain.sbatch, 2 tasks, EP=2, 40 steps, uninterrupted (tests/slurm/conftest.py)
  P  the same job, sent USR1 mid-run (`scancel --signal=USR1 --batch`, what Slurm does before the time limit):
     it checkpoints, requeues itself and resumes in the same run directory
  S  a 2-point Hydra sweep through hydra/launcher=slurm (submitit), one Slurm job per point
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.slurm.conftest import (
    LOCAL_SHAPE,
    STEPS,
    explain,
    job_env,
    losses,
    slurm_logs,
    submit,
    wait_done,
    wait_for_steps,
)

pytestmark = [pytest.mark.slurm, pytest.mark.multiprocess, pytest.mark.slow]


@pytest.fixture(scope="module")
def preempted(uninterrupted, tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("slurm_p")
    job_id, log = submit(tmp, shared_data)
    wait_for_steps(job_id, log, tmp / "runs" / f"moe-pretrain-{job_id}" / "metrics.jsonl", 3)
    signalled = subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], capture_output=True, text=True)
    assert signalled.returncode == 0, signalled.stderr
    info = wait_done(job_id, log, timeout=480)
    assert info["JobState"] == "COMPLETED", explain(job_id, log)
    return {"job_id": job_id, "info": info, "log": log, "run_dir": tmp / "runs" / f"moe-pretrain-{job_id}"}


def test_two_task_job_writes_checkpoints_metrics_and_wandb(uninterrupted):
    run_dir: Path = uninterrupted["run_dir"]  # run_name defaults to <job name>-<job id>
    assert uninterrupted["info"]["Restarts"] == "0"
    curve = losses(run_dir)
    assert [s for s, _ in curve] == list(range(1, STEPS + 1)), explain(uninterrupted["job_id"], uninterrupted["log"])
    assert curve[-1][1] < curve[0][1] - 0.5, curve
    assert (run_dir / "checkpoints" / f"step_{STEPS:08d}" / "COMPLETE").exists()
    meta = json.loads((run_dir / "checkpoints" / f"step_{STEPS:08d}" / "meta.json").read_text())
    assert meta["topology"]["world_size"] == 2 and meta["topology"]["ep_size"] == 2, meta
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    offline = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1 and (offline[0] / f"run-{run_id}.wandb").stat().st_size > 0, offline


def test_usr1_checkpoints_requeues_and_resumes_to_the_same_loss(preempted, uninterrupted):
    job_id, log, run_dir = preempted["job_id"], preempted["log"], preempted["run_dir"]
    text = log.read_text()
    assert preempted["info"]["Restarts"] == "1", explain(job_id, log)
    stopped = re.search(r"stopping at step (\d+) \(signal\)", text)
    assert stopped, explain(job_id, log)
    stop_step = int(stopped.group(1))
    assert 3 <= stop_step < STEPS, stop_step
    assert f"requeued job {job_id}" in text and "(restart 1)" in text
    assert f"resumed from step_{stop_step:08d} at step {stop_step}" in text, explain(job_id, log)
    # metrics.jsonl is appended by both starts: every step once, and every loss as in the uninterrupted job
    resumed, reference = losses(run_dir), dict(losses(uninterrupted["run_dir"]))
    assert [s for s, _ in resumed] == list(range(1, STEPS + 1))
    for step, loss in resumed:
        assert loss == pytest.approx(reference[step], rel=1e-6, abs=0), (step, loss, reference[step])
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(f"-{run_id}") for p in offline), offline


def test_submitit_sweep_runs_one_slurm_job_per_point(uninterrupted, tmp_path, shared_data):
    # after U: the shared data is built, so the two points (1 CPU each) can run at once without racing on it
    cmd = [sys.executable, "-m", "train.pretrain", "-m", "hydra/launcher=slurm", "experiment=ci_tiny",
           "optim.lr=1e-3,3e-3", "hydra.launcher.tasks_per_node=1", "hydra.launcher.gpus_per_node=0",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=15", f"paths.runs_dir={tmp_path}",
           f"paths.data_dir={shared_data['data']}", f"paths.cache_dir={shared_data['cache']}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=600)
    sweep = tmp_path / "ci_tiny-sweep"
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in sweep.glob(".submitit/*/*_log.*"))
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{logs}\n{slurm_logs()}"
    # submitit submits one job array; each point is one of its Slurm jobs, <array id>_<index>
    array_jobs = sorted(p.name for p in (sweep / ".submitit").glob("*_*") if p.is_dir())
    assert len(array_jobs) == 2 and all(re.fullmatch(r"\d+_[01]", i) for i in array_jobs), array_jobs
    for job in array_jobs:  # submitit returns once the results are written; the jobs end a moment later
        log = sweep / ".submitit" / job / f"{job}_0_log.out"
        assert wait_done(job, log, timeout=60)["JobState"] == "COMPLETED", explain(job, log)
    low, high = losses(sweep / "optim.lr=0.001"), losses(sweep / "optim.lr=0.003")
    assert [s for s, _ in low] == [s for s, _ in high] == list(range(1, 11))
    assert low[0][1] == pytest.approx(high[0][1], rel=1e-6)  # same init and data: step 1 is before any update
    assert low[-1][1] != pytest.approx(high[-1][1], rel=1e-3)  # each point trained with its own lr
    for point in ("optim.lr=0.001", "optim.lr=0.003"):
        assert (sweep / point / "checkpoints" / "step_00000010" / "COMPLETE").exists()


def _refused(script: str, overrides: list[str], message: str) -> None:
    name = f"moe-bad-{uuid.uuid4().hex[:8]}"
    cmd = ["bash", "scripts/submit.sh", *LOCAL_SHAPE, f"--job-name={name}", script, *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert "nothing was queued" in proc.stderr
    queued = subprocess.run(["squeue", "-h", "-t", "all", "-n", name], capture_output=True, text=True)
    assert queued.stdout.strip() == "", queued.stdout


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lrr=1", "Key 'lrr' not in 'OptimConfig'"),  # Hydra's own message
    ("parallel.ep_size=3", "parallel.ep_size=3 does not divide the world size 2"),  # validate() at 2 tasks
])
def test_submit_refuses_a_bad_override_before_queueing(cluster, override, message):
    _refused("slurm/pretrain.sbatch", ["experiment=ci_tiny", override], message)


def test_submit_checks_sft_and_export_jobs_with_their_own_validate(cluster, tmp_path):
    world, model = tmp_path / "world", tmp_path / "model"
    for part in ("dialogs", "image_qa"):
        (world / part).mkdir(parents=True)
        for split in ("train", "validation"):  # the demo's SFT config trains and validates on the world's files
            (world / part / f"{split}.jsonl").write_text("")
    model.mkdir()
    (model / "config.json").write_text("{}")
    _refused("slurm/sft.sbatch", ["experiment=sft_commerce_tiny", f"model.init_from={model}",
                                  f"paths.world_dir={world}", "parallel.ep_size=3"],
             "parallel.ep_size=3 does not divide the world size 2")
    _refused("slurm/export.sbatch", [f"checkpoint={tmp_path}/none", f"out={tmp_path}/out"],
             f"checkpoint='{tmp_path}/none': no such directory")

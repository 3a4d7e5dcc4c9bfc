"""Slurm jobs on a real (local, one-node) cluster: sbatch launch, preemption + requeue + resume, submitit sweeps.

The cluster comes from `scripts/local_slurm.sh start` (.ci/run starts it). In CI (CI=true) a missing cluster
fails these tests; elsewhere they skip with the reason. Runs, in order (2 CPUs: one 2-task job at a time):
  U  slurm/pretrain.sbatch, 2 tasks, EP=2, 40 steps, uninterrupted
  P  the same job, sent USR1 mid-run (`scancel --signal=USR1 --batch`, what Slurm does before the time limit):
     it checkpoints, requeues itself and resumes in the same run directory
  S  a 2-point Hydra sweep through hydra/launcher=slurm (submitit), one Slurm job per point
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, subprocess_env

pytestmark = [pytest.mark.slurm, pytest.mark.multiprocess, pytest.mark.slow]

STEPS = 40
JOB_OVERRIDES = ["experiment=ci_tiny", "parallel.ep_size=2", f"trainer.max_steps={STEPS}"]
# The #SBATCH lines ask for 8 GPUs and 8 CPUs per task; the local node has 2 CPUs and no GPU.
LOCAL_SHAPE = ["--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0", "--time=15"]
DONE_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
               "DEADLINE", "PREEMPTED"}


def _cluster_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch is not installed (scripts/local_slurm.sh start installs and starts a local cluster)"
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    states = proc.stdout.split()
    if proc.returncode != 0 or not any(s.rstrip("*") in ("idle", "mixed", "allocated") for s in states):
        return f"no usable Slurm node (sinfo: {proc.stdout.strip()} {proc.stderr.strip()}); run scripts/local_slurm.sh start"
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    problem = _cluster_problem()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI needs the local Slurm cluster: {problem}")
    pytest.skip(problem)


def _env() -> dict[str, str]:
    return subprocess_env(MOE_PYTHON=sys.executable, PYTHONUNBUFFERED="1")


def _job_info(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _slurm_logs() -> str:
    state = Path(os.environ.get("LOCAL_SLURM_DIR", "/tmp/moe-local-slurm")) / "log"
    tails = []
    for name in ("slurmctld.log", "slurmd.log"):
        path = state / name
        if path.exists():
            tails.append(f"--- {path} (tail)\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(tails)


def _explain(job_id: str, log: Path) -> str:
    text = log.read_text(errors="replace") if log.exists() else f"(no job log at {log})"
    return f"job {job_id}: {_job_info(job_id)}\n--- {log} (tail)\n{text[-6000:]}\n{_slurm_logs()}"


def _wait_done(job_id: str, log: Path, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _job_info(job_id)
        if info.get("JobState") in DONE_STATES:
            return info
        time.sleep(2)
    subprocess.run(["scancel", job_id])
    raise AssertionError(f"job {job_id} did not finish within {timeout:.0f} s\n{_explain(job_id, log)}")


def _submit(tmp: Path, shared: dict[str, str], extra: list[str] = ()) -> tuple[str, Path]:
    """scripts/submit.sh exactly as a user runs it; returns the job id and its log file."""
    cmd = ["bash", "scripts/submit.sh", *LOCAL_SHAPE, f"--output={tmp}/%x-%j.out", "slurm/pretrain.sbatch",
           *JOB_OVERRIDES, *extra, f"paths.runs_dir={tmp}/runs", f"paths.data_dir={shared['data']}",
           f"paths.cache_dir={shared['cache']}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"submit failed:\n{proc.stdout}\n{proc.stderr}"
    job_id = proc.stdout.strip().splitlines()[-1].split(";")[0]
    assert job_id.isdigit(), proc.stdout
    return job_id, tmp / f"moe-pretrain-{job_id}.out"


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "event" not in r]  # step records only


@pytest.fixture(scope="module")
def uninterrupted(cluster, tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("slurm_u")
    job_id, log = _submit(tmp, shared_data)
    info = _wait_done(job_id, log, timeout=420)
    assert info["JobState"] == "COMPLETED", _explain(job_id, log)
    return {"job_id": job_id, "info": info, "log": log, "run_dir": tmp / "runs" / f"moe-pretrain-{job_id}"}


@pytest.fixture(scope="module")
def preempted(uninterrupted, tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("slurm_p")
    job_id, log = _submit(tmp, shared_data)
    metrics = tmp / "runs" / f"moe-pretrain-{job_id}" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and len([x for x in metrics.read_text().splitlines() if '"event"' not in x]) >= 3):
        if time.monotonic() > deadline or _job_info(job_id).get("JobState") in DONE_STATES:
            subprocess.run(["scancel", job_id])
            raise AssertionError(f"job {job_id} never reached step 3\n{_explain(job_id, log)}")
        time.sleep(0.2)
    signalled = subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], capture_output=True, text=True)
    assert signalled.returncode == 0, signalled.stderr
    info = _wait_done(job_id, log, timeout=480)
    assert info["JobState"] == "COMPLETED", _explain(job_id, log)
    return {"job_id": job_id, "info": info, "log": log, "run_dir": tmp / "runs" / f"moe-pretrain-{job_id}"}


def test_two_task_job_writes_checkpoints_metrics_and_wandb(uninterrupted):
    run_dir: Path = uninterrupted["run_dir"]  # run_name defaults to <job name>-<job id>
    assert uninterrupted["info"]["Restarts"] == "0"
    losses = _losses(run_dir)
    assert [s for s, _ in losses] == list(range(1, STEPS + 1)), _explain(uninterrupted["job_id"], uninterrupted["log"])
    assert losses[-1][1] < losses[0][1] - 0.5, losses
    assert (run_dir / "checkpoints" / f"step_{STEPS:08d}" / "COMPLETE").exists()
    meta = json.loads((run_dir / "checkpoints" / f"step_{STEPS:08d}" / "meta.json").read_text())
    assert meta["topology"]["world_size"] == 2 and meta["topology"]["ep_size"] == 2, meta
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    offline = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1 and (offline[0] / f"run-{run_id}.wandb").stat().st_size > 0, offline


def test_usr1_checkpoints_requeues_and_resumes_to_the_same_loss(preempted, uninterrupted):
    job_id, log, run_dir = preempted["job_id"], preempted["log"], preempted["run_dir"]
    text = log.read_text()
    assert preempted["info"]["Restarts"] == "1", _explain(job_id, log)
    stopped = re.search(r"stopping at step (\d+) \(signal\)", text)
    assert stopped, _explain(job_id, log)
    stop_step = int(stopped.group(1))
    assert 3 <= stop_step < STEPS, stop_step
    assert f"requeued job {job_id}" in text and "(restart 1)" in text
    assert f"resumed from step_{stop_step:08d} at step {stop_step}" in text, _explain(job_id, log)
    # metrics.jsonl is appended by both starts: every step once, and every loss as in the uninterrupted job
    resumed, reference = _losses(run_dir), dict(_losses(uninterrupted["run_dir"]))
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
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    sweep = tmp_path / "ci_tiny-sweep"
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in sweep.glob(".submitit/*/*_log.*"))
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{logs}\n{_slurm_logs()}"
    # submitit submits one job array; each point is one of its Slurm jobs, <array id>_<index>
    array_jobs = sorted(p.name for p in (sweep / ".submitit").glob("*_*") if p.is_dir())
    assert len(array_jobs) == 2 and all(re.fullmatch(r"\d+_[01]", i) for i in array_jobs), array_jobs
    for job in array_jobs:  # submitit returns once the results are written; the jobs end a moment later
        log = sweep / ".submitit" / job / f"{job}_0_log.out"
        assert _wait_done(job, log, timeout=60)["JobState"] == "COMPLETED", _explain(job, log)
    low, high = _losses(sweep / "optim.lr=0.001"), _losses(sweep / "optim.lr=0.003")
    assert [s for s, _ in low] == [s for s, _ in high] == list(range(1, 11))
    assert low[0][1] == pytest.approx(high[0][1], rel=1e-6)  # same init and data: step 1 is before any update
    assert low[-1][1] != pytest.approx(high[-1][1], rel=1e-3)  # each point trained with its own lr
    for point in ("optim.lr=0.001", "optim.lr=0.003"):
        assert (sweep / point / "checkpoints" / "step_00000010" / "COMPLETE").exists()


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lrr=1", "Key 'lrr' not in 'OptimConfig'"),  # Hydra's own message
    ("parallel.ep_size=3", "parallel.ep_size=3 does not divide the world size 2"),  # validate() at 2 tasks
])
def test_submit_refuses_a_bad_override_before_queueing(cluster, tmp_path, override, message):
    name = f"moe-bad-{uuid.uuid4().hex[:8]}"
    cmd = ["bash", "scripts/submit.sh", *LOCAL_SHAPE, f"--job-name={name}", f"--output={tmp_path}/%x-%j.out",
           "slurm/pretrain.sbatch", "experiment=ci_tiny", override]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert "nothing was queued" in proc.stderr
    queued = subprocess.run(["squeue", "-h", "-t", "all", "-n", name], capture_output=True, text=True)
    assert queued.stdout.strip() == "", queued.stdout

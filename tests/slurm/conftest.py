"""Submitting to the local Slurm cluster and reading jobs back; the one-node reference job both modules use.

The cluster comes from `scripts/local_slurm.sh start [--nodes 2]` (.ci/run starts two nodes). In CI (CI=true) a
missing cluster fails these tests; elsewhere they skip with the reason. On 2 CPUs one 2-task job runs at a time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, subprocess_env

STEPS = 40
JOB_OVERRIDES = ["experiment=ci_tiny", "parallel.ep_size=2", f"trainer.max_steps={STEPS}"]
# The #SBATCH lines ask for 8 GPUs and 8 CPUs per task; a local node has 2 CPUs and no GPU.
CPU_SHAPE = ["--cpus-per-task=1", "--gpus-per-node=0", "--time=15"]
LOCAL_SHAPE = ["--ntasks-per-node=2", *CPU_SHAPE]  # one node, 2 tasks
DONE_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
               "DEADLINE", "PREEMPTED"}
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def node_states() -> dict[str, str]:
    proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True)
    return dict(line.split() for line in proc.stdout.splitlines() if line.strip())


def usable_nodes() -> list[str]:
    return sorted(n for n, s in node_states().items() if s.rstrip("*") in ("idle", "mixed", "allocated"))


def _cluster_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch is not installed (scripts/local_slurm.sh start installs and starts a local cluster)"
    if not usable_nodes():
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
        return f"no usable Slurm node (sinfo: {proc.stdout.strip()} {proc.stderr.strip()}); run scripts/local_slurm.sh start"
    return None


def skip_or_fail(problem: str) -> None:
    if IN_CI:
        pytest.fail(f"CI needs the local Slurm cluster: {problem}")
    pytest.skip(problem)


@pytest.fixture(scope="package")
def cluster() -> None:
    problem = _cluster_problem()
    if problem is not None:
        skip_or_fail(problem)


def job_env(**extra: str) -> dict[str, str]:
    return subprocess_env(MOE_PYTHON=sys.executable, PYTHONUNBUFFERED="1", **extra)


def job_info(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def slurm_logs() -> str:
    state = Path(os.environ.get("LOCAL_SLURM_DIR", "/tmp/moe-local-slurm")) / "log"
    tails = []
    for path in sorted(state.glob("slurm*.log")):
        tails.append(f"--- {path} (tail)\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(tails)


def explain(job_id: str, log: Path) -> str:
    text = log.read_text(errors="replace") if log.exists() else f"(no job log at {log})"
    return f"job {job_id}: {job_info(job_id)}\n--- {log} (tail)\n{text[-6000:]}\n{slurm_logs()}"


def wait_done(job_id: str, log: Path, timeout: float, poll: float = 2.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = job_info(job_id)
        if info.get("JobState") in DONE_STATES:
            return info
        time.sleep(poll)
    subprocess.run(["scancel", job_id])
    raise AssertionError(f"job {job_id} did not finish within {timeout:.0f} s\n{explain(job_id, log)}")


def wait_for_steps(job_id: str, log: Path, metrics: Path, steps: int, timeout: float = 300) -> None:
    """Until the run has logged `steps` steps (the job is cancelled if it ends or stalls first)."""
    deadline = time.monotonic() + timeout
    while not (metrics.exists() and len(step_records(metrics)) >= steps):
        if time.monotonic() > deadline or job_info(job_id).get("JobState") in DONE_STATES:
            subprocess.run(["scancel", job_id])
            raise AssertionError(f"job {job_id} never reached step {steps}\n{explain(job_id, log)}")
        time.sleep(0.2)


def submit(tmp: Path, shared: dict[str, str], shape: list[str] = LOCAL_SHAPE, extra: list[str] = (),
           script: str = "slurm/pretrain.sbatch", overrides: list[str] = JOB_OVERRIDES,
           env: dict[str, str] | None = None) -> tuple[str, Path]:
    """scripts/submit.sh exactly as a user runs it; returns the job id and its log file."""
    cmd = ["bash", "scripts/submit.sh", *shape, f"--output={tmp}/%x-%j.out", script, *overrides, *extra]
    if script == "slurm/pretrain.sbatch":
        cmd += [f"paths.runs_dir={tmp}/runs", f"paths.data_dir={shared['data']}"]
    cmd.append(f"paths.cache_dir={shared['cache']}")
    proc = subprocess.run(cmd, cwd=ROOT, env=job_env(**(env or {})), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"submit failed:\n{proc.stdout}\n{proc.stderr}"
    job_id = proc.stdout.strip().splitlines()[-1].split(";")[0]
    assert job_id.isdigit(), proc.stdout
    name = Path(script).stem
    return job_id, tmp / f"moe-{name}-{job_id}.out"


def step_records(metrics: Path) -> list[dict]:
    """metrics.jsonl's step records (not the process start/summary events the ledger reads)."""
    rows = []
    for line in metrics.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if "event" not in row:
            rows.append(row)
    return rows


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in step_records(run_dir / "metrics.jsonl")]


def losses_of_start(run_dir: Path, first_step: int) -> dict[int, float]:
    """Steps logged by the start of the run that began after `first_step` (metrics.jsonl is appended)."""
    rows = step_records(run_dir / "metrics.jsonl")
    return {r["step"]: r["loss"] for r in rows if r["step"] - r["steps_this_run"] == first_step}


@pytest.fixture(scope="package")
def uninterrupted(cluster, tmp_path_factory, shared_data):
    """U: slurm/pretrain.sbatch on one node, 2 tasks, EP=2, 40 steps: the reference of every job here."""
    tmp = tmp_path_factory.mktemp("slurm_u")
    job_id, log = submit(tmp, shared_data)
    info = wait_done(job_id, log, timeout=420)
    assert info["JobState"] == "COMPLETED", explain(job_id, log)
    return {"job_id": job_id, "info": info, "log": log, "run_dir": tmp / "runs" / f"moe-pretrain-{job_id}"}

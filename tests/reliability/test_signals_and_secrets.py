"""SIGUSR1/SIGTERM: checkpoint at the end of the step and exit 0; a second signal exits at once. Secrets planted in
the environment never reach the run's artefacts (logs, config, checkpoints, wandb offline files).

Runs are single processes started as `python -m train.pretrain` (what srun starts per task), so the signals reach
the trainer directly, as Slurm's do:
  G  one SIGUSR1 after step 3, with secrets in the environment
  D  SIGTERM and SIGUSR1 back to back after step 2 (two of the same number sent back to back coalesce into one
     pending signal in the kernel; two numbers are both delivered, the lower first)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, subprocess_env
from train.redaction import RedactingFilter, redact_config, secret_values

pytestmark = [pytest.mark.slow]

SECRETS = {"WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567", "HF_TOKEN": "hf_PlantedSecret4242",
           "MY_SERVICE_TOKEN": "svc-PLANTED-token-777"}
BASE = ["experiment=ci_tiny", "trainer.max_steps=1000", "trainer.checkpoint_every=1000"]


def _launch(run_dir: Path, shared, env):
    cmd = [sys.executable, "-m", "train.pretrain", *BASE, f"paths.data_dir={shared['data']}",
           f"paths.cache_dir={shared['cache']}", f"hydra.run.dir={run_dir}"]
    out = open(run_dir.parent / f"{run_dir.name}.out", "w")
    err = open(run_dir.parent / f"{run_dir.name}.err", "w")
    penv = subprocess_env(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **env)
    return subprocess.Popen(cmd, cwd=ROOT, env=penv, stdout=out, stderr=err), out, err


def _wait_for_step(run_dir: Path, proc, step: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended before it was signalled"
        path = run_dir / "metrics.jsonl"
        if path.exists() and any(json.loads(x)["step"] >= step for x in path.read_text().splitlines() if x):
            return
        time.sleep(0.2)
    raise TimeoutError(f"no step {step} in {run_dir}")


def _signalled_run(run_dir: Path, shared, env, after_step: int, signals: list[int]) -> dict:
    proc, out, err = _launch(run_dir, shared, env)
    try:
        _wait_for_step(run_dir, proc, after_step)
        for sig in signals:
            os.kill(proc.pid, sig)
        t0 = time.time()
        rc = proc.wait(timeout=120)
        elapsed = time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
        err.close()
    text = (run_dir.parent / f"{run_dir.name}.out").read_text() + (run_dir.parent / f"{run_dir.name}.err").read_text()
    return {"rc": rc, "exit_s": elapsed, "output": text, "run_dir": run_dir}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data):
    base = tmp_path_factory.mktemp("signals")
    return {"G": _signalled_run(base / "g", shared_data, SECRETS, 3, [signal.SIGUSR1]),
            "D": _signalled_run(base / "d", shared_data, {}, 2, [signal.SIGTERM, signal.SIGUSR1])}


def test_sigusr1_checkpoints_the_current_step_and_exits_cleanly(runs):
    g = runs["G"]
    assert g["rc"] == 0, g["output"][-3000:]
    steps = [json.loads(x)["step"] for x in (g["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    last = steps[-1]
    assert f"stopping at step {last} (signal)" in g["output"]
    complete = sorted(p.parent.name for p in (g["run_dir"] / "checkpoints").glob("step_*/COMPLETE"))
    assert complete == [f"step_{last:08d}"]
    print(f"G: SIGUSR1 -> checkpoint of step {last} and exit in {g['exit_s']:.1f} s")


def test_second_signal_exits_at_once(runs):
    d = runs["D"]
    assert d["rc"] == 128 + signal.SIGTERM, d["output"][-3000:]  # SIGUSR1 handled first asks for a stop
    assert "will checkpoint and exit after this step" in d["output"] and "stopping at step" not in d["output"]
    assert not list((d["run_dir"] / "checkpoints").glob("step_*/COMPLETE"))
    assert d["exit_s"] < 15, d["exit_s"]
    print(f"D: second signal -> exit {d['rc']} in {d['exit_s']:.1f} s")


def test_planted_secrets_reach_no_artefact(runs):
    g = runs["G"]
    files = [p for p in g["run_dir"].rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.name == "config.json" for p in files)
    assert any(p.name == "mp_rank_00_model_states.pt" for p in files)
    blobs = {str(p): p.read_bytes() for p in files}
    blobs["stdout+stderr"] = g["output"].encode()
    for name, value in SECRETS.items():
        leaks = [where for where, data in blobs.items() if value.encode() in data]
        assert not leaks, f"{name} found in {leaks}"


def test_redaction_of_configs_and_log_lines():
    env = {"HF_TOKEN": "hf_abcdefgh123", "SHORT_TOKEN": "1", "PATH": "/usr/bin:/bin/hf_abcdefgh"}
    secrets = secret_values(env)
    assert secrets == {"hf_abcdefgh123": "HF_TOKEN"}
    assert redact_config({"a": ["x hf_abcdefgh123 y"], "b": 3}, secrets) == {"a": ["x ***HF_TOKEN y"], "b": 3}
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "token=%s", ("hf_abcdefgh123",), None)
    RedactingFilter(secrets).filter(record)
    assert record.getMessage() == "token=***HF_TOKEN"

"""A rank SIGKILLed mid-step or inside a checkpoint save, and a hung rank: the job ends in bounded time and the
restart resumes from the last complete checkpoint with the loss curve of an uninterrupted run.

Faults are real (the rank SIGKILLs/SIGSTOPs itself at an exact point, MOE_FAULT_INJECT); the jobs are launched
with torchrun like a user's. One module-scoped chain of EP=2 runs on 2 processes serves all assertions:
  U  uninterrupted, 8 steps, checkpoint every 2
  A  rank 0 SIGKILLed inside the save of step 4 (checkpoint 2 complete, 4 partial)
  B  restart: skips the partial step 4, resumes from step 2; rank 1 SIGKILLed mid-step 6 (after its forward)
  C  restart: resumes from step 4 (written by B), runs to 8
  H  two ranks started directly (one task per GPU, as under Slurm); rank 1 SIGSTOPs itself mid-step 2: rank 0
     must give up after parallel.timeout_s instead of waiting forever
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, _free_port, run_pretrain, subprocess_env

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

EP2 = ["experiment=ci_tiny", "parallel.ep_size=2", "trainer.max_steps=8", "trainer.checkpoint_every=2",
       "trainer.keep_last=3", "logger.wandb_mode=disabled"]
EXIT_BOUND_S = 60.0  # a dead rank must end the job within this on CPU (measured: see the report in the run output)
HANG_TIMEOUT_S = 10


def _timed_run(run_dir, overrides, shared, env=None):
    result = run_pretrain(run_dir, 2, overrides, shared, check=False, env=env)
    end = time.time()
    m = re.search(r"\[fault injection\] .* t=([0-9.]+)", result.output)
    result.exit_after_fault_s = end - float(m.group(1)) if m else None
    return result


def _direct_ranks(run_dir, overrides, shared, env):
    """Two `python -m train.pretrain` processes with RANK/WORLD_SIZE set, as srun starts them."""
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        penv = {**subprocess_env(**env), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "train.pretrain", *overrides, f"paths.data_dir={shared['data']}",
               f"paths.cache_dir={shared['cache']}", f"hydra.run.dir={run_dir}"]
        log = open(run_dir.parent / f"{run_dir.name}_rank{rank}.log", "w")
        procs.append((subprocess.Popen(cmd, cwd=ROOT, env=penv, stdout=log, stderr=subprocess.STDOUT), log))
    return procs


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data):
    base = tmp_path_factory.mktemp("failures")
    out = {"U": run_pretrain(base / "u", 2, EP2, shared_data)}
    chain = base / "chain"
    out["A"] = _timed_run(chain, EP2, shared_data, {"MOE_FAULT_INJECT": "kill_in_save@4:0"})
    out["A_ckpts"] = sorted(p.name for p in (chain / "checkpoints").glob("step_*"))
    out["A_complete"] = sorted(p.parent.name for p in (chain / "checkpoints").glob("step_*/COMPLETE"))
    out["A_partial_bytes"] = sum(f.stat().st_size for f in (chain / "checkpoints" / "step_00000004").iterdir())
    out["B"] = _timed_run(chain, EP2, shared_data, {"MOE_FAULT_INJECT": "sigkill@6:1"})
    out["B_complete"] = sorted(p.parent.name for p in (chain / "checkpoints").glob("step_*/COMPLETE"))
    out["C"] = run_pretrain(chain, 2, EP2, shared_data)

    hang = base / "hang"
    t0 = time.time()
    procs = _direct_ranks(hang, [*EP2, f"parallel.timeout_s={HANG_TIMEOUT_S}"], shared_data,
                          {"MOE_FAULT_INJECT": "sigstop@2:1"})
    (p0, log0), (p1, log1) = procs
    try:
        rc0 = p0.wait(timeout=300)
        survivor_end = time.time()
    finally:
        p1.kill()
        p1.wait()
        log0.close()
        log1.close()
    out["H"] = {"rc0": rc0, "log0": (hang.parent / "hang_rank0.log").read_text(),
                "log1": (hang.parent / "hang_rank1.log").read_text(), "total_s": survivor_end - t0}
    m = re.search(r"\[fault injection\] .* t=([0-9.]+)", out["H"]["log1"])
    out["H"]["exit_after_fault_s"] = survivor_end - float(m.group(1)) if m else None
    return out


def _losses_from_run(result, first_step_of_run):
    """Steps logged by this start of the run (metrics.jsonl is appended across restarts)."""
    return {m["step"]: m["loss"] for m in result.metrics if m["step"] - m["steps_this_run"] == first_step_of_run}


def test_kill_inside_save_leaves_no_complete_marker_and_ends_the_job(runs):
    a = runs["A"]
    assert a.proc.returncode != 0
    assert "SIGKILL inside Checkpointer.save at step 4 on rank 0" in a.output
    assert runs["A_ckpts"] == ["step_00000002", "step_00000004"] and runs["A_complete"] == ["step_00000002"]
    print(f"A: job ended {a.exit_after_fault_s:.1f} s after rank 0 was killed inside the save; the partial "
          f"step_00000004 holds {runs['A_partial_bytes']} bytes (unusable), steps lost: 3-4 (resume from 2)")
    assert a.exit_after_fault_s is not None and a.exit_after_fault_s < EXIT_BOUND_S


def test_restart_after_kill_in_save_resumes_from_the_previous_complete_checkpoint(runs):
    b, u = runs["B"], runs["U"].losses()
    assert "skipping incomplete checkpoint" in b.output and "step_00000004 (no COMPLETE marker)" in b.output
    assert "resumed from step_00000002" in b.output
    resumed = _losses_from_run(b, 2)
    assert sorted(resumed) == [3, 4, 5]  # step 6 was cut by the kill
    for step, loss in resumed.items():
        assert loss == pytest.approx(u[step], rel=1e-6, abs=0), step


def test_kill_minus_9_mid_step_ends_the_job_in_bounded_time(runs):
    b = runs["B"]
    assert b.proc.returncode != 0
    assert "SIGKILL mid-step at step 6 on rank 1" in b.output
    print(f"B: job ended {b.exit_after_fault_s:.1f} s after rank 1 was SIGKILLed mid-step 6; steps lost: 5 and the "
          f"partial 6 (resume from 4)")
    assert b.exit_after_fault_s is not None and b.exit_after_fault_s < EXIT_BOUND_S
    assert runs["B_complete"] == ["step_00000002", "step_00000004"]  # B rewrote step 4 completely


def test_restart_after_kill_continues_the_uninterrupted_loss_curve(runs):
    c, u = runs["C"], runs["U"].losses()
    assert "resumed from step_00000004" in c.output
    resumed = _losses_from_run(c, 4)
    assert sorted(resumed) == [5, 6, 7, 8]
    for step, loss in resumed.items():
        assert loss == pytest.approx(u[step], rel=1e-6, abs=0), step


def test_hung_rank_makes_the_other_give_up_after_parallel_timeout_s(runs):
    h = runs["H"]
    assert "SIGSTOP mid-step at step 2 on rank 1" in h["log1"]
    assert h["rc0"] != 0, h["log0"][-3000:]
    assert re.search(r"[Tt]imed? ?out|timeout", h["log0"]), h["log0"][-3000:]
    print(f"H: survivor exited {h['exit_after_fault_s']:.1f} s after its peer hung (parallel.timeout_s="
          f"{HANG_TIMEOUT_S}); whole run {h['total_s']:.1f} s")
    assert HANG_TIMEOUT_S - 1 <= h["exit_after_fault_s"] < HANG_TIMEOUT_S + 30

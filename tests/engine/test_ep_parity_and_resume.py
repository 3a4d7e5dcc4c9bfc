"""End-to-end runs through torchrun: EP=2 vs EP=1 parity, exact resume, resume across EP sizes, wandb ids.

One module-scoped set of runs serves all assertions (each launch costs ~20 s of start-up on CPU):
  U2  EP=2 on 2 processes, 10 steps, uninterrupted
  U1  EP=1 on 1 process with grad_accum=2 (the same global batch), 10 steps
  S2  EP=2 on 2 processes, stopped after 5 steps (checkpoint at step 5)
  R2  S2's run resumed at EP=2 for steps 6-10
  R1  a copy of S2's checkpoint resumed at EP=1 on 1 process (universal conversion)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import run_pretrain

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

EP2 = ["experiment=ci_tiny", "parallel.ep_size=2", "trainer.grad_accum_steps=1"]
EP1 = ["experiment=ci_tiny", "parallel.ep_size=1", "trainer.grad_accum_steps=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data):
    base = tmp_path_factory.mktemp("runs")
    out = {}
    out["U2"] = run_pretrain(base / "u2", 2, EP2, shared_data)
    out["U1"] = run_pretrain(base / "u1", 1, EP1, shared_data)
    out["S2"] = run_pretrain(base / "r2", 2, [*EP2, "trainer.stop_after_steps=5"], shared_data)
    s2_losses = out["S2"].losses()
    shutil.copytree(base / "r2" / "checkpoints", base / "r1" / "checkpoints")
    out["R2"] = run_pretrain(base / "r2", 2, EP2, shared_data)
    out["R1"] = run_pretrain(base / "r1", 1, EP1, shared_data)
    out["S2_losses"] = s2_losses
    return out


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def test_loss_falls_on_real_tokens(runs):
    losses = runs["U2"].losses()
    assert sorted(losses) == list(range(1, 11))
    assert losses[10] < losses[1] - 0.3, losses


def test_ep2_matches_ep1_over_10_steps(runs):
    ep2, ep1 = runs["U2"].losses(), runs["U1"].losses()
    assert sorted(ep1) == sorted(ep2) == list(range(1, 11))
    worst = max(_rel(ep2[s], ep1[s]) for s in ep2)
    assert worst <= 1e-4, (worst, ep1, ep2)


def test_exact_resume_same_ep(runs):
    uninterrupted = runs["U2"].losses()
    assert sorted(runs["S2_losses"]) == [1, 2, 3, 4, 5]
    resumed = runs["R2"].losses()  # metrics.jsonl is appended: steps 1-5 from S2, 6-10 from R2
    assert sorted(resumed) == list(range(1, 11))
    assert "resumed from step_00000005" in runs["R2"].output
    assert "step_00000005: DeepSpeed read" in runs["R2"].output  # through train/checkpoint/weights_only_load_shim
    assert "all with weights_only=True" in runs["R2"].output
    for step in range(1, 11):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-6, abs=0), step


def test_resume_ep2_checkpoint_at_ep1_goes_through_universal(runs):
    r1 = runs["R1"]
    assert "loading through a universal checkpoint" in r1.output
    assert "ds_to_universal: weights_only_load_shim:" in r1.output and "with weights_only=True" in r1.output
    assert "step_00000005_universal: DeepSpeed read" in r1.output
    assert (r1.run_dir / "checkpoints" / "step_00000005_universal" / "COMPLETE").exists()
    at_ep1, at_ep2 = r1.losses(), runs["R2"].losses()
    assert 6 in at_ep1 and _rel(at_ep1[6], at_ep2[6]) <= 1e-4, (at_ep1, at_ep2)


def test_wandb_offline_run_exists_and_resume_keeps_id(runs):
    run_dir: Path = runs["R2"].run_dir
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2, offline  # the first start and the resumed start
    assert all(p.name.endswith(run_id) for p in offline)
    assert all((p / f"run-{run_id}.wandb").exists() for p in offline)


def test_metrics_jsonl_has_the_promised_fields(runs):
    m = runs["U2"].metrics[-1]
    for key in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "aux_loss", "z_loss", "tflops_per_device",
                "mfu", "peak_memory_gib", "expert/imbalance_max", "expert/dead", "expert/entropy_min"):
        assert key in m, key
    load = m["expert/per_layer"]["load"]
    assert len(load) == 2 and len(load[0]) == 8
    # every real token of both ranks is routed to its top-2 experts in each layer; the padding left after the
    # last label of a micro-batch is forwarded (counted in `tokens`) but not routed in the counts
    assert 0 < m["tokens"] <= 2 * 2 * 64
    assert 0 < sum(load[0]) == sum(load[1]) <= 2 * m["tokens"]

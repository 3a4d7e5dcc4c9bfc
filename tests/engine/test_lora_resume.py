"""LoRA runs resume exactly at the saved topology; another topology is refused by name, not half-converted.

EP=2 with ZeRO-2 is the case where DeepSpeed restores rank 0's frozen experts on every rank (autoep_shims shim 6);
a wrong restore shows as a different loss right after the resume. DeepSpeed 0.19.8's ds_to_universal fails on
frozen AutoEP experts ("AutoEP expert parameter ... is missing from checkpoint parameter shapes"), so a topology
change is refused before any conversion starts.

  U  EP=2, 2 processes, 6 LoRA steps, uninterrupted
  S  the same stopped after 3 steps, R  resumed at EP=2, R1  a copy of S's checkpoint resumed at EP=1 (1 process)
"""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import run_pretrain

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

LORA = ["experiment=ci_tiny", "deepspeed=zero2", "model.lora.enabled=true", "model.lora.rank=4", "optim.lr=1e-2",
        "trainer.max_steps=6", "trainer.checkpoint_every=3", "logger=disabled",
        "logger.log_every=1"]
EP2 = [*LORA, "parallel.ep_size=2", "trainer.grad_accum_steps=1"]
EP1 = [*LORA, "parallel.ep_size=1", "trainer.grad_accum_steps=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data):
    base = tmp_path_factory.mktemp("lora")
    out = {"U": run_pretrain(base / "u", 2, EP2, shared_data)}
    run_pretrain(base / "r", 2, [*EP2, "trainer.stop_after_steps=3"], shared_data)
    shutil.copytree(base / "r" / "checkpoints", base / "r1" / "checkpoints")
    out["R"] = run_pretrain(base / "r", 2, EP2, shared_data)
    out["R1"] = run_pretrain(base / "r1", 1, EP1, shared_data, check=False)
    return out


def test_lora_resume_at_the_same_ep_size_is_exact(runs):
    uninterrupted, resumed = runs["U"].losses(), runs["R"].losses()
    assert "resumed from step_00000003" in runs["R"].output
    assert sorted(resumed) == sorted(uninterrupted) == list(range(1, 7))
    assert uninterrupted[6] < uninterrupted[1]  # the adapters learn
    for step in range(4, 7):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-6, abs=0), step


def test_lora_resume_at_another_ep_size_is_refused_by_name(runs):
    r1 = runs["R1"]
    assert r1.proc.returncode != 0
    assert "this run has Topology(world_size=1, ep_size=1, zero_stage=2); model.lora freezes the AutoEP experts" \
        in r1.output
    assert "Resume with the saved world size, ep_size and ZeRO stage" in r1.output
    assert [p.name for p in (r1.run_dir / "checkpoints").glob("step_*")] == ["step_00000003"]  # nothing converted

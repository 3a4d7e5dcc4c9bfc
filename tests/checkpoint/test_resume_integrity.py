"""Damaged or incomplete checkpoints are skipped with a message naming them; training resumes from the
previous good one and repeats exactly the steps an uninterrupted run took."""

from __future__ import annotations

import pytest

from tests.conftest import run_pretrain

pytestmark = [pytest.mark.slow]

BASE = ["experiment=ci_tiny", "trainer.checkpoint_every=2", "trainer.keep_last=3"]


def test_corrupt_then_incomplete_checkpoints_fall_back(tmp_path, shared_data):
    run_dir = tmp_path / "run"
    first = run_pretrain(run_dir, 1, [*BASE, "trainer.max_steps=6", "trainer.stop_after_steps=4"], shared_data)
    reference = first.losses()
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000002", "step_00000004"]

    victim = ckpts / "step_00000004" / "mp_rank_00_model_states.pt"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    second = run_pretrain(run_dir, 1, [*BASE, "trainer.max_steps=6"], shared_data)
    assert f"{victim}: sha256 differs from the manifest (corrupted)" in second.output
    assert "resumed from step_00000002" in second.output
    resumed = [m for m in second.metrics if m["steps_this_run"] <= 2 and m["step"] in (3, 4)]
    assert [m["step"] for m in resumed][-2:] == [3, 4]
    for m in resumed[-2:]:
        assert m["loss"] == pytest.approx(reference[m["step"]], rel=1e-6, abs=0)

    (ckpts / "step_00000006" / "COMPLETE").unlink()
    third = run_pretrain(run_dir, 1, [*BASE, "trainer.max_steps=7"], shared_data)
    assert "skipping incomplete checkpoint" in third.output and "step_00000006" in third.output
    assert "resumed from step_00000004" in third.output

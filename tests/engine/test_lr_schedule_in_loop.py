"""optim.schedule and optim.decay_fraction reach the training loop: the lr it logs is the schedule's."""

from __future__ import annotations

import pytest

from tests.conftest import compose, run_pretrain
from train.config import validate
from train.engine.lr_schedule import get_lr


@pytest.mark.multiprocess
@pytest.mark.slow
def test_the_loop_applies_the_wsd_schedule_from_the_config(tmp_path, shared_data):
    run = run_pretrain(tmp_path / "run", 1, ["experiment=ci_tiny", "trainer.max_steps=8", "optim.warmup_steps=2",
                                             "optim.schedule=wsd", "optim.decay_fraction=0.5", "logger=disabled"],
                       shared_data, timeout=600)
    logged = {m["step"]: m["lr"] for m in run.metrics}
    assert sorted(logged) == list(range(1, 9))
    expected = [get_lr(s, 3e-3, 2, 8, 0.1, "wsd", 0.5) for s in range(8)]
    assert [logged[s + 1] for s in range(8)] == pytest.approx(expected)
    assert logged[3] == logged[6] == pytest.approx(3e-3) and logged[7] < 3e-3  # held, then decaying


@pytest.mark.parametrize(("override", "message"), [
    ("optim.schedule=linear", r"optim.schedule='linear' is not one of \['cosine', 'wsd'\]"),
    ("optim.decay_fraction=0", r"optim.decay_fraction=0.0 must be in \(0, 1\]"),
    ("optim.decay_fraction=1.5", r"optim.decay_fraction=1.5 must be in \(0, 1\]"),
])
def test_a_bad_schedule_setting_is_refused_by_key(override, message):
    with pytest.raises(ValueError, match=message):
        validate(compose(["experiment=ci_tiny", override]))

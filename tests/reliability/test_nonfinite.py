"""NaN/Inf loss or gradients: `trainer.nonfinite=skip` drops up to `max_nonfinite_skips` steps (no update, all
ranks agree) and then stops naming the batch's rows; `stop` (default) stops at once; no checkpoint ever holds NaN.

The NaN is real: MOE_FAULT_INJECT poisons the loss of one rank before backward, so its gradients are NaN too.
  S  EP=2 on 2 processes, skip policy with 1 allowed skip, NaN on rank 1 at steps 3 and 5, checkpoint every step
  T  1 process, default stop policy, NaN at step 2
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import run_pretrain
from train.checkpoint.checkpointer import Checkpointer
from train.engine.fault_injection import parse

BASE = ["experiment=ci_tiny", "trainer.max_steps=8", "trainer.checkpoint_every=1", "trainer.keep_last=10",
        "logger.wandb_mode=disabled"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data):
    base = tmp_path_factory.mktemp("nonfinite")
    skip = [*BASE, "parallel.ep_size=2", "trainer.nonfinite=skip", "trainer.max_nonfinite_skips=1"]
    return {
        "S": run_pretrain(base / "s", 2, skip, shared_data, check=False,
                          env={"MOE_FAULT_INJECT": "nan_loss@3:1,nan_loss@5:1"}),
        "T": run_pretrain(base / "t", 1, BASE, shared_data, check=False, env={"MOE_FAULT_INJECT": "nan_loss@2"}),
    }


def _tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def _deepspeed_state(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*_states.pt")):
        out.update({f.name + k: v for k, v in _tensors(torch.load(f, map_location="cpu", weights_only=False))})
    return out


@pytest.mark.multiprocess
@pytest.mark.slow
def test_skipped_step_applies_no_update_on_any_rank(runs):
    s = runs["S"]
    assert "step 3 skipped: 1 non-finite micro-batch losses, no update applied (1/1 skips used)" in s.output
    ckpts = s.run_dir / "checkpoints"
    at2, at3, at4 = (_deepspeed_state(ckpts / f"step_0000000{k}") for k in (2, 3, 4))
    assert at2.keys() == at3.keys() == at4.keys() and len(at2) > 10
    assert all(torch.equal(at2[k], at3[k]) for k in at2)  # weights and optimizer state untouched by step 3
    assert any(not torch.equal(at3[k], at4[k]) for k in at3)  # step 4 trained again
    meta = torch.load(next(ckpts.glob("step_00000003/mp_rank_00_model_states.pt")), weights_only=False)
    assert meta["skipped_steps"] == 1  # DeepSpeed's own count of dropped updates
    losses = s.losses()
    assert losses[3] != losses[3] and all(losses[k] == losses[k] for k in (1, 2, 4))  # NaN only at step 3
    assert s.metrics[-1]["nonfinite_skips"] == 1


@pytest.mark.multiprocess
@pytest.mark.slow
def test_skips_exhausted_stops_naming_the_rows_and_saves_nothing_of_that_step(runs):
    s = runs["S"]
    assert s.proc.returncode != 0
    line = next(x for x in s.output.splitlines() if "FloatingPointError: step 5" in x)
    assert "trainer.nonfinite=skip, 1/1 skips used" in line and "nothing from this step is saved" in line
    rows = line.split("rank 1: rows [")[1].split("]")[0].split(", ")
    assert len(rows) == 2 and all(r.isdigit() for r in rows)  # micro_batch_size=2 rows of rank 1, no rank 0
    assert "rank 0: rows" not in line
    complete = sorted(p.parent.name for p in (s.run_dir / "checkpoints").glob("step_*/COMPLETE"))
    assert complete == [f"step_0000000{k}" for k in (1, 2, 3, 4)]


@pytest.mark.slow
def test_default_policy_stops_at_the_first_nonfinite_step(runs):
    t = runs["T"]
    assert t.proc.returncode != 0
    assert "FloatingPointError: step 2: 1 non-finite micro-batch losses (trainer.nonfinite=stop" in t.output
    assert "rank 0: rows [" in t.output
    assert sorted(p.name for p in (t.run_dir / "checkpoints").glob("step_*")) == ["step_00000001"]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_zero3_save_refuses_nan_in_one_ranks_partition_on_all_ranks(tmp_path, shared_data):
    """Under ZeRO-3 `param.data` is empty: the check must read each rank's partition and all ranks must agree."""
    run = run_pretrain(tmp_path / "z3", 2, [*BASE, "deepspeed=zero3", "parallel.ep_size=2", "trainer.max_steps=4"],
                       shared_data, check=False, env={"MOE_FAULT_INJECT": "nan_weight@3:1"})
    assert run.proc.returncode != 0
    poisoned = run.output.split("[fault injection] NaN written into ")[1].split(" ")[0]
    ckpts = run.run_dir / "checkpoints"
    refusal = (f"FloatingPointError: refusing to write {ckpts / 'step_00000003'}: non-finite weights ({poisoned} on "
               "rank 1); the previous checkpoint stays the latest")
    assert run.output.count(refusal) == 2, run.output[-3000:]  # rank 0 (whose share is finite) refuses too
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000001", "step_00000002"]
    assert Checkpointer(ckpts, 10, 0, 1).latest_intact() == "step_00000002"


def test_checkpointer_refuses_nonfinite_weights(tmp_path):
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    with torch.no_grad():
        module[1].bias[0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"refusing to write .*step_00000007: non-finite weights \(1\.bias"):
        Checkpointer(tmp_path, 3, 0, 1).save(SimpleNamespace(module=module), 7, {}, {})
    assert not (tmp_path / "step_00000007").exists()


def test_fault_spec_typos_are_refused():
    assert [(f.name, f.step, f.rank) for f in parse("nan_loss@3:1, sigkill@6")] == [("nan_loss", 3, 1),
                                                                                  ("sigkill", 6, None)]
    with pytest.raises(ValueError, match="cannot read 'nan@3'"):
        parse("nan@3")

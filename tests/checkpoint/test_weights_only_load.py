"""Every checkpoint file we resume from is unpickled with weights_only=True (train/checkpoint/weights_only_load_shim.py).

A hostile file whose manifest was rewritten to match passes the checksum check; it must still be refused by name
before any of it is built. When `test_upstream_still_unpickles_foreign_globals` fails, DeepSpeed loads safely by
itself: drop `weights_only_loads()` from the Checkpointer and that test (keep `load_weights_only`).
"""

from __future__ import annotations

import os
import re

import pytest
import torch

from tests.conftest import run_pretrain
from train.checkpoint.checkpointer import MANIFEST, META, Checkpointer
from train.checkpoint.manifest import build_manifest, verify_manifest, write_manifest
from train.checkpoint.weights_only_load_shim import (
    DEEPSPEED_GLOBALS,
    UnsafeCheckpointError,
    load_weights_only,
    weights_only_loads,
)


class Harmless:
    """A foreign class: importable, runs no code, but not on the allowlist."""

    def __init__(self) -> None:
        self.value = 3


class RunsShell:
    """Unpickling it runs a shell command (the classic pickle payload)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_foreign_globals_are_refused_naming_the_file_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"weights": torch.ones(2), "payload": RunsShell(str(marker))}, hostile)
    harmless = tmp_path / "harmless.pt"
    torch.save({"obj": Harmless()}, harmless)
    original = torch.load
    with weights_only_loads() as loads:
        with pytest.raises(UnsafeCheckpointError, match=rf"^{re.escape(str(hostile))}: refused to unpickle .*posix\.system"):
            torch.load(hostile, map_location="cpu", weights_only=False)  # what DeepSpeed asks for
        with pytest.raises(UnsafeCheckpointError, match=rf"^{re.escape(str(harmless))}: refused .*{__name__}\.Harmless"):
            torch.load(harmless, weights_only=False)
    assert loads.files == 2 and torch.load is original
    assert not marker.exists()


def test_the_allowlisted_deepspeed_classes_round_trip(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    state = {"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.optimizer_states,
             "param_slice_mappings": [{"w": fragment_address(numel=6, start=2)}], "flat": torch.arange(4.0)}
    path = tmp_path / "optim.pt"
    torch.save(state, path)
    with pytest.raises(Exception, match="LossScaler"):
        torch.load(path, weights_only=True)  # torch alone refuses: the allowlist is needed
    loaded = load_weights_only(path)
    assert loaded["loss_scaler"].cur_scale == 1.0 and loaded["zero_stage"] is ZeroStageEnum.optimizer_states
    assert loaded["param_slice_mappings"][0]["w"] == fragment_address(numel=6, start=2)
    assert torch.equal(loaded["flat"], state["flat"])
    assert len(DEEPSPEED_GLOBALS) == 3


def test_upstream_still_unpickles_foreign_globals(tmp_path):
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"obj": Harmless()}, path)
    assert isinstance(TorchCheckpointEngine().load(str(path))["obj"], Harmless)  # weights_only=False upstream


@pytest.mark.slow
def test_hostile_checkpoint_with_a_consistent_manifest_is_refused_by_name(tmp_path, shared_data):
    run_dir = tmp_path / "run"
    base = ["experiment=ci_tiny", "trainer.checkpoint_every=2", "logger.wandb_mode=disabled"]
    run_pretrain(run_dir, 1, [*base, "trainer.max_steps=2"], shared_data)
    step2 = run_dir / "checkpoints" / "step_00000002"
    marker = tmp_path / "pwned"
    # the ZeRO optimizer shard: read deep inside engine.load_checkpoint, after the model states
    victim = step2 / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    state = torch.load(victim, weights_only=False)
    state["payload"] = RunsShell(str(marker))
    torch.save(state, victim)
    write_manifest(step2, build_manifest(step2, exclude={MANIFEST, META, "COMPLETE"}))
    assert verify_manifest(step2) == []  # the checksum check cannot see it
    assert Checkpointer(run_dir / "checkpoints", 3, 0, 1).latest_intact() == "step_00000002"

    resumed = run_pretrain(run_dir, 1, [*base, "trainer.max_steps=4"], shared_data, check=False)
    assert resumed.proc.returncode != 0
    assert f"UnsafeCheckpointError: {victim}: refused to unpickle this checkpoint file" in resumed.output
    assert "posix.system" in resumed.output
    assert not marker.exists()
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_00000002"]

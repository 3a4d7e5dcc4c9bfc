"""Validation loss while training (trainer.eval_every, data.validation / data.validation_fraction).

In process: `evaluate` against an independent token-weighted cross entropy, RNG and train mode restored, no
gradients. Through torchrun (ci_tiny, 10% of the corpus held out, validation every 2 steps of 6):
  OFF1  1 process, eval_every=0          ON1  1 process, eval_every=2
  S1/R1 ON1's settings stopped after 3 steps, then resumed in the same run directory
  OFF2/ON2  the same on 2 processes with EP=2
Training losses with validation on are exactly those with it off, and a resumed run repeats both the training
and the validation losses of the uninterrupted one.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import datasets
import pytest
import torch
import torch.nn.functional as F

from data_pipelines.loader import HeldOutBatches
from tests.conftest import run_pretrain
from train.engine.validation import ValidationSettings, evaluate

pytestmark = pytest.mark.timeout(2400)  # up to 4 launches start on one test's first use of `runs`

VOCAB, EXPERTS = 16, 4


class TinyLM(torch.nn.Module):
    """Stands in for the DeepSpeed engine: same call signature, draws from the global RNG like dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, 8)
        self.head = torch.nn.Linear(8, VOCAB)
        self.router = torch.nn.Linear(8, EXPERTS)
        self.modes: list[bool] = []

    def full_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(input_ids))

    def forward(self, input_ids, position_ids=None, output_router_logits=True, use_cache=False, logits_to_keep=None):
        self.modes.append(self.training)
        torch.rand(3)
        h = self.emb(input_ids)
        return SimpleNamespace(logits=self.head(h)[logits_to_keep], router_logits=(self.router(h).flatten(0, 1),))


def _rows(n: int, seed: int) -> datasets.Dataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, 12), generator=g)
    labels = ids.clone()
    labels[:, : int(torch.randint(1, 6, (1,), generator=g))] = -100  # unlabelled prompts, as in SFT rows
    labels[::3, 8:] = -100
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist(),
                                       "position_ids": [list(range(12))] * n})


def _reference_ce(model: TinyLM, batches: HeldOutBatches, which: int | None = None) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for i, mb in batches:
            if which is not None and i != which:
                continue
            logits = model.full_logits(mb["inputs"]["input_ids"])[:, :-1].reshape(-1, VOCAB)
            labels = mb["labels"][:, 1:].reshape(-1)
            total += float(F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum"))
            count += int((labels != -100).sum())
    return total / count


def test_evaluate_is_a_token_weighted_cross_entropy_that_leaves_training_as_it_was():
    torch.manual_seed(0)
    model = TinyLM()
    model.train()
    batches = HeldOutBatches([("shop", _rows(12, 1)), ("web", _rows(8, 2))], micro_batch=2, rank=0, world_size=1,
                             max_batches=3)
    rng = torch.get_rng_state()
    out = evaluate(model, batches, ValidationSettings(EXPERTS, 2, aux_coef=0.01, z_coef=0.001), torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and model.modes == [False] * 6
    assert all(p.grad is None for p in model.parameters())
    assert out["val/shop/loss"] == pytest.approx(_reference_ce(model, batches, 0), rel=1e-6)  # fp32 losses
    assert out["val/web/loss"] == pytest.approx(_reference_ce(model, batches, 1), rel=1e-6)  # fp32 losses
    assert out["val/lm_loss"] == pytest.approx(_reference_ce(model, batches), rel=1e-6)  # fp32 losses
    assert out["val/lm_loss"] < out["val/loss"] < out["val/lm_loss"] + 0.1  # + aux and z terms
    assert out["val/tokens"] == sum(int((mb["labels"][:, 1:] != -100).sum()) for _, mb in batches)
    assert out["val/seconds"] > 0


# ---- end to end through torchrun ----

BASE = ["experiment=ci_tiny", "trainer.max_steps=6", "data.validation_fraction=0.1", "data.validation_max_batches=3"]
TRAIN_KEYS = ("loss", "lm_loss", "aux_loss", "z_loss", "grad_norm", "tokens", "expert/dead")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data):
    """Launched per group on first use: "1" for the single-process runs, "2" for the EP=2 ones."""
    launched: dict[str, object] = {}
    on = [*BASE, "trainer.eval_every=2"]

    def get(name: str):
        if name in launched:
            return launched[name]
        base = tmp_path_factory.mktemp(name.lower())
        if name == "R1":
            get("S1")
            base = launched["S1"].run_dir.parent
        nproc, ep = (1, []) if name.endswith("1") else (2, ["parallel.ep_size=2"])
        overrides = {"OFF": [*BASE, *ep, "trainer.eval_every=0"], "ON": [*on, *ep],
                     "S": [*on, *ep, "trainer.stop_after_steps=3"], "R": [*on, *ep]}[name[:-1]]
        run_dir = base / ("resumed" if name[0] in "SR" else "run")
        launched[name] = run_pretrain(run_dir, nproc, overrides, shared_data)
        return launched[name]

    return get


def _by_step(result) -> dict[int, dict]:
    return {m["step"]: m for m in result.metrics}  # a resumed run's re-logged step keeps its latest record



@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("off,on", [("OFF1", "ON1"), ("OFF2", "ON2")])
def test_validation_leaves_the_training_losses_exactly_as_without_it(runs, off, on):
    a, b = _by_step(runs(off)), _by_step(runs(on))
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        for key in TRAIN_KEYS:
            assert a[step][key] == b[step][key], (step, key)
        assert not any(k.startswith("val/") for k in a[step])


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("name", ["ON1", "ON2"])
def test_validation_is_logged_every_eval_every_steps(runs, name):
    records = _by_step(runs(name))
    evaluated = [s for s, m in records.items() if "val/loss" in m]
    assert evaluated == [2, 4, 6]
    for step in evaluated:
        m = records[step]
        assert math.isfinite(m["val/loss"]) and m["val/lm_loss"] <= m["val/loss"]
        assert m["val/text/loss"] == pytest.approx(m["val/lm_loss"], rel=1e-12)  # one held-out set: the corpus's
        assert m["val/seconds"] > 0 and m["val/tokens"] > 0
    assert records[6]["val/lm_loss"] < records[2]["val/lm_loss"] - 0.1  # the model learns what it never saw
    assert "validation text:" in runs(name).output  # the held-out set's bad-input line at start-up


@pytest.mark.multiprocess
@pytest.mark.slow
def test_resume_repeats_training_and_validation_losses_exactly(runs):
    uninterrupted, resumed = _by_step(runs("ON1")), _by_step(runs("R1"))
    assert "resumed from step_00000003" in runs("R1").output
    assert sorted(resumed) == list(range(1, 7))
    for step, m in uninterrupted.items():
        for key in (*TRAIN_KEYS, "val/loss", "val/lm_loss", "val/text/loss"):
            if key in m:
                assert resumed[step][key] == m[key], (step, key)

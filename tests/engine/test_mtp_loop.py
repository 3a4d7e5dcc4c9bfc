"""The training loop with and without multi-token prediction, in-process (world of one).

Without MTP (loss.mtp_coef=0, no model.mtp) the loop's logged losses equal, bit for bit, a reference loop written
out here: lr from the schedule -> forward (LM head on labelled positions) -> `moe_losses` -> backward -> step, i.e. the
loop as it was before MTP existed. With MTP the loop logs `mtp_loss`, and the step's total is lm + aux + z terms over
the trunk's and the MTP layer's router logits + mtp_coef * mtp_loss (recomputed here from the engine before the step).
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import TINY_QWEN3_5, compose

VOCAB = 256
QWEN3_5 = [*TINY_QWEN3_5, f"+model.hf_config.text_config.vocab_size={VOCAB}", "trainer.micro_batch_size=2",
           "optim.warmup_steps=1", "logger.log_every=1", "trainer.max_steps=3"]


@pytest.fixture(scope="module", autouse=True)
def _world(world_of_one):
    return world_of_one


class _Batches:
    """Fixed synthetic micro-batches: a prompt without labels, then an answer (as fine-tuning labels)."""

    def __init__(self, steps: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.steps = []
        for _ in range(steps):
            ids = torch.randint(0, VOCAB, (2, 32), generator=g)
            labels = ids.clone()
            labels[:, :10] = -100
            positions = torch.arange(32)[None, None].expand(4, 2, -1)
            self.steps.append([{"inputs": {"input_ids": ids, "position_ids": positions}, "labels": labels}])
        self.i = 0

    def next_step(self):
        self.i += 1
        return self.steps[self.i - 1]

    def state_dict(self):
        return {"i": self.i}


class _NoCheckpoints:
    def save(self, *args, **kwargs) -> None:
        pass


def _engine_and_settings(overrides: list[str]):
    from train.engine.deepspeed_setup import build_engine
    from train.engine.loop import LoopSettings
    from train.metrics.throughput import training_flops
    from train.models.build import build_hf_config, build_model

    cfg = compose(overrides)
    hf_config = build_hf_config(cfg.model)
    model = build_model(cfg.model, hf_config, torch.float32, seed=0)
    text = hf_config.get_text_config()
    settings = LoopSettings(
        max_steps=cfg.trainer.max_steps, log_every=1, checkpoint_every=100, stop_after_steps=None, lr=cfg.optim.lr,
        warmup_steps=cfg.optim.warmup_steps, min_lr_ratio=cfg.optim.min_lr_ratio, schedule=cfg.optim.schedule,
        decay_fraction=cfg.optim.decay_fraction, aux_coef=cfg.loss.aux_coef, z_coef=cfg.loss.z_coef,
        num_experts=text.num_experts, top_k=text.num_experts_per_tok,
        flops=training_flops(hf_config, 32, cfg.model.mtp_layers), peak_tflops=1.0, mtp_coef=cfg.loss.mtp_coef)
    return cfg, model, text, settings, lambda m: build_engine(cfg, m)


def _run_loop(tmp_path, model, text, settings, make_engine, mtp_layers: int = 0):
    from train.engine.loop import train_loop
    from train.metrics.expert_load import CollapseMonitor, ExpertLoad
    from train.metrics.logger import MetricsLogger

    engine = make_engine(model)
    metrics = MetricsLogger(tmp_path, True, "disabled", "p", None, "r", {}, None, settings.max_steps, False)
    try:
        train_loop(engine, _Batches(settings.max_steps), settings, metrics, _NoCheckpoints(),
                   ExpertLoad(text.num_hidden_layers + mtp_layers, text.num_experts, text.num_experts_per_tok),
                   CollapseMonitor(5, 8.0), 0, torch.device("cpu"))
    finally:
        metrics.close()
    import json

    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_without_mtp_the_loop_logs_exactly_the_reference_loops_losses(tmp_path):
    from train.engine.losses import labelled_logit_positions, moe_losses
    from train.engine.lr_schedule import get_lr

    cfg, model, text, s, make_engine = _engine_and_settings(QWEN3_5)
    assert s.mtp_coef == 0.0 and not hasattr(model, "mtp")
    reference_model = copy.deepcopy(model)
    logged = _run_loop(tmp_path, model, text, s, make_engine)
    assert all("mtp_loss" not in m for m in logged)

    engine = make_engine(reference_model)
    engine.train()
    batches, expected = _Batches(s.max_steps), []
    for step in range(s.max_steps):
        lr = get_lr(step, s.lr, s.warmup_steps, s.max_steps, s.min_lr_ratio, s.schedule, s.decay_fraction)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        for mb in batches.next_step():
            keep = labelled_logit_positions(mb["labels"])
            out = engine(**mb["inputs"], output_router_logits=True, use_cache=False, logits_to_keep=keep)
            terms = moe_losses(out.logits, mb["labels"], out.router_logits, s.num_experts, s.top_k, s.aux_coef,
                               s.z_coef)
            engine.backward(terms.total)
            engine.step()
            expected.append((float(terms.total.detach().double()), float(terms.lm.detach().double())))
    assert [(m["loss"], m["lm_loss"]) for m in logged] == expected


@pytest.mark.parametrize("zero", ["zero1", "zero2"])
def test_with_mtp_the_loop_adds_the_weighted_mtp_loss_and_logs_it(tmp_path, zero):
    """ZeRO-1 and 2 (ZeRO-3 is refused by validation: tests/models/test_mtp.py)."""
    from train.engine.losses import labelled_logit_positions, moe_losses
    from train.engine.mtp_loss import MtpObjective

    cfg, model, text, s, make_engine = _engine_and_settings([*QWEN3_5, "model.mtp_layers=1", "loss.mtp_coef=0.5",
                                                             "trainer.max_steps=1", f"deepspeed={zero}"])
    reference_model = copy.deepcopy(model)
    logged = _run_loop(tmp_path, model, text, s, make_engine, mtp_layers=1)
    assert len(logged) == 1 and logged[0]["mtp_loss"] > 0
    assert len(logged[0]["expert/per_layer"]["load"]) == text.num_hidden_layers + 1  # the MTP layer's row last

    engine = make_engine(reference_model)  # the same initial weights: recompute step 1's terms before its update
    engine.train()
    mtp = MtpObjective(engine.module)
    mb = _Batches(1).next_step()[0]
    keep = labelled_logit_positions(mb["labels"])
    with torch.no_grad():
        out = engine(**mb["inputs"], output_router_logits=True, use_cache=False, logits_to_keep=keep)
        m = mtp(mb["labels"])
        terms = moe_losses(out.logits, mb["labels"], out.router_logits + m.router_logits, s.num_experts, s.top_k,
                           s.aux_coef, s.z_coef)
    assert logged[0]["mtp_loss"] == pytest.approx(m.loss.item(), rel=1e-6)
    assert logged[0]["loss"] == pytest.approx((terms.total + 0.5 * m.loss).item(), rel=1e-6)
    assert logged[0]["lm_loss"] == pytest.approx(terms.lm.item(), rel=1e-6)

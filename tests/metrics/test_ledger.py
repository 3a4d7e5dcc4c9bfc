"""The run ledger counts what a run really spent across restarts: every process start of a run is summed, from
its own metrics.jsonl (start/summary events and each window's tokens, FLOPs and seconds)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_pretrain
from train.metrics.ledger import ledger_from_records
from train.report.build import build_report


def _step(step: int, this_run: int, tokens: float = 100.0, flops: float = 1e9, window_s: float = 2.0,
          t: float = 0.0) -> dict:
    return {"step": step, "loss": 1.0, "lm_loss": 1.0, "tokens_per_s": tokens / window_s, "steps_this_run": this_run,
            "tokens": tokens, "flops": flops, "window_s": window_s, "time": t}


def test_every_process_start_is_summed():
    records = [
        {"event": "start", "step": 0, "process_start_time": 100.0, "time": 130.0, "world_size": 2, "device": "cpu",
         "price_per_device_hour": 3.6, "currency": "EUR"},
        _step(1, 1, t=140.0), _step(2, 2, t=150.0),
        {"event": "summary", "step": 2, "time": 160.0},
        # a second start resumed at step 1 (its checkpoint): step 2 is computed again, then 3
        {"event": "start", "step": 1, "process_start_time": 1000.0, "time": 1020.0, "world_size": 2, "device": "cpu"},
        _step(2, 1, t=1030.0), _step(3, 2, t=1040.0),
        # a third start found the run finished and did nothing but start up
        {"event": "start", "step": 3, "process_start_time": 2000.0, "time": 2016.0, "world_size": 2, "device": "cpu"},
        {"event": "summary", "step": 3, "time": 2017.0},
    ]
    ledger = ledger_from_records(records).as_dict()
    assert ledger["processes"] == 3
    # 60 s, then 40 s to its last record (no summary: it died), then 17 s
    assert ledger["wall_s"] == pytest.approx(60.0 + 40.0 + 17.0)
    assert ledger["device_hours"] == pytest.approx(117.0 * 2 / 3600)
    assert ledger["tokens"] == 400.0 and ledger["flops"] == 4e9 and ledger["steps_computed"] == 4
    assert ledger["cost"] == pytest.approx(117.0 * 2 / 3600 * 3.6) and ledger["currency"] == "EUR"
    assert [s["finished"] for s in ledger["segments"]] == [True, False, True]


def test_files_written_before_events_split_where_steps_this_run_restarts():
    records = [_step(1, 1), _step(2, 2), _step(1, 1), _step(2, 2), _step(3, 3)]
    ledger = ledger_from_records(records, price=1.0).as_dict()
    assert ledger["processes"] == 2 and ledger["wall_s"] == pytest.approx(10.0)  # logged windows only
    assert ledger["tokens"] == 500.0


@pytest.mark.slow
def test_a_stopped_and_resumed_run_sums_both_processes(tmp_path, shared_data):
    run_dir = tmp_path / "run"
    overrides = ["experiment=ci_tiny", "trainer.max_steps=4", "logger.wandb_mode=disabled",
                 "cluster.price_per_gpu_hour=2.0"]
    first = run_pretrain(run_dir, 1, [*overrides, "trainer.stop_after_steps=2"], shared_data)
    assert [e["event"] for e in first.events] == ["start", "summary"]
    second = run_pretrain(run_dir, 1, overrides, shared_data)
    events = second.events
    starts = [e for e in events if e["event"] == "start"]
    summaries = [e for e in events if e["event"] == "summary"]
    assert [s["step"] for s in starts] == [0, 2] and [s["step"] for s in summaries] == [2, 4]
    walls = [summ["time"] - start["process_start_time"] for start, summ in zip(starts, summaries, strict=True)]
    final = summaries[-1]["ledger"]
    assert final["processes"] == 2 and final["steps_computed"] == 4
    assert final["wall_s"] == pytest.approx(sum(walls), rel=1e-3)  # the summary is written just after it is summed
    assert final["wall_s"] > walls[-1]  # the last process alone is not the stage's time
    assert final["tokens"] == sum(r["tokens"] for r in second.metrics)
    assert final["device_hours"] == pytest.approx(final["wall_s"] / 3600)
    assert final["cost"] == pytest.approx(final["device_hours"] * 2.0)
    assert summaries[0]["ledger"]["processes"] == 1
    # each process measured its peak beside the prediction in its config.json
    config = json.loads((run_dir / "config.json").read_text())
    assert config["plan"]["memory"]["tensors_gib"] > 0
    assert summaries[-1]["predicted"]["peak_memory_added_gib"] == config["plan"]["memory"]["tensors_gib"]
    assert summaries[-1]["measured"]["peak_memory_added_gib"] > 0
    # the report's ledger says the same, and its stage wall time is the ledger's, not the last invocation's
    numbers = build_report(tmp_path / "report", {"pretrain": run_dir}, {}, None)
    stage = numbers["ledger"]["stages"]["pretrain"]
    assert stage["processes"] == 2 and stage["wall_s"] == pytest.approx(sum(walls), rel=1e-6)
    assert numbers["stages"]["pretrain"]["wall_s"] == pytest.approx(sum(walls), rel=1e-6)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Ledger" in md and "| `pretrain` | 2 | 4 |" in md

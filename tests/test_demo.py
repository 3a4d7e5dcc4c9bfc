"""The README's main command end to end at a small size: world -> pretrain (EP=2) -> export -> SFT (EP=2) ->
export -> evaluate both -> report. Also the short 2-process SFT run whose loss must fall."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import ROOT, _free_port, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    env = {**subprocess_env(), "SKIP_SETUP": "1", "MOE_ROOT": str(root), "NPROC": "2", "MASTER_PORT": str(_free_port()),
           "WORLD_ARGS": "train_dialogs=160 validation_dialogs=20 test_scenarios=6",
           "PRETRAIN_ARGS": "trainer.max_steps=6 trainer.checkpoint_every=6 logger.log_every=1",
           "SFT_ARGS": "trainer.max_steps=8 trainer.checkpoint_every=8 logger.log_every=1 optim.warmup_steps=2",
           "EVAL_ARGS": "eval.limit=3 eval.image_qa_limit=4 eval.reference_limit=3 eval.record_repeats_limit=5 "
                        "eval.max_assistant_turns=2 eval.max_new_tokens=12"}
    proc = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    (root / "first_report.json").write_text((root / "report" / "report.json").read_text())
    return root, proc.stdout + proc.stderr, env


@pytest.fixture(scope="module")
def demo_again(demo):
    """scripts/demo.sh run a second time in the same folder: every stage finds its outputs and resumes."""
    root, _, env = demo
    proc = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return root


def test_report_has_the_promised_numbers(demo):
    root, _, _ = demo
    report = json.loads((root / "report" / "report.json").read_text())
    for prefix in ("eval", "baseline"):
        for key in ("task_success", "unconfirmed_orders", "invalid_tool_call_rate", "image_qa_acc_with_image",
                    "image_qa_acc_without_image", "reference_digit_acc", "record_repeat_later_digit_acc"):
            assert report[prefix][key] is not None, (prefix, key)
    for stage in ("pretrain", "sft"):
        assert report["stages"][stage]["tokens_per_s"] > 0 and report["stages"][stage]["wall_s"] > 0
        assert report["stages"][stage]["final_val_loss"] is not None, stage  # the demo's configs validate
    assert set(report["stages"]["pretrain"]["final_val_loss_by_set"]) == {"text", "image_text"}
    assert set(report["stages"]["sft"]["final_val_loss_by_set"]) == {"dialogs", "image_qa"}
    md = (root / "report" / "report.md").read_text()
    pngs = sorted(p.name for p in (root / "report").glob("*.png"))
    assert pngs and all(name in md for name in pngs)


def test_evaluation_is_spread_over_the_processes(demo):
    root, _, _ = demo
    result = json.loads((root / "runs" / "eval_sft.json").read_text())
    summary = result["summary"]
    assert [(t["scenario_id"], t["seed"]) for t in result["transcripts"]] == [
        (s["scenario_id"], s["seed"]) for s in result["scores"]]  # every episode's transcript, gathered to rank 0
    assert summary["processes"] == 2 and summary["episodes"] == 3  # each scenario once, not once per process
    assert summary["reference_dialogs"] == 3
    assert summary["reference_args"] > 0 and summary["reference_dialogs_without_offsets"] == 0
    assert 0.0 <= summary["reference_arg_acc"] <= 1.0
    assert summary["record_repeat_records"] == 5 and summary["record_repeat_ids"] >= 5


def test_exports_verified_and_carry_the_chat_template(demo):
    root, output, _ = demo
    assert output.count("verify: max |logit difference|") == 2
    for name in ("pretrain", "sft"):
        folder = root / "exports" / name
        assert (folder / "config.json").exists() and (folder / "preprocessor_config.json").exists()
        assert "im_start" in (folder / "chat_template.jinja").read_text()


def test_sft_on_two_processes_with_ep2_lowers_the_loss(demo):
    root, _, _ = demo
    rows = [json.loads(x) for x in (root / "runs" / "sft_commerce_tiny" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "event" not in r]  # step records; start/summary events carry the ledger
    config = json.loads((root / "runs" / "sft_commerce_tiny" / "config.json").read_text())
    assert config["parallel"]["ep_size"] == 2 and config["data"]["kind"] == "sft"
    losses = [r["lm_loss"] for r in rows]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.5, losses


def test_report_carries_the_ledger(demo):
    root, _, _ = demo
    report = json.loads((root / "first_report.json").read_text())
    ledger = report["ledger"]
    for stage in ("pretrain", "sft"):
        s = ledger["stages"][stage]
        assert s["processes"] == 1 and s["device_hours"] > 0 and s["tokens"] > 0 and s["flops"] > 0
        assert s["cost"] == s["device_hours"] * s["price_per_device_hour"] > 0
        assert s["predicted"]["peak_memory_added_gib"] > 0 and s["measured"]["peak_memory_added_gib"] > 0
    for name in ("baseline", "eval"):
        e = ledger["evals"][name]
        assert e["cost_per_task"] > 0 and e["latency_per_turn_s"] > 0 and e["generated_tokens_per_task"] > 0
        assert e["task_success"] is not None and e["invalid_tool_call_rate"] is not None
    md = (root / "report" / "report.md").read_text()
    assert "## Ledger" in md and "cost/task" in md


def test_running_the_demo_again_adds_to_the_ledger(demo_again):
    """The second run resumes every stage at its last step: its report still counts the first run's compute."""
    root = demo_again
    first = json.loads((root / "first_report.json").read_text())
    again = json.loads((root / "report" / "report.json").read_text())
    for stage in ("pretrain", "sft"):
        before, after = first["ledger"]["stages"][stage], again["ledger"]["stages"][stage]
        assert after["processes"] == 2 and after["steps_computed"] == before["steps_computed"]
        assert after["wall_s"] > before["wall_s"] and after["device_hours"] > before["device_hours"]
        assert again["stages"][stage]["wall_s"] == after["wall_s"]  # not the resumed invocation's seconds
        assert again["timings"][stage] > first["timings"][stage]

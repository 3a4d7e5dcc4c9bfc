"""The report folder from synthetic run directories and evaluation results: numbers read back equal the ones
computed here from the inputs, plots are real images (dead experts visible), 'n/a' for what an evaluation
lacks, and bad input fails naming the file and line without touching an earlier report."""

from __future__ import annotations

import itertools
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train.report.__main__ import main as report_main
from train.report.build import build_report
from train.report.inputs import read_stage
from train.report.plots import DEAD_COLOUR, loss_figure

ROOT = Path(__file__).resolve().parents[1]

# pretrain: 2 layers x 4 experts, expert 3 of layer 1 never routed to; the run stopped after step 8 and was
# resumed from its step-4 checkpoint (steps 6 and 8 are logged again, steps_this_run restarts).
PRETRAIN_STEPS = [2, 4, 6, 8, 6, 8, 10]
PRETRAIN_THIS_RUN = [2, 4, 6, 8, 2, 4, 6]
PRETRAIN_LOSS = [6.0, 4.0, 3.0, 2.5, 3.1, 2.6, 2.2]
PRETRAIN_TPS = [500.0, 1000.0, 1100.0, 1200.0, 400.0, 900.0, 950.0]
PRETRAIN_MFU = [0.05, 0.10, 0.11, 0.12, 0.04, 0.09, 0.095]
SFT_LOSS = [3.0, 2.0, 1.5]
SFT_TPS = [300.0, 700.0, 800.0]
TIMINGS = {"setup": 5.0, "pretrain": 120.5, "sft": 60.25, "export": 3.0}


def _load(step: int) -> list[list[int]]:
    return [[10 + step, 20, 30, 40 - step], [50, 25 + step, 25 - step, 0]]


def _record(step, this_run, loss, tps, mfu, load=None) -> dict:
    r = {"step": step, "loss": loss, "lm_loss": loss - 0.01, "aux_loss": 1.0, "z_loss": 2.0, "lr": 1e-3,
         "grad_norm": 1.0, "tokens_per_s": tps, "tflops_per_device": tps * 1e-6, "peak_memory_gib": 1.5,
         "steps_this_run": this_run, "mfu": mfu}
    if load is not None:
        dead = [sum(1 for x in row if x == 0) for row in load]
        r.update({"expert/imbalance_max": 2.0, "expert/dead": sum(dead),
                  "expert/per_layer": {"imbalance": [1.5, 2.0], "dead": dead, "entropy": [0.9, 0.7],
                                       "load": load}})
    return r


def _config(run_name: str, family: str, init_from: str | None, steps: int) -> dict:
    return {"run_name": run_name, "model": {"family": family, "init_from": init_from,
                                            "hf_config": {"hidden_size": 64, "num_experts": 4}},
            "parallel": {"ep_size": 2}, "trainer": {"max_steps": steps, "micro_batch_size": 2}}


def _write_run(run_dir: Path, config: dict, records: list[dict]) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def _summary(success: float, kinds: dict[str, float], image: tuple[float, float] | None) -> dict:
    s = {"episodes": 8, "scenarios": 4, "task_success": success, "unconfirmed_orders": 0, "unconfirmed_actions": 0,
         "terms_shown_rate": None if success == 0 else 0.9, "slots_needed": 6, "slots_asked": 5,
         "needed_slots_asked": 5, "repeated_questions": 0, "tool_calls": 20,
         "invalid_tool_call_rate": 0.5 if success == 0 else 0.05, "turns_per_task": 4.0,
         "generated_tokens_per_task": 120.0, "success_by_kind": kinds, "pass^1": success, "pass^2": success / 2,
         "wall_s": 30.0}
    if image is not None:
        s["image_qa_acc_with_image"], s["image_qa_acc_without_image"] = image
        s.update(reference_digit_acc=0.4, reference_assistant_token_acc=0.9, reference_dialogs=4,
                 reference_digits=100, reference_arg_acc=0.5, **{"reference_arg_acc[city]": 1.0,
                                                                 "reference_arg_acc[item_id]": 0.0,
                                                                 "reference_arg_start_acc[city]": 1.0,
                                                                 "reference_arg_start_acc[item_id]": 0.25,
                                                                 "reference_arg_continue_acc[item_id]": 0.5})
    return s


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("report_inputs")
    pretrain = _write_run(base / "pretrain", _config("pre", "qwen3_5_moe", None, 10), [
        _record(*args, load=_load(args[0]))
        for args in zip(PRETRAIN_STEPS, PRETRAIN_THIS_RUN, PRETRAIN_LOSS, PRETRAIN_TPS, PRETRAIN_MFU, strict=True)])
    sft = _write_run(base / "sft", _config("sft", "qwen3_5_moe", "exports/pretrain", 3), [
        _record(i + 1, i + 1, loss, tps, math.nan) for i, (loss, tps) in enumerate(zip(SFT_LOSS, SFT_TPS, strict=True))])
    baseline = base / "baseline.json"  # a text-only evaluation: no image-QA numbers
    baseline.write_text(json.dumps({"model_path": "exports/pretrain", "summary": _summary(
        0.0, {"order": 0.0, "refund": 0.0}, None), "scores": [], "transcripts": []}))
    finetuned = base / "eval.json"
    finetuned.write_text(json.dumps({"model_path": "exports/sft", "summary": _summary(
        0.75, {"order": 1.0, "refund": 0.5, "sold_out": 0.5}, (0.8, 0.3)), "scores": [], "transcripts": []}))
    timings = base / "timings.json"
    timings.write_text(json.dumps(TIMINGS))
    return {"pretrain": pretrain, "sft": sft, "baseline": baseline, "eval": finetuned, "timings": timings,
            "base": base}


@pytest.fixture(scope="module")
def report(inputs) -> Path:
    """Built by the command a user (and scripts/demo.sh) runs."""
    out = inputs["base"] / "report"
    subprocess.run([sys.executable, "-m", "train.report", "--out", str(out),
                    "--stage", f"pretrain={inputs['pretrain']}", "--stage", f"sft={inputs['sft']}",
                    "--eval", f"baseline={inputs['baseline']}", "--eval", f"eval={inputs['eval']}",
                    "--timings", str(inputs["timings"])], cwd=ROOT, check=True, capture_output=True, text=True)
    return out


def test_report_json_numbers_match_the_inputs(report):
    data = json.loads((report / "report.json").read_text())
    # Mean throughput skips the first logged window of each process start (indices 0 and 4).
    steady = [1, 2, 3, 5, 6]
    pre = data["stages"]["pretrain"]
    assert pre["tokens_per_s"] == pytest.approx(sum(PRETRAIN_TPS[i] for i in steady) / len(steady))
    assert pre["mfu"] == pytest.approx(sum(PRETRAIN_MFU[i] for i in steady) / len(steady))
    assert pre["wall_s"] == TIMINGS["pretrain"]
    assert pre["final_loss"] == PRETRAIN_LOSS[-1]
    assert pre["final_lm_loss"] == pytest.approx(PRETRAIN_LOSS[-1] - 0.01)
    assert pre["steps"] == 10
    assert pre["resumes"] == 1 and pre["resume_steps"] == [6]
    assert pre["dead_experts_final"] == 1 and pre["dead_experts_final_per_layer"] == [0, 1]
    assert pre["config"]["model.family"] == "qwen3_5_moe" and pre["config"]["parallel.ep_size"] == 2
    sft = data["stages"]["sft"]
    assert sft["tokens_per_s"] == pytest.approx(sum(SFT_TPS[1:]) / 2)
    assert sft["mfu"] is None  # never measured (NaN in every record)
    assert sft["wall_s"] == TIMINGS["sft"] and sft["final_loss"] == SFT_LOSS[-1]
    assert sft["dead_experts_final"] is None and sft["config"]["model.init_from"] == "exports/pretrain"
    assert data["timings"] == TIMINGS and data["total_wall_s"] == pytest.approx(sum(TIMINGS.values()))

    assert data["eval"]["task_success"] == 0.75 and data["baseline"]["task_success"] == 0.0
    for name in ("eval", "baseline"):
        assert data[name]["unconfirmed_orders"] == 0
    assert data["eval"]["invalid_tool_call_rate"] == 0.05 and data["baseline"]["invalid_tool_call_rate"] == 0.5
    assert data["eval"]["image_qa_acc_with_image"] == 0.8 and data["eval"]["image_qa_acc_without_image"] == 0.3
    assert data["baseline"]["image_qa_acc_with_image"] is None  # text-only: null in JSON, n/a in the tables
    assert data["baseline"]["image_qa_acc_without_image"] is None
    assert data["eval"]["success_by_kind"] == {"order": 1.0, "refund": 0.5, "sold_out": 0.5}
    assert data["eval"]["reference_digit_acc"] == 0.4 and data["eval"]["reference_digits"] == 100
    assert "reference_digit_acc" not in data["baseline"]


def _image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 400 and im.height >= 250
        return np.asarray(im.convert("RGB"))


def test_plots_are_real_images_and_report_md_embeds_them(report):
    data = json.loads((report / "report.json").read_text())
    md = (report / "report.md").read_text()
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert pngs == ["expert_load_pretrain.png", "loss_pretrain.png", "loss_sft.png", "score_table.png",
                    "throughput.png"]  # sft logged no expert loads: no heatmap for it
    for name in pngs:
        pixels = _image(report / name)
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, f"{name} looks blank"
        assert f"]({name})" in md
    assert data["plots"]["stages"]["pretrain"]["expert_load"] == "expert_load_pretrain.png"
    assert "Expert load: n/a" in md

    # The dead expert (layer 1, expert 3, every window) is drawn in the dead colour.
    heat = _image(report / "expert_load_pretrain.png").astype(int)
    dead_rgb = np.array([int(DEAD_COLOUR[i:i + 2], 16) for i in (1, 3, 5)])
    assert (np.abs(heat - dead_rgb).sum(axis=2) < 10).sum() > 500


def test_report_md_tables_and_na(report):
    md = (report / "report.md").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in md.splitlines() if line.startswith("| ")}
    assert rows["task_success"] == ["0.000", "0.750"]
    assert rows["image_qa_acc_with_image"] == ["n/a", "0.800"]
    assert rows["image_qa_acc_without_image"] == ["n/a", "0.300"]
    assert rows["success[sold_out]"] == ["n/a", "0.500"]
    assert rows["terms_shown_rate"] == ["n/a", "0.900"]
    assert rows["pass^2"] == ["0.000", "0.375"]
    assert rows["reference_digit_acc"] == ["n/a", "0.400"]
    assert rows["reference_dialogs"] == ["n/a", "4"]
    assert rows["reference_arg_acc[item_id]"] == ["n/a", "0.000"]
    assert "Copying from the context (eval): 40.0% of the digits" in md
    assert "Copying from the context (baseline)" not in md
    assert "Tool-call arguments written exactly (eval): 50.0%; city 100.0%, item_id 0.0%" in md
    assert "the rest given the true start: city 100.0% / n/a, item_id 25.0% / 50.0%" in md
    assert rows["task success on held-out scenarios"] == ["0.0% of 8 episodes", "75.0% of 8 episodes"]
    assert rows["orders placed without the user's confirmation"] == ["0", "0"]
    assert rows["image questions right, with the image"] == ["n/a", "80.0%"]
    assert rows["image questions right, image blanked"] == ["n/a", "30.0%"]
    assert rows["invalid tool calls"] == ["50.0%", "5.0%"]
    # The baseline is the model the sft stage started from; the fine-tuned export is not.
    assert rows["model"] == ["`exports/pretrain` (what `sft` started from)", "`exports/sft`"]


def test_report_md_leads_with_what_users_judge(report):
    """The headline (task scores, then every timed stage's wall time) comes first; copy diagnostics follow."""
    md = (report / "report.md").read_text()
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections[:3] == ["## Headline", "## Copy diagnostics", "## What ran"]
    headline = md[md.index("## Headline"):md.index("## Copy diagnostics")]
    assert headline.index("task success") < headline.index("orders placed without") < headline.index("image questions")
    stage_rows = [line.split("|")[1:-1] for line in headline.splitlines() if line.startswith("| `")]
    assert [r[0].strip() for r in stage_rows] == [f"`{k}`" for k in TIMINGS]
    walls = {r[0].strip().strip("`"): r[1].strip() for r in stage_rows}
    assert walls == {k: f"{v:.0f} s ({v / 60:.1f} min)" for k, v in TIMINGS.items()}
    pretrain = next(r for r in stage_rows if "pretrain" in r[0])
    assert [c.strip() for c in pretrain[2:]] == ["10", "1,030", "10.3%", "2.200"]
    sft = next(r for r in stage_rows if "sft" in r[0])
    assert [c.strip() for c in sft[2:]] == ["3", "750", "n/a", "1.500"]  # MFU never measured
    export = next(r for r in stage_rows if "export" in r[0])
    assert [c.strip() for c in export[2:]] == ["", "", "", ""]  # a timed step that is no training stage
    assert f"Total wall time: {sum(TIMINGS.values()):.0f} s" in headline
    assert "Copying from the context" not in headline


@pytest.mark.parametrize("line, message", [
    ('{"step": 3, "loss": 1.0', r"metrics\.jsonl:3: not valid JSON"),
    ('{"step": 3, "loss": 1.0}', r"metrics\.jsonl:3: missing key\(s\) lm_loss, tokens_per_s, steps_this_run"),
    ('[1, 2]', r"metrics\.jsonl:3: expected a JSON object"),
])
def test_malformed_metrics_line_names_file_and_line_and_keeps_earlier_report(inputs, report, tmp_path, line,
                                                                             message):
    bad = tmp_path / "bad_run"
    shutil.copytree(inputs["sft"], bad)
    lines = (bad / "metrics.jsonl").read_text().splitlines()
    (bad / "metrics.jsonl").write_text("\n".join(lines[:2] + [line] + lines[2:]) + "\n")
    out = tmp_path / "report"
    shutil.copytree(report, out)
    before = (out / "report.json").read_bytes()
    with pytest.raises(ValueError, match=message) as err:
        build_report(out, {"sft": bad}, {}, None)
    assert str(bad / "metrics.jsonl") in str(err.value)
    assert (out / "report.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad_run", "report"]  # no temp folder left


def test_missing_inputs_are_named(inputs, tmp_path, capsys):
    missing = tmp_path / "no_such_run"
    rc = report_main(["--out", str(tmp_path / "r"), "--stage", f"pretrain={missing}"])
    assert rc == 2 and f"run directory {missing} not found" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no_eval.json not found"):
        build_report(tmp_path / "r", {"sft": inputs["sft"]}, {"eval": tmp_path / "no_eval.json"}, None)
    no_summary = tmp_path / "eval.json"
    no_summary.write_text(json.dumps({"model_path": "x"}))
    with pytest.raises(ValueError, match="expected an object with a 'summary' object"):
        build_report(tmp_path / "r", {"sft": inputs["sft"]}, {"eval": no_summary}, None)
    assert report_main(["--out", str(tmp_path / "r"), "--stage", "justapath"]) == 2
    assert "--stage 'justapath': expected NAME=PATH" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_rebuild_replaces_the_report(inputs, tmp_path):
    out = tmp_path / "report"
    build_report(out, {"sft": inputs["sft"]}, {}, None)
    (out / "stale.txt").write_text("from an earlier build")
    data = build_report(out, {"sft": inputs["sft"]}, {"eval": inputs["eval"]}, inputs["timings"])
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(data))
    assert (out / "score_table.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


@pytest.mark.parametrize("high, low", [(6.0, 0.09), (8.3, 0.74), (9.0, 0.002)])
def test_log_loss_axis_labels_do_not_overlap(tmp_path, high, low):
    """A loss spanning more than a decade gets a log axis whose printed labels stand apart (the minor ticks
    0.7, 0.8, 0.9 next to 1 once printed on top of each other)."""
    records = [_record(10 * (i + 1), 10 * (i + 1), low + (high - low) * math.exp(-i / 10), 100.0, 0.1)
               for i in range(60)]
    fig = loss_figure(read_stage("s", _write_run(tmp_path / "run", {}, records)))
    try:
        ax = fig.axes[0]
        assert ax.get_yscale() == "log"
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        bottom, top = ax.get_ylim()
        shown = [t for t in ax.get_yticklabels(which="both")
                 if t.get_visible() and t.get_text() and bottom <= float(t.get_text()) <= top]
        assert len(shown) >= 2, [t.get_text() for t in shown]
        boxes = sorted((t.get_window_extent(renderer) for t in shown), key=lambda b: b.y0)
        for below, above in itertools.pairwise(boxes):
            assert above.y0 >= below.y1, [t.get_text() for t in shown]
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_validation_loss_is_plotted_beside_the_training_loss(tmp_path):
    """A run that evaluated held-out sets every 2 steps: report.json has the last validation losses and their cost,
    report.md names them, and its loss plot draws them (in C3, a colour the training curves do not use)."""
    records = [_record(s, s, 4.0 - 0.3 * s, 500.0, 0.1) for s in range(1, 7)]
    for s, r in zip(range(1, 7), records, strict=True):
        if s % 2 == 0:
            r.update({"val/loss": 4.2 - 0.2 * s, "val/lm_loss": 4.1 - 0.2 * s, "val/dialogs/loss": 4.0 - 0.2 * s,
                      "val/image_qa/loss": 4.4 - 0.2 * s, "val/seconds": 1.0 + s, "val/tokens": 100})
    with_val = _write_run(tmp_path / "with", _config("sft", "qwen3_5_moe", None, 6), records)
    without = _write_run(tmp_path / "without", _config("sft", "qwen3_5_moe", None, 6),
                         [{k: v for k, v in r.items() if not k.startswith("val/")} for r in records])
    numbers = build_report(tmp_path / "report", {"with": with_val, "without": without}, {}, None)
    stage = numbers["stages"]["with"]
    assert stage["final_val_loss"] == pytest.approx(3.0) and stage["final_val_lm_loss"] == pytest.approx(2.9)
    assert stage["final_val_loss_by_set"] == {"dialogs": pytest.approx(2.8), "image_qa": pytest.approx(3.2)}
    assert stage["evaluations"] == 3 and stage["val_seconds"] == pytest.approx(5.0)
    assert numbers["stages"]["without"]["final_val_loss"] is None
    md = (tmp_path / "report" / "report.md").read_text()
    assert "validation loss 3.000 (dialogs 2.800, image_qa 3.200; 3 evaluations of 5.0 s)" in md
    red = np.array([0xD6, 0x27, 0x28])
    drawn = {name: int((np.abs(_image(tmp_path / "report" / f"loss_{name}.png").astype(int) - red).sum(axis=2)
                        < 10).sum()) for name in ("with", "without")}
    assert drawn["with"] > 200 and drawn["without"] == 0, drawn

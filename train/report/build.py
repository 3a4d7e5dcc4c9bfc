"""Build the report folder (report.md, report.json, PNG plots) from run directories, evaluation results and
timings. Everything is written to a temporary folder beside the target and renamed into place at the end, so
a failure never leaves a half-written report where a good one was."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from train.report.inputs import read_eval, read_stage, read_timings
from train.report.ledger import build_ledger, render_ledger
from train.report.markdown import render
from train.report.numbers import build_numbers, score_table
from train.report.plots import plot_expert_load, plot_loss, plot_score_table, plot_throughput

RESERVED_NAMES = ("stages", "timings", "total_wall_s", "ledger")


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def build_report(out: Path, stages: dict[str, Path], evals: dict[str, Path],
                 timings_path: Path | None) -> dict[str, Any]:
    """Write the report folder `out` (replacing an earlier one) and return report.json's content."""
    for name in evals:
        if name in RESERVED_NAMES:
            raise ValueError(f"--eval name {name!r} is reserved in report.json; choose another")
    if not stages:
        raise ValueError("at least one --stage NAME=RUN_DIR is needed")
    stage_runs = [read_stage(name, path) for name, path in stages.items()]
    results = {name: read_eval(name, path) for name, path in evals.items()}
    timings = read_timings(timings_path)
    ledger = build_ledger(stage_runs, results, timings)
    numbers = build_numbers(stage_runs, results, timings, ledger)
    names = list(evals)
    rows = score_table(numbers, names) if names else []

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        plots: dict[str, dict[str, str]] = {}
        for stage in stage_runs:
            stem = _file_stem(stage.name)
            figs = {"loss": f"loss_{stem}.png"}
            plot_loss(stage, tmp / figs["loss"])
            if plot_expert_load(stage, tmp / f"expert_load_{stem}.png"):
                figs["expert_load"] = f"expert_load_{stem}.png"
            plots[stage.name] = figs
        shared = {"throughput": "throughput.png"}
        plot_throughput(stage_runs, tmp / shared["throughput"])
        if names:
            shared["score_table"] = "score_table.png"
            plot_score_table(rows, names, tmp / shared["score_table"])
        numbers["plots"] = {"stages": plots, **shared}
        (tmp / "report.json").write_text(json.dumps(numbers, indent=2, ensure_ascii=False) + "\n")
        (tmp / "report.md").write_text(render(numbers, names, rows, plots, shared) + "\n\n" + render_ledger(ledger),
                                       encoding="utf-8")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return numbers


def _replace_dir(new: Path, target: Path) -> None:
    """Swap `new` in at `target`; an earlier report is removed only after the new one is in place."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old)
    else:
        new.rename(target)

"""Read what the report is built from: run directories (config.json + metrics.jsonl), evaluation results and
the demo's stage timings. Bad input raises ValueError naming the file (and line, for metrics.jsonl)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Every record the training loop logs carries these; the report cannot draw a curve without them.
REQUIRED_METRICS = ("step", "loss", "lm_loss", "tokens_per_s", "steps_this_run")


@dataclass
class StageRun:
    """One training stage: its resolved config and its logged records in file order."""

    name: str
    run_dir: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    segments: list[list[dict[str, Any]]] = field(default_factory=list)  # one per process start (resume)
    # every line of metrics.jsonl in file order: the step records and the process events (start, summary)
    lines: list[dict[str, Any]] = field(default_factory=list)

    @property
    def resume_steps(self) -> list[int]:
        """The first logged step of every segment after the first: where a restarted run continued."""
        return [seg[0]["step"] for seg in self.segments[1:]]

    def latest_by_step(self) -> list[dict[str, Any]]:
        """One record per step, sorted; a step logged again after a resume keeps its latest record."""
        by_step = {r["step"]: r for r in self.records}
        return [by_step[s] for s in sorted(by_step)]


def parse_named_paths(items: list[str], flag: str) -> dict[str, Path]:
    """`NAME=PATH` pairs from the command line, in order; names must be unique."""
    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{flag} {item!r}: expected NAME=PATH")
        if name in out:
            raise ValueError(f"{flag} {name!r} given twice")
        out[name] = Path(path)
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Step records of a metrics.jsonl; a line that is not a JSON object with the logged keys fails with file:line.
    Process events (lines with an `event` key: start, summary) are left out (`read_metrics_lines` keeps them)."""
    return [r for r in read_metrics_lines(path) if "event" not in r]


def read_metrics_lines(path: Path) -> list[dict[str, Any]]:
    """Every record of a metrics.jsonl in file order, step records checked as `read_metrics` describes."""
    if not path.is_file():
        raise ValueError(f"{path}: metrics file not found")
    records = []
    lines: list[dict[str, Any]] = []
    load_shape: tuple[int, int] | None = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            if "event" in record:
                lines.append(record)
                continue
            missing = [k for k in REQUIRED_METRICS if k not in record]
            if missing:
                raise ValueError(f"{path}:{lineno}: missing key(s) {', '.join(missing)}")
            bad = [k for k in REQUIRED_METRICS if not _is_number(record[k])]
            if bad:
                raise ValueError(f"{path}:{lineno}: key(s) {', '.join(bad)} must be numbers")
            per_layer = record.get("expert/per_layer")
            if per_layer is not None:
                load = per_layer.get("load") if isinstance(per_layer, dict) else None
                _check_load(load, path, lineno)
                if load_shape is not None and (len(load), len(load[0])) != load_shape:
                    raise ValueError(f"{path}:{lineno}: expert/per_layer.load is {len(load)}x{len(load[0])} "
                                     f"[layers x experts], earlier records {load_shape[0]}x{load_shape[1]}")
                load_shape = (len(load), len(load[0]))
            records.append(record)
            lines.append(record)
    if not records:
        raise ValueError(f"{path}: no metrics records")
    return lines


def _check_load(load: Any, path: Path, lineno: int) -> None:
    ok = (isinstance(load, list) and load and all(isinstance(row, list) and row for row in load)
          and len({len(row) for row in load}) == 1
          and all(_is_number(x) and x >= 0 for row in load for x in row))
    if not ok:
        raise ValueError(f"{path}:{lineno}: expert/per_layer.load must be a [layers][experts] list of counts >= 0")


def split_segments(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A new segment starts where `steps_this_run` does not grow: the process was restarted and resumed."""
    segments: list[list[dict[str, Any]]] = []
    for r in records:
        if not segments or r["steps_this_run"] <= segments[-1][-1]["steps_this_run"]:
            segments.append([])
        segments[-1].append(r)
    return segments


def _load_json(path: Path) -> Any:
    """A JSON file's value; a syntax error names the file and line."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def read_stage(name: str, run_dir: Path) -> StageRun:
    if not run_dir.is_dir():
        raise ValueError(f"stage {name!r}: run directory {run_dir} not found")
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"stage {name!r}: {config_path} not found")
    config = _load_json(config_path)
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object")
    lines = read_metrics_lines(run_dir / "metrics.jsonl")
    records = [r for r in lines if "event" not in r]
    return StageRun(name, run_dir, config, records, split_segments(records), lines)


def read_eval(name: str, path: Path) -> dict[str, Any]:
    """An evaluation result written by train/evaluate.py; only its `summary` object is required."""
    if not path.is_file():
        raise ValueError(f"eval {name!r}: {path} not found")
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("summary"), dict):
        raise ValueError(f"{path}: expected an object with a 'summary' object (train/evaluate.py output)")
    return data


def read_timings(path: Path | None) -> dict[str, float]:
    """`{"stage": seconds}` as the demo script writes it; no file means no timings."""
    if path is None:
        return {}
    if not path.is_file():
        raise ValueError(f"timings file {path} not found")
    data = _load_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object {{stage: seconds}}")
    for k, v in data.items():
        if not _is_number(v) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{path}: timing {k!r} must be a number of seconds >= 0, got {v!r}")
    return {k: float(v) for k, v in data.items()}

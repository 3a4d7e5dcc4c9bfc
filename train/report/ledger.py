"""The report's ledger: compute spent and its cost per stage (summed over every process start of a run, from its
metrics.jsonl), predicted beside measured memory and speed, and for evaluated models the cost per task beside
the failure rates. report.json carries it under `ledger`; report.md renders it as its own section."""

from __future__ import annotations

from typing import Any

from train.metrics.ledger import ledger_from_records
from train.report.inputs import StageRun
from train.report.numbers import config_value, format_value

FAILURES = ("task_success", "unconfirmed_orders", "invalid_tool_call_rate")


def _price(stage: StageRun) -> tuple[float | None, str]:
    try:
        return float(config_value(stage.config, "cluster.price_per_gpu_hour")), str(
            config_value(stage.config, "cluster.currency"))
    except KeyError:
        return None, "USD"


def stage_ledger(stage: StageRun) -> dict[str, Any]:
    """Compute spent by one training stage, and its prediction beside what was measured."""
    price, currency = _price(stage)
    ledger = ledger_from_records(stage.lines or stage.records, price, currency).as_dict()
    plan = stage.config.get("plan") or {}
    predicted, measured = {}, {}
    if "memory" in plan:
        predicted = {"peak_memory_added_gib": plan["memory"]["tensors_gib"],
                     "tokens_per_s": plan["speed"]["tokens_per_s"], "mfu": plan["speed"]["mfu"]}
    peaks = [r["peak_memory_added_gib"] for r in stage.records if isinstance(r.get("peak_memory_added_gib"), float)]
    if peaks:
        measured["peak_memory_added_gib"] = max(peaks)
    steady = [r for seg in stage.segments for r in seg[1:]] or stage.records
    rates = [r["tokens_per_s"] for r in steady if isinstance(r.get("tokens_per_s"), (int, float))]
    if rates:
        measured["tokens_per_s"] = sum(rates) / len(rates)
    mfus = [r["mfu"] for r in steady if isinstance(r.get("mfu"), float)]
    if mfus:
        measured["mfu"] = sum(mfus) / len(mfus)
    ledger.update({"predicted": predicted, "measured": measured})
    return ledger


def eval_ledger(result: dict[str, Any], price: float | None) -> dict[str, Any]:
    """Cost per task of an evaluation: its episodes ran on `processes` processes for `wall_s` seconds."""
    s = result["summary"]
    episodes, wall, procs = s.get("episodes"), s.get("wall_s"), s.get("processes", 1) or 1
    turns, tokens = s.get("turns_per_task"), s.get("generated_tokens_per_task")
    hours = wall * procs / 3600 if isinstance(wall, (int, float)) else None
    out: dict[str, Any] = {"episodes": episodes, "processes": procs, "wall_s": wall, "device_hours": hours,
                           "generated_tokens_per_task": tokens, "turns_per_task": turns}
    out["latency_per_turn_s"] = (wall * procs / (episodes * turns)
                                 if hours is not None and episodes and turns else None)
    out["cost_per_task"] = hours * price / episodes if hours is not None and price is not None and episodes else None
    out["cost"] = hours * price if hours is not None and price is not None else None
    for key in FAILURES:
        out[key] = s.get(key)
    return out


def build_ledger(stages: list[StageRun], evals: dict[str, dict[str, Any]],
                 timings: dict[str, float]) -> dict[str, Any]:
    """report.json's `ledger`: per training stage, per evaluation, and the totals (stages that are neither
    keep only their wall time, from the demo's timings summed over its invocations)."""
    per_stage = {s.name: stage_ledger(s) for s in stages}
    prices = [v["price_per_device_hour"] for v in per_stage.values() if v["price_per_device_hour"] is not None]
    price = prices[0] if prices else None
    currency = next((v["currency"] for v in per_stage.values()), "USD")
    per_eval = {name: eval_ledger(result, price) for name, result in evals.items()}
    hours = [v["device_hours"] for v in [*per_stage.values(), *per_eval.values()] if v["device_hours"] is not None]
    costs = [v["cost"] for v in [*per_stage.values(), *per_eval.values()] if v["cost"] is not None]
    other = {k: v for k, v in timings.items() if k not in per_stage}
    return {"stages": per_stage, "evals": per_eval, "other_wall_s": other, "price_per_device_hour": price,
            "currency": currency, "device_hours": sum(hours) if hours else None,
            "cost": sum(costs) if costs else None,
            "tokens": sum(v["tokens"] for v in per_stage.values()),
            "flops": sum(v["flops"] for v in per_stage.values())}


def stage_wall_s(ledger: dict[str, Any], name: str, timings: dict[str, float]) -> float | None:
    """A training stage's wall time over every process start (its own records), else the demo's timing."""
    wall = ledger["stages"].get(name, {}).get("wall_s")
    return wall if wall is not None else timings.get(name)


def _n(v: Any, fmt: str = "{:,.0f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def render_ledger(ledger: dict[str, Any]) -> str:
    """report.md's ledger section."""
    cur = ledger["currency"]
    out = ["## Ledger: compute, cost and failures", "",
           f"Every process start of each run is counted (a resumed or re-run stage adds its time, it does not "
           f"replace it). Price: {_n(ledger['price_per_device_hour'], '{:g}')} {cur} per device-hour "
           "(`cluster.price_per_gpu_hour` of the runs).", ""]
    rows = []
    for name, s in ledger["stages"].items():
        rows.append([f"`{name}`", str(s["processes"]), _n(s["steps_computed"]), _n(s["wall_s"], "{:,.0f} s"),
                     _n(s["device_hours"], "{:.3f}"), _n(s["tokens"]), _n(s["flops"], "{:.3g}"),
                     _n(s["cost"], "{:.4f}")])
    out += _table(["stage", "processes", "steps computed", "wall", "device-hours", "tokens", "FLOPs",
                   f"cost ({cur})"], rows)
    out += ["", "Predicted (train.plan, written into each run's config.json) beside measured:", ""]
    rows = []
    for name, s in ledger["stages"].items():
        p, m = s["predicted"], s["measured"]
        rows.append([f"`{name}`", _n(p.get("peak_memory_added_gib"), "{:.2f}"),
                     _n(m.get("peak_memory_added_gib"), "{:.2f}"), _n(p.get("tokens_per_s")),
                     _n(m.get("tokens_per_s"))])
    out += _table(["stage", "peak GiB/rank predicted", "measured (above baseline)", "tokens/s predicted",
                   "measured"], rows)
    if ledger["evals"]:
        out += ["", "Evaluations: cost per task beside the failure rates.", ""]
        rows = []
        for name, e in ledger["evals"].items():
            success = e.get("task_success")
            rows.append([f"`{name}`", _n(e["episodes"]), _n(e["generated_tokens_per_task"]),
                         _n(e["turns_per_task"], "{:.1f}"), _n(e["latency_per_turn_s"], "{:.2f} s"),
                         _n(e["device_hours"], "{:.3f}"), _n(e["cost_per_task"], "{:.5f}"),
                         "n/a" if success is None else f"{100 * (1 - success):.0f}%",
                         format_value(e.get("unconfirmed_orders")),
                         _n(e.get("invalid_tool_call_rate"), "{:.1%}")])
        out += _table(["eval", "tasks", "generated tokens/task", "turns/task", "latency/turn", "device-hours",
                       f"cost/task ({cur})", "task failure", "unconfirmed orders", "invalid tool calls"], rows)
    if ledger["other_wall_s"]:
        out += ["", "Other stages (wall time summed over the demo's invocations): " + ", ".join(
            f"{k} {v:,.0f} s" for k, v in ledger["other_wall_s"].items())]
    out += ["", f"Total: {_n(ledger['device_hours'], '{:.3f}')} device-hours, {_n(ledger['cost'], '{:.4f}')} {cur} "
            f"(training and evaluation), {_n(ledger['tokens'])} training tokens, {_n(ledger['flops'], '{:.3g}')} FLOPs.",
            ""]
    return "\n".join(out)

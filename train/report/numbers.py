"""The numbers of report.json: per training stage (throughput, wall time, final loss, experts) and per
evaluation (the headline commerce and image-QA metrics). A value that is not there is None (JSON null)."""

from __future__ import annotations

import math
from typing import Any

from train.report.inputs import StageRun

# Always present under every evaluation name, None where the evaluation did not produce them
# (e.g. image QA for a text-only model).
EVAL_HEADLINE = ("task_success", "unconfirmed_orders", "invalid_tool_call_rate", "terms_shown_rate",
                 "image_qa_acc_with_image", "image_qa_acc_without_image")
EVAL_EXTRA = ("episodes", "scenarios", "unconfirmed_actions", "grounded_option_rate", "repeated_questions",
              "needed_slots_asked", "slots_needed", "turns_per_task", "generated_tokens_per_task", "wall_s")
# Config values shown for each stage (dotted paths into the run's config.json); absent ones are skipped.
CONFIG_KEYS = ("run_name", "model.family", "model.init_from", "model.hf_config.hidden_size",
               "model.hf_config.num_hidden_layers", "model.hf_config.num_experts",
               "model.hf_config.num_experts_per_tok", "data.kind", "data.source", "data.seq_len",
               "parallel.ep_size", "deepspeed.zero_stage", "trainer.max_steps", "trainer.micro_batch_size",
               "trainer.grad_accum_steps", "trainer.precision", "optim.lr", "optim.warmup_steps",
               "loss.aux_coef", "loss.z_coef", "loss.balance")


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def steady_records(stage: StageRun) -> list[dict[str, Any]]:
    """Records without the first of each segment: a process's first window includes start-up and compilation.
    A stage with only first windows keeps them all."""
    steady = [r for seg in stage.segments for r in seg[1:]]
    return steady or list(stage.records)


def config_value(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def key_config(config: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key in CONFIG_KEYS:
        try:
            out[key] = config_value(config, key)
        except KeyError:
            continue
    return out


def stage_numbers(stage: StageRun, wall_s: float | None) -> dict[str, Any]:
    steady = steady_records(stage)
    last = stage.records[-1]
    per_layer = last.get("expert/per_layer")
    return {
        "run_dir": str(stage.run_dir),
        "steps": int(last["step"]),
        "logged_records": len(stage.records),
        "resumes": len(stage.segments) - 1,
        "resume_steps": stage.resume_steps,
        "wall_s": wall_s,
        "tokens_per_s": _mean([_finite(r["tokens_per_s"]) for r in steady]),
        "mfu": _mean([_finite(r.get("mfu")) for r in steady]),
        "tflops_per_device": _mean([_finite(r.get("tflops_per_device")) for r in steady]),
        "first_loss": _finite(stage.records[0]["loss"]),
        "final_loss": _finite(last["loss"]),
        "final_lm_loss": _finite(last["lm_loss"]),
        "peak_memory_gib": max((v for r in stage.records if (v := _finite(r.get("peak_memory_gib"))) is not None),
                               default=None),
        "dead_experts_final": int(last["expert/dead"]) if "expert/dead" in last else None,
        "dead_experts_final_per_layer": list(per_layer["dead"]) if per_layer and "dead" in per_layer else None,
        "imbalance_max_final": _finite(last.get("expert/imbalance_max")),
        **validation_numbers(stage),
        "config": key_config(stage.config),
    }


def validation_numbers(stage: StageRun) -> dict[str, Any]:
    """The last validation loss (total, lm, per held-out set), how many evaluations ran and their mean cost."""
    val = [r for r in stage.latest_by_step() if "val/loss" in r]
    last = val[-1] if val else {}
    return {
        "final_val_loss": _finite(last.get("val/loss")),
        "final_val_lm_loss": _finite(last.get("val/lm_loss")),
        "final_val_loss_by_set": {k[4:-5]: _finite(v) for k, v in last.items()
                                  if k.startswith("val/") and k.endswith("/loss") and k != "val/loss"},
        "evaluations": len(val),
        "val_seconds": _mean([_finite(r.get("val/seconds")) for r in val]),
    }


def eval_numbers(result: dict[str, Any]) -> dict[str, Any]:
    """The headline metrics (None when absent) plus success per kind, pass^k, any other image-QA values, the
    reference-dialog accuracies and the order-record repeats."""
    summary = result["summary"]
    out: dict[str, Any] = {"model_path": result.get("model_path")}
    for key in EVAL_HEADLINE + EVAL_EXTRA:
        out[key] = summary.get(key)
    out["success_by_kind"] = dict(summary.get("success_by_kind") or {})
    from train.evaluate import COPYING_PREFIXES

    out.update({k: v for k, v in summary.items() if k.startswith(("pass^", "image_qa", *COPYING_PREFIXES))})
    return out


def build_numbers(stages: list[StageRun], evals: dict[str, dict[str, Any]],
                  timings: dict[str, float], ledger: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole report.json: one object per evaluation name, `stages`, `timings`, the total wall time and the
    `ledger` (train/report/ledger.py). A stage's wall time is its ledger's, summed over every process start."""
    from train.report.ledger import stage_wall_s

    report: dict[str, Any] = {name: eval_numbers(result) for name, result in evals.items()}
    walls = {s.name: stage_wall_s(ledger, s.name, timings) if ledger else timings.get(s.name) for s in stages}
    report["stages"] = {s.name: stage_numbers(s, walls[s.name]) for s in stages}
    report["timings"] = dict(timings)
    report["total_wall_s"] = sum(timings.values()) if timings else None
    if ledger is not None:
        report["ledger"] = ledger
    return report


def score_table(numbers: dict[str, dict[str, Any]], names: list[str]) -> list[tuple[str, list[Any]]]:
    """Rows (metric, one value per evaluation) in train/evaluate.py's order: headline metrics, success per
    scenario kind, pass^k, image QA, reference-dialog accuracy. The union over evaluations; a value one of them
    lacks is None."""
    from train.evaluate import COPYING_PREFIXES, TABLE_KEYS

    evals = [numbers[n] for n in names]
    keys = list(EVAL_HEADLINE[:4]) + [k for k in TABLE_KEYS if k not in EVAL_HEADLINE]
    rows = [(k, [e.get(k) for e in evals]) for k in keys]
    kinds = sorted({kind for e in evals for kind in e["success_by_kind"]})
    rows += [(f"success[{kind}]", [e["success_by_kind"].get(kind) for e in evals]) for kind in kinds]
    passes = sorted({k for e in evals for k in e if k.startswith("pass^")}, key=lambda k: int(k[5:]))
    rows += [(k, [e.get(k) for e in evals]) for k in passes]
    image = list(EVAL_HEADLINE[4:]) + sorted({k for e in evals for k in e if k.startswith("image_qa")}
                                              - set(EVAL_HEADLINE))
    rows += [(k, [e.get(k) for e in evals]) for k in image]
    reference = sorted({k for e in evals for k in e if k.startswith(COPYING_PREFIXES)})
    rows += [(k, [e.get(k) for e in evals]) for k in reference]
    return rows


def format_value(v: Any) -> str:
    """Table text: 'n/a' for a missing value, 3 decimals for fractions and means, integers as they are."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:.3f}" if isinstance(v, float) else str(v)

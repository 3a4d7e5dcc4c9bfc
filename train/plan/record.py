"""A run's prediction and its measured values side by side: the plan written into config.json at start, and the
`summary` event (ledger, measured peak memory and tokens/s beside the predicted ones) at the end of a process."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

log = logging.getLogger(__name__)


def predict(cfg, hf_config: PretrainedConfig, world_size: int, device_type: str = "cpu") -> dict[str, Any]:
    """The plan of this run at its real world size, as a plain dict; a planner failure never stops a run."""
    try:
        from train.plan.planner import make_plan

        plan = make_plan(cfg, world_size, suggest=False, hf_config=hf_config)
    except Exception as e:  # noqa: BLE001 - the prediction is a side channel
        log.warning("plan: could not predict this run (%s: %s)", type(e).__name__, e)
        return {"error": f"{type(e).__name__}: {e}"}
    if (device_type == "cuda") != (cfg.cluster.kernels == "cuda"):
        note = (f"this run is on {device_type} but cluster={cfg.cluster.gpu} describes another device: pass "
                "cluster=h200, h100 or cpu for a prediction of this one")
        log.warning("plan: %s", note)
        plan.notes.append(note)
    m, sp = plan.memory, plan.speed
    log.info("plan: %.2f GiB per rank at the peak (%s), %.0f tokens/s predicted (MFU %.1f%%)", m.tensors / 2**30,
             m.peak_phase, sp.tokens_per_s, 100 * sp.mfu)
    return plan.as_dict()


def predicted_headline(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan's numbers a measured run is compared with."""
    if not plan or "error" in plan:
        return {}
    return {"peak_memory_added_gib": plan["memory"]["tensors_gib"], "peak_gib": plan["memory"]["peak_gib"],
            "tokens_per_s": plan["speed"]["tokens_per_s"], "mfu": plan["speed"]["mfu"]}


def measured_headline(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Measured values of one process's step records: the largest peak added above baseline, the mean
    tokens/s and MFU without the first window (start-up)."""
    steps = [r for r in records if "event" not in r]
    steady = steps[1:] or steps
    out: dict[str, Any] = {}
    peaks = [r["peak_memory_added_gib"] for r in steps if _finite(r.get("peak_memory_added_gib"))]
    if peaks:
        out["peak_memory_added_gib"] = max(peaks)
    rates = [r["tokens_per_s"] for r in steady if _finite(r.get("tokens_per_s"))]
    if rates:
        out["tokens_per_s"] = sum(rates) / len(rates)
    mfus = [r["mfu"] for r in steady if _finite(r.get("mfu"))]
    if mfus:
        out["mfu"] = sum(mfus) / len(mfus)
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def run_summary(metrics_path: Path, plan: dict[str, Any], price: float, currency: str) -> dict[str, Any]:
    """The `summary` event of a process: the run's ledger over every process so far, and this process's
    measured values beside the prediction."""
    import json
    import time

    from train.metrics.ledger import ledger_from_records

    records = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    starts = [i for i, r in enumerate(records) if r.get("event") == "start"]
    this_process = records[starts[-1]:] if starts else records
    ledger = ledger_from_records(records, price, currency, now=time.time()).as_dict()
    ledger.pop("segments")
    return {"ledger": ledger, "measured": measured_headline(this_process), "predicted": predicted_headline(plan)}

"""Rank-0 metrics sinks: wandb (offline by default), `metrics.jsonl` in the run directory, a progress line."""

from __future__ import annotations

import json
import logging
import math
import secrets
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            flat[key] = v
    return flat


class MetricsLogger:
    """Only rank 0 writes; other ranks get a logger whose methods do nothing."""

    def __init__(self, run_dir: Path, enabled: bool, wandb_mode: str, project: str, entity: str | None,
                 run_name: str, config: dict, wandb_id: str | None, max_steps: int, progress: bool) -> None:
        self.enabled = enabled
        self.max_steps = max_steps
        self.progress = progress
        self.wandb_run = None
        self.wandb_id = wandb_id
        self._t0 = time.time()
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        if wandb_mode != "disabled":
            import wandb

            id_file = run_dir / "wandb_run_id"
            if self.wandb_id is None and id_file.exists():
                self.wandb_id = id_file.read_text().strip()
            if self.wandb_id is None:
                self.wandb_id = secrets.token_hex(4)
            id_file.write_text(self.wandb_id + "\n")
            self.wandb_run = wandb.init(
                project=project, entity=entity, name=run_name, id=self.wandb_id, resume="allow",
                dir=str(run_dir), config=config, mode=wandb_mode,
                settings=wandb.Settings(console="off", x_disable_stats=True),
            )

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **metrics, "time": time.time()}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.wandb_run is not None:
            flat = _flatten(metrics)
            per_layer = metrics.get("expert/per_layer")
            if per_layer is not None:
                flat = {k: v for k, v in flat.items() if not k.startswith("expert/per_layer")}
                for i, (imb, dead, ent) in enumerate(zip(per_layer["imbalance"], per_layer["dead"],
                                                         per_layer["entropy"], strict=True)):
                    flat[f"expert_layer/{i}/imbalance"] = imb
                    flat[f"expert_layer/{i}/dead"] = dead
                    flat[f"expert_layer/{i}/entropy"] = ent
            self._wandb("log", flat, step=step)
        if self.progress:
            self._progress_line(step, metrics)

    def event(self, kind: str, step: int, fields: dict[str, Any]) -> None:
        """A process-level record in metrics.jsonl (`start`, `summary`): `{"event": kind, "step", "time", ...}`.
        Readers tell it from a step record by its `event` key (train/metrics/ledger.py sums them)."""
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"event": kind, "step": step, **fields, "time": time.time()}) + "\n")
        self.jsonl.flush()

    def _progress_line(self, step: int, m: dict[str, Any]) -> None:
        elapsed = time.time() - self._t0
        eta = ""
        if "steps_this_run" in m and m["steps_this_run"] > 0:
            remaining = (self.max_steps - step) * elapsed / m["steps_this_run"]
            eta = f" | eta {int(remaining // 60)}m{int(remaining % 60):02d}s"
        parts = [f"step {step}/{self.max_steps}", f"loss {m['loss']:.4f}", f"lr {m['lr']:.2e}",
                 f"gnorm {m['grad_norm']:.3f}", f"tok/s {m['tokens_per_s']:.0f}"]
        if "mtp_loss" in m:
            parts.insert(2, f"mtp {m['mtp_loss']:.4f}")
        if not math.isnan(m.get("mfu", math.nan)):
            parts.append(f"mfu {100 * m['mfu']:.1f}%")
        if "expert/imbalance_max" in m:
            parts.append(f"imb {m['expert/imbalance_max']:.2f} dead {m['expert/dead']}")
        if "val/loss" in m:
            per_set = ", ".join(f"{k[4:-5]} {v:.4f}" for k, v in m.items()
                                if k.startswith("val/") and k.endswith("/loss") and k != "val/loss")
            parts.append(f"val {m['val/loss']:.4f} ({per_set}; {m['val/seconds']:.1f} s)")
        print(" | ".join(parts) + eta, file=sys.stderr, flush=True)

    def _wandb(self, method: str, *args, **kwargs) -> None:
        """wandb is a side channel: if its service dies (e.g. a Slurm SIGTERM reached it first), warn once and
        carry on, so the checkpoint on the way out is still written."""
        if self.wandb_run is None:
            return
        try:
            getattr(self.wandb_run, method)(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any wandb failure must not stop training
            log.warning("wandb %s failed (%s: %s); metrics continue in metrics.jsonl only", method,
                        type(e).__name__, e)
            self.wandb_run = None

    def summary(self, values: dict[str, Any]) -> None:
        if self.wandb_run is not None:
            try:
                self.wandb_run.summary.update(_flatten(values))
            except Exception as e:  # noqa: BLE001 - see _wandb
                log.warning("wandb summary failed (%s: %s)", type(e).__name__, e)
                self.wandb_run = None

    def close(self) -> None:
        if not self.enabled:
            return
        self.jsonl.close()
        self._wandb("finish")

"""What a run really spent, across every process start: device-hours, wall time, tokens, FLOPs and their cost,
from the run's own `metrics.jsonl`.

Each process writes a `start` event (its process start time, world size, device, price) when it begins, its
step records (each window's tokens, FLOPs and wall seconds), and a `summary` event when it ends. A run that is
stopped and resumed, or started again after it finished (the demo's second invocation), appends to the same file,
so its ledger sums every process: a resumed stage no longer reports only its last invocation. A process that died
without its `summary` is counted up to its last record (time lost after it is not seen).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

EVENT = "event"


def process_start_time() -> float:
    """Unix time this process started (from /proc; the interpreter's import time is part of what it spent)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def is_event(record: dict[str, Any]) -> bool:
    return EVENT in record


@dataclass
class Segment:
    """One process start of a run and what it did."""

    start_time: float | None
    end_time: float | None
    world_size: int
    device: str
    first_step: int
    last_step: int
    tokens: float = 0.0
    flops: float = 0.0
    logged_s: float = 0.0
    finished: bool = False  # wrote its summary

    @property
    def wall_s(self) -> float | None:
        if self.start_time is None or self.end_time is None:
            return self.logged_s or None
        return max(0.0, self.end_time - self.start_time)

    @property
    def device_hours(self) -> float | None:
        wall = self.wall_s
        return None if wall is None else wall * self.world_size / 3600


@dataclass
class Ledger:
    segments: list[Segment] = field(default_factory=list)
    price_per_device_hour: float = 0.0
    currency: str = "USD"
    device: str = ""

    @property
    def wall_s(self) -> float | None:
        walls = [s.wall_s for s in self.segments]
        return sum(w for w in walls if w is not None) if any(w is not None for w in walls) else None

    @property
    def device_hours(self) -> float | None:
        hours = [s.device_hours for s in self.segments]
        return sum(h for h in hours if h is not None) if any(h is not None for h in hours) else None

    def as_dict(self) -> dict[str, Any]:
        hours = self.device_hours
        return {
            "processes": len(self.segments),
            "wall_s": self.wall_s,
            "device_hours": hours,
            "device": self.device,
            "tokens": sum(s.tokens for s in self.segments),
            "flops": sum(s.flops for s in self.segments),
            "steps_computed": sum(max(0, s.last_step - s.first_step) for s in self.segments),
            "price_per_device_hour": self.price_per_device_hour,
            "currency": self.currency,
            "cost": None if hours is None else hours * self.price_per_device_hour,
            "segments": [{**asdict(s), "wall_s": s.wall_s, "device_hours": s.device_hours} for s in self.segments],
        }


def ledger_from_records(records: list[dict[str, Any]], price: float | None = None,
                        currency: str | None = None, now: float | None = None) -> Ledger:
    """Sum `metrics.jsonl` records (events and steps, in file order) into a ledger. Files written before start
    events existed split into processes where `steps_this_run` restarts, and count logged window time only.
    `now`: the running process (the last start) counts until then, not until its last record."""
    ledger = Ledger()
    current: Segment | None = None
    last_steps_this_run = None
    for r in records:
        kind = r.get(EVENT)
        if kind == "start":
            current = Segment(start_time=r.get("process_start_time", r.get("time")), end_time=r.get("time"),
                              world_size=int(r.get("world_size", 1)), device=str(r.get("device", "")),
                              first_step=int(r.get("step", 0)), last_step=int(r.get("step", 0)))
            ledger.segments.append(current)
            ledger.price_per_device_hour = float(r.get("price_per_device_hour", ledger.price_per_device_hour))
            ledger.currency = str(r.get("currency", ledger.currency))
            ledger.device = str(r.get("device_name", ledger.device))
            last_steps_this_run = None
            continue
        if kind is not None:
            if current is not None and "time" in r:
                current.end_time = r["time"]
                current.last_step = max(current.last_step, int(r.get("step", current.last_step)))
                current.finished |= kind == "summary"
            continue
        steps_this_run = r.get("steps_this_run")
        if current is None or (current.start_time is None and last_steps_this_run is not None
                               and steps_this_run is not None and steps_this_run <= last_steps_this_run):
            first = int(r["step"]) - int(steps_this_run or 0)
            current = Segment(None, None, int(r.get("world_size", 1)), "", first, first)
            ledger.segments.append(current)
        last_steps_this_run = steps_this_run
        current.tokens += float(r.get("tokens", 0) or 0)
        current.flops += float(r.get("flops", 0) or 0)
        current.logged_s += float(r.get("window_s", 0) or 0)
        current.last_step = max(current.last_step, int(r["step"]))
        if "time" in r and current.start_time is not None:
            current.end_time = r["time"]
    if now is not None and current is not None and current.start_time is not None and not current.finished:
        current.end_time = now
    if price is not None:
        ledger.price_per_device_hour = price
    if currency is not None:
        ledger.currency = currency
    return ledger

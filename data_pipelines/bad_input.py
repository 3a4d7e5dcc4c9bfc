"""Bad input policy: stop naming the file and record (`raise`), or count it and go on (`skip`).

Every record carries its origin (`path:line` for jsonl, `path:[i] (line N)` for JSON arrays, `path:row N` for
tables) from the reader on, so an error raised while reading, converting a format, tokenising, rendering a chat or
opening an image names where the record came from, and nothing goes wrong later inside a training step. Content a
record holds that the pipeline does not use but that looks like media is a counted warning, never ignored
silently. Entry points run inside `stop_on_bad_input`, so a run stops with the one-line message, not a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class BadInput(ValueError):
    """Data the run cannot use as given (a source, a file, a record): the message says where and what to change."""


class BadRecord(BadInput):
    """A record that cannot become a training sample; `reason` is a short stable category for counts."""

    def __init__(self, origin: str, reason: str, detail: str) -> None:
        super().__init__(f"{origin}: {reason}: {detail}")
        self.origin = origin
        self.reason = reason


@contextmanager
def stop_on_bad_input() -> Iterator[None]:
    """Around an entry point: bad input ends the process with its one-line message on stderr (exit status 1)."""
    try:
        yield
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


class BadInputPolicy:
    """Applies `data.on_error`; with `skip` it counts skipped records by reason and logs a summary. Warnings
    (content a record holds that is not used) are counted by reason whatever the policy."""

    def __init__(self, on_error: str) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"data.on_error={on_error!r} is not one of ['raise', 'skip']")
        self.on_error = on_error
        self.skipped: Counter[str] = Counter()
        self.warnings: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def handle(self, err: BadRecord) -> None:
        """Raise (default), or return so the caller marks the record skipped; marks are counted where they are
        dropped (`count_and_drop_skipped`, the stream reader), so counts survive caching."""
        if self.on_error == "raise":
            raise err

    def merge(self, counts: dict[str, int]) -> None:
        self.skipped.update(counts)

    def count(self, mark: str, warning: bool = False) -> None:
        """Count one `reason|detail` mark (as a skip, or as a warning)."""
        reason, detail = mark.split("|", 1)
        (self.warnings if warning else self.skipped)[reason] += 1
        self.examples.setdefault(reason, detail)

    def state(self) -> dict:
        return {"skipped": dict(self.skipped), "warnings": dict(self.warnings), "examples": self.examples}

    def load_state(self, state: dict) -> None:
        self.skipped.update(state.get("skipped", {}))
        self.warnings.update(state.get("warnings", {}))
        for reason, example in state.get("examples", {}).items():
            self.examples.setdefault(reason, example)

    def summary(self) -> str:
        parts = []
        if self.skipped:
            items = [f"{n} {r} (first: {self.examples.get(r, '?')})" for r, n in sorted(self.skipped.items())]
            parts.append(f"bad input skipped ({sum(self.skipped.values())}): " + "; ".join(items))
        if self.warnings:
            items = [f"{n} {r} (first: {self.examples.get(r, '?')})" for r, n in sorted(self.warnings.items())]
            parts.append(f"warnings ({sum(self.warnings.values())}): " + "; ".join(items))
        return " | ".join(parts) if parts else "bad input: none"

    def log_summary(self) -> None:
        (log.warning if self.skipped or self.warnings else log.info)(self.summary())

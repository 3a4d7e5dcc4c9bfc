"""Bad input policy: stop naming the file and line (`raise`), or count it and go on (`skip`).

Every record carries its origin (`path:line` for jsonl, `path:row N` for tables) from the reader on, so an
error raised while tokenising, rendering a chat or opening an image names where the record came from, and
nothing goes wrong later inside a training step.
"""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger(__name__)


class BadRecord(ValueError):
    """A record that cannot become a training sample; `reason` is a short stable category for counts."""

    def __init__(self, origin: str, reason: str, detail: str) -> None:
        super().__init__(f"{origin}: {reason}: {detail}")
        self.origin = origin
        self.reason = reason


class BadInputPolicy:
    """Applies `data.on_error`; with `skip` it counts skipped records by reason and logs a summary."""

    def __init__(self, on_error: str) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"data.on_error={on_error!r} is not one of ['raise', 'skip']")
        self.on_error = on_error
        self.skipped: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def handle(self, err: BadRecord) -> None:
        """Raise (default), or return so the caller marks the record skipped; marks are counted where they are
        dropped (`count_and_drop_skipped`, the stream reader), so counts survive caching."""
        if self.on_error == "raise":
            raise err

    def merge(self, counts: dict[str, int]) -> None:
        self.skipped.update(counts)

    def summary(self) -> str:
        if not self.skipped:
            return "bad input: none"
        parts = [f"{n} {reason} (first: {self.examples.get(reason, '?')})" for reason, n in sorted(self.skipped.items())]
        return f"bad input skipped ({sum(self.skipped.values())}): " + "; ".join(parts)

    def log_summary(self) -> None:
        (log.warning if self.skipped else log.info)(self.summary())

"""Warnings that a peer can repeat at will, said once per interval with a count.

A broker restart under load makes every worker re-send its recent results (most of them
already stored), and a hostile peer can send bad frames as fast as it likes: a line per
event would flood the log and cost the loop more than the refusal itself. The first
occurrence of each kind is logged at once; the rest are counted and summed up in one
line when the interval is over.
"""
from __future__ import annotations

import logging
import time


class QuietLog:
    """Rate-limited warnings, keyed by kind."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._since: dict[str, tuple[float, int]] = {}  # kind -> (first logged at, suppressed since)

    def warning(self, kind: str, message: str, *args: object) -> None:
        """Log ``message`` unless a ``kind`` warning was logged within the interval (then count it)."""
        now = time.monotonic()
        since = self._since.get(kind)
        if since is not None and now - since[0] < self.interval_s:
            self._since[kind] = (since[0], since[1] + 1)
            return
        if since is not None and since[1]:
            self.logger.warning("%d more %s in the last %.0f s (not logged one by one)", since[1], kind,
                                now - since[0])
        self._since[kind] = (now, 0)
        self.logger.warning(message, *args)

    def suppressed(self, kind: str) -> int:
        """How many ``kind`` warnings were counted, not logged, in the current interval."""
        return self._since.get(kind, (0.0, 0))[1]

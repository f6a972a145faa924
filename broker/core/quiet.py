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


class Strikes:
    """Peers that send bad frames by the hundred are put aside for a while.

    Each refusal is a strike; a peer with more than ``limit`` strikes within one ``window_s``
    is quarantined for ``quarantine_s``: its frames are then dropped before they are decoded
    (counted, not answered), so a flood of hostile frames costs the broker about what a
    frame of the wrong version costs, and the replies of everyone else do not wait behind
    it. Memory is bounded: counts are kept for the current window only.
    """

    def __init__(self, limit: int = 100, window_s: float = 1.0, quarantine_s: float = 5.0) -> None:
        self.limit, self.window_s, self.quarantine_s = limit, window_s, quarantine_s
        self._window_start = 0.0
        self._counts: dict[bytes, int] = {}
        self.quarantined: dict[bytes, float] = {}  # peer -> until (monotonic)
        self.dropped = 0

    def blocked(self, identity: bytes, now: float) -> bool:
        """True (and counted) when this peer's frame is to be dropped unread."""
        until = self.quarantined.get(identity)
        if until is None:
            return False
        if now < until:
            self.dropped += 1
            return True
        del self.quarantined[identity]
        return False

    def strike(self, identity: bytes, now: float) -> bool:
        """Count one refusal; True when it puts the peer in quarantine."""
        if now - self._window_start >= self.window_s:
            self._window_start, self._counts = now, {}
        count = self._counts[identity] = self._counts.get(identity, 0) + 1
        if count <= self.limit:
            return False
        if len(self.quarantined) >= 10_000:  # bounded: the oldest sentence is forgotten first
            self.quarantined.pop(next(iter(self.quarantined)))
        self.quarantined[identity] = now + self.quarantine_s
        del self._counts[identity]
        return True

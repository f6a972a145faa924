"""The dashboard's own memory of the broker: ``stats()`` samples, kept to draw rates per minute.

The broker keeps counters (completed, failed attempts), not rates; the dashboard samples them
every few seconds and turns the differences into "per minute" series for the overview chart.
The samples live only in this process (a restart starts the chart afresh) and a counter that
goes down (a broker restart) starts its group's series afresh instead of drawing a negative.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from shoal.client import AsyncClient
from shoal.errors import ShoalError

from .access import Access, probe

log = logging.getLogger("shoal.dashboard")

WINDOW_MS = 60_000          # a rate is measured over the last minute of samples
KEEP_MS = 15 * 60_000       # the chart shows the last 15 minutes


@dataclass(frozen=True)
class Sample:
    """One group's counters at one moment (wall ms: it is drawn against the viewer's clock)."""

    at_ms: int
    completed: int
    failed: int


@dataclass(frozen=True)
class Rate:
    """Completed jobs and failed attempts per minute, as measured at ``at_ms``."""

    at_ms: int
    completed: float
    failed: float


class Sampler:
    """Polls ``stats()`` in the background and on demand; remembers the last answer or failure."""

    def __init__(self, client: AsyncClient, interval_s: float = 2.0, access: Access | None = None) -> None:
        self.client = client
        self.access = access or Access()  # what the dashboard's key may do, learned on the first answer
        self.interval_s = interval_s
        self.samples: dict[str, deque[Sample]] = {}
        self.stats: dict[str, dict[str, Any]] = {}
        self.unrouted: dict[str, int] = {}
        self.error: str | None = None     # why the last poll failed (None: it answered)
        self.down_since_ms = 0
        self._task: asyncio.Task[None] | None = None
        self._answered_at = float("-inf")  # monotonic time of the last answer

    def start(self) -> None:
        """Start the background loop (on the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop the loop and wait for it."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # a bug, not the broker: say so and keep the chart going
                log.exception("sampling the broker's stats failed")
            await asyncio.sleep(self.interval_s)

    async def poll(self, max_age_s: float = 0.0) -> bool:
        """Ask the broker for stats and record them; False (with ``error`` set) if it failed.

        With ``max_age_s``, an answer that recent is reused: many viewers of the overview
        cost the broker one ``stats()`` per that interval, not one per viewer.
        """
        if max_age_s and self.error is None and time.monotonic() - self._answered_at < max_age_s:
            return True
        try:
            stats = await self.client.stats()
        except ShoalError as exc:
            if self.error is None:
                self.down_since_ms = int(time.time() * 1000)
                log.warning("broker at %s: %s", self.client.endpoint, exc)
            self.error = str(exc)
            return False
        self.error = None
        self._answered_at = time.monotonic()
        if not self.access.checked:
            self.access = await probe(self.client, self.access)
        self.stats, self.unrouted = dict(stats), dict(stats.unrouted)
        self.record(int(time.time() * 1000), self.stats)
        return True

    def record(self, now_ms: int, stats: dict[str, dict[str, Any]]) -> None:
        """Add one sample per group and forget what is older than the chart shows."""
        for group, row in stats.items():
            series = self.samples.setdefault(group, deque())
            sample = Sample(now_ms, int(row.get("completed", 0)), int(row.get("failed", 0)))
            if series and (sample.completed < series[-1].completed or sample.failed < series[-1].failed):
                series.clear()  # the counters went back: the broker restarted, start afresh
            series.append(sample)
            while series and series[0].at_ms < now_ms - KEEP_MS - WINDOW_MS:
                series.popleft()

    def rates(self, group: str) -> list[Rate]:
        """The group's completed jobs and failed attempts in the minute before each sample (after the first)."""
        series = list(self.samples.get(group, ()))
        out: list[Rate] = []
        start = 0
        for sample in series[1:]:
            while series[start].at_ms < sample.at_ms - WINDOW_MS:
                start += 1
            first = series[start]
            if sample.at_ms <= first.at_ms:
                continue
            # what finished in the last minute; a series younger than a minute is not extrapolated
            # (three jobs in the first two seconds are "3 per minute", not a spike of 90)
            per_min = 60_000 / max(sample.at_ms - first.at_ms, WINDOW_MS)
            out.append(Rate(sample.at_ms, (sample.completed - first.completed) * per_min,
                            (sample.failed - first.failed) * per_min))
        return out

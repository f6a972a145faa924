"""Cron's state in the broker: the schedule (from the settings) and each entry's last fired tick.

Invariant: a tick's "last fired" mark is written in the same batch as the job it enqueued
(``mark``), so a crash can neither lose nor repeat a tick; an entry first seen is marked at
once, so it never fires for the past. Which ticks fire is ``shoal.broker.core.crontab``'s pure answer.
"""
from __future__ import annotations

import logging

from shoal.conf.settings import Settings

from ..storage.contract import CoreStore
from .crontab import CronSchedule, entries_from_settings
from .cron_hints import seconds_first_hint
from . import undo as U
from .effects import Effects

log = logging.getLogger("shoal.broker.cron")


class CronState:
    """The entries, the last fired tick of each, and when to look again."""

    def __init__(self, settings: Settings, effects: Effects, undo: U.Undo) -> None:
        self.effects = effects
        self.undo = undo
        self.schedule = CronSchedule(entries_from_settings(settings.cron))
        self.last: dict[str, int] = {}
        self.next_ms: int | None = 0 if self.schedule.entries else None  # a tick() before load() works too

    def load(self, store: CoreStore) -> None:
        """Read each entry's last fired tick from storage; warn of schedules that look seconds-first."""
        for entry in self.schedule.entries:  # valid, but likely the seconds-first habit (issue 15)
            hint = seconds_first_hint(entry.schedule)
            if hint is not None:
                log.warning("cron %s: %s", entry.name, hint)
        self.last = store.cron_last_fired()
        self.next_ms = 0 if self.schedule.entries else None

    def mark(self, name: str, tick_ms: int) -> None:
        """The entry fired (or was first seen) at ``tick_ms``: stored with this pass."""
        U.put(self.undo, self.last, name, tick_ms)
        self.effects.put(self.effects.batch.cron, name, tick_ms)
        self.effects.log("cron", b"", {"name": name, "tick_ms": tick_ms})

    def wait_s(self, now_ms: int) -> float | None:
        """Seconds until the next tick, for the loop's poll timeout."""
        return None if self.next_ms is None else max(0.0, (self.next_ms - now_ms) / 1000)

"""Cron in the broker: each tick's job and its "last fired" mark are one transaction.

Cron lives only in the broker (never in workers or clients), so two processes can never
double-fire a tick; a tick's job id is derived from the entry and the tick, so even a
crash between deciding and committing cannot make a second job for it.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from shoal import protocol as P
from shoal.protocol import field

from .client_commands import ClientCommands
from .cron import CronSchedule, cron_job_id, entries_from_settings
from .cron_hints import seconds_first_hint

log = logging.getLogger("shoal.broker.cron")


class CronCommands(ClientCommands):
    """Fires cron ticks from ``tick()`` and answers ``CRON`` (the listing for ``shoal cron``)."""

    def handlers(self) -> dict[bytes, Callable[[bytes, dict[str, Any]], None]]:
        table = super().handlers()
        table[P.CRON] = self._on_cron
        return table

    CRON_RETRY_MS = 1000  # a tick refused by admission (full storage, max_pending) is tried again this often

    def init_cron(self) -> None:
        """Build the schedule from the settings; no tick is marked fired until ``load_cron``."""
        self.cron = CronSchedule(entries_from_settings(self.settings.cron))
        self.cron_last: dict[str, int] = {}
        self.cron_next_ms: int | None = 0 if self.cron.entries else None

    def load_cron(self) -> None:
        """Read each entry's last fired tick from storage; warn of schedules that look seconds-first."""
        for entry in self.cron.entries:  # valid, but likely the seconds-first habit (issue 15)
            hint = seconds_first_hint(entry.schedule)
            if hint is not None:
                log.warning("cron %s: %s", entry.name, hint)
        self.cron_last = self.store.cron_last_fired()
        self.cron_next_ms = 0 if self.cron.entries else None

    def cron_pass(self, now_ms: int) -> None:
        """Enqueue every due tick (with its mark) into this pass's batch."""
        if self.cron_next_ms is None or now_ms < self.cron_next_ms:
            return
        plan = self.cron.plan(now_ms, self.cron_last)
        for name, seen_ms in plan.first_seen.items():
            self._mark_cron(name, seen_ms)
        for gap in plan.skipped:
            (log.warning if gap.capped else log.info)(
                "cron %s: %d missed tick(s) between %d and %d will not run (catch_up)", gap.name, gap.count,
                gap.after_ms, gap.before_ms)
        deferred = False
        for entry, tick_ms in plan.fire:
            job_id = cron_job_id(entry.name, tick_ms)
            if self.record_of(job_id) is None:
                item = {"id": job_id, "wf": entry.workflow, "payload": P.pack(entry.payload), "group": entry.group,
                        "delay_ms": 0, "priority": 0, "retries": None, "key": None, "key_ttl_ms": 0}
                refused = self.admission([item])
                if refused:  # deferred, not lost: the tick stays unmarked and is tried again
                    self.quiet.warning(f"cron {entry.name} deferred", "cron %s: tick %d deferred, retried in %.0f s: %s",
                                       entry.name, tick_ms, self.CRON_RETRY_MS / 1000, refused["message"])
                    deferred = True
                    continue
                self._create(item, now_ms)
                log.info("cron %s fired for tick %d", entry.name, tick_ms)
            self._mark_cron(entry.name, tick_ms)
        self.cron_next_ms = self.cron.next_due_ms(now_ms, self.cron_last)
        if deferred:
            self.cron_next_ms = now_ms + self.CRON_RETRY_MS

    def _mark_cron(self, name: str, tick_ms: int) -> None:
        self.cron_last[name] = tick_ms
        self.batch.cron[name] = tick_ms
        self.batch.log.append(("cron", b"", {"name": name, "tick_ms": tick_ms}))

    def cron_wait_s(self, now_ms: int) -> float | None:
        """Seconds until the next tick, for the loop's poll timeout."""
        return None if self.cron_next_ms is None else max(0.0, (self.cron_next_ms - now_ms) / 1000)

    def _on_cron(self, identity: bytes, body: dict[str, Any]) -> None:
        rid = field(body, "rid", int)
        self.reply(identity, rid, entries=self.cron.listing(self.clock.wall_ms(), self.cron_last))

"""Cron in the broker: each tick's job and its "last fired" mark are one transaction.

Cron lives only in the broker (never in workers or clients), so two processes can never
double-fire a tick; a tick's job id is derived from the entry and the tick, so even a
crash between deciding and committing cannot make a second job for it. A tick admission
refuses (full storage, ``max_pending``, an unhealthy group) is deferred, not lost: it stays
unmarked and is tried again after ``CRON_RETRY_MS``.
"""
from __future__ import annotations

import logging

from shoal import messages as M
from shoal import protocol as P

from ..crontab import cron_job_id
from ..state import Core
from .enqueue import admit

log = logging.getLogger("shoal.broker.cron")

CRON_RETRY_MS = 1000


def fire_due(core: Core, now_ms: int) -> None:
    """Enqueue every due tick (with its mark) into this pass's batch."""
    cron = core.cron
    if cron.next_ms is None or now_ms < cron.next_ms:
        return
    plan = cron.schedule.plan(now_ms, cron.last)
    for name, seen_ms in plan.first_seen.items():
        cron.mark(name, seen_ms)
    for gap in plan.skipped:
        (log.warning if gap.capped else log.info)(
            "cron %s: %d missed tick(s) between %d and %d will not run (catch_up)", gap.name, gap.count,
            gap.after_ms, gap.before_ms)
    deferred = False
    for entry, tick_ms in plan.fire:
        item = M.JobItem(cron_job_id(entry.name, tick_ms), entry.workflow, P.pack(entry.payload), entry.group)
        outcome = admit(core, [item])
        if isinstance(outcome, dict):  # deferred, not lost: the tick stays unmarked and is tried again
            core.quiet.warning(f"cron {entry.name} deferred", "cron %s: tick %d deferred, retried in %.0f s: %s",
                               entry.name, tick_ms, CRON_RETRY_MS / 1000, outcome["message"])
            deferred = True
            continue
        if not outcome[0][0]:
            log.info("cron %s fired for tick %d", entry.name, tick_ms)
        cron.mark(entry.name, tick_ms)
    cron.next_ms = now_ms + CRON_RETRY_MS if deferred else cron.schedule.next_due_ms(now_ms, cron.last)


def on_cron(core: Core, identity: bytes, msg: M.Plain) -> None:
    core.effects.reply(identity, msg.rid, entries=core.cron.schedule.listing(core.clock.wall_ms(), core.cron.last))

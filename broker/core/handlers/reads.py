"""Reads of the broker's state for people and the dashboard: STATS, WORKERS, STORAGE."""
from __future__ import annotations

import os
import socket
from typing import Any

from shoal import messages as M

from ..demand import Demand
from ..state import Core

MAX_WORKER_JOBS = 100  # job ids listed per worker in WORKERS; ``busy`` has the full count
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def demand(core: Core, group: str) -> Demand:
    """Pending, running and connected capacity of one group (for scaling decisions)."""
    members = core.leases.workers.in_group(group)
    return Demand(pending=core.dispatch.pending(group), running=sum(len(w.leases) for w in members),
                  slots=sum(w.slots for w in members), connected_pids=frozenset(w.pid for w in members))


def on_stats(core: Core, identity: bytes, msg: M.Plain) -> None:
    effects, strikes = core.effects, core.strikes
    effects.reply(identity, msg.rid, groups=stats(core),
                  unrouted={k: len(v) for k, v in core.dispatch.unrouted.items() if v},
                  events=effects.events_endpoint, events_dropped=effects.events_dropped,
                  replies_dropped=effects.replies_dropped, frames_dropped=strikes.dropped,
                  quarantined=len(strikes.quarantined))


def _orphans_by_group(core: Core) -> dict[str, int]:
    found: dict[str, int] = {}
    for job_id in core.leases.orphans:
        group = core.jobs.jobs[job_id].group
        found[group] = found.get(group, 0) + 1
    for old, _ in core.leases.superseded.values():  # a reconnected worker's old connection, briefly
        found[old.group] = found.get(old.group, 0) + len(old.leases)
    return found


def stats(core: Core) -> dict[str, dict[str, Any]]:
    """Per-group counters, from counts kept as jobs change (no walk over the jobs: cheap to poll)."""
    jobs, workers = core.jobs, core.leases.workers
    groups = set(jobs.known_groups) | set(core.dispatch.ready) | set(workers.by_group) | set(jobs.dead)
    groups.discard("")
    now = core.clock.wall_ms()
    orphans = _orphans_by_group(core)
    supervisor = core.admission.supervisor
    per: dict[str, dict[str, Any]] = {}
    for name in sorted(groups):
        counts = jobs.counters.get(name, {})
        members = workers.in_group(name)
        wanted = demand(core, name)
        running = wanted.running + orphans.get(name, 0)
        queue = core.dispatch.ready.get(name)
        head = queue.peek() if queue else None
        row: dict[str, Any] = {
            "pending": wanted.pending, "running": running,
            "scheduled": max(0, jobs.active.get(name, 0) - wanted.pending - running),
            "completed": counts.get("completed", 0), "failed": counts.get("failed", 0),
            "retried": counts.get("retried", 0), "dead": len(jobs.dead.get(name, ())),
            "workers": len(members), "free_slots": sum(max(0, w.credit) for w in members),
            "oldest_pending_s": max(0.0, (now - jobs.jobs[head].created_ms) / 1000) if head is not None else 0.0}
        if supervisor is not None:
            row.update(supervisor.state_of(name, wanted, core.clock.mono()))
        else:
            row["state"] = "warm" if members else "cold"
        # starving: work has waited past the threshold and nothing can take it now
        row["starvation"] = bool(row["pending"] and row["oldest_pending_s"] > core.groups(name).starvation_s
                                 and (row["workers"] == 0 or row["free_slots"] == 0))
        per[name] = row
    return per


def on_workers(core: Core, identity: bytes, msg: M.Workers) -> None:
    """Connected workers (of ``group``), with what each holds and how long it has been silent."""
    now = core.clock.mono()
    here = socket.gethostname()
    out: list[dict[str, Any]] = []
    for w in sorted(core.leases.workers, key=lambda w: (w.group, w.name)):
        if msg.group not in (None, w.group):
            continue
        row: dict[str, Any] = {
            "name": w.name, "group": w.group, "host": w.host, "pid": w.pid, "server": w.server,
            "slots": w.slots, "busy": len(w.leases), "jobs": sorted(w.leases)[:MAX_WORKER_JOBS],
            "workflows": list(w.workflows), "last_seen_s": round(max(0.0, now - w.last_seen), 3)}
        rss = _rss_bytes(w.pid) if w.host == here else None
        if rss is not None:
            row["rss_bytes"] = rss
        out.append(row)
    core.effects.reply(identity, msg.rid, workers=out)


def _rss_bytes(pid: int) -> int | None:
    """Resident memory of a worker on this host (Linux /proc), or None where it cannot be known."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


def on_storage(core: Core, identity: bytes, msg: M.Plain) -> None:
    admission = core.admission
    core.effects.reply(identity, msg.rid, storage={
        **core.store.sizes(), "refusing_enqueues": admission.storage_full, "disk_room_bytes": admission.storage_room,
        "min_free_disk_bytes": core.settings.broker.min_free_disk_mb << 20})

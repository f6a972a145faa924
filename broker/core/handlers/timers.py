"""What time does, once per pass (``tick``): due jobs, silent workers, orphans, expiry, heartbeats,
then dispatch by credit and rate. Changes made here are never taken back (the journal is emptied
after each tick), so the rate buckets and the ready queues' pops need no undo."""
from __future__ import annotations

import logging
from typing import Any

from shoal import jobs as J
from shoal import protocol as P

from ..state import Core
from ..workers import WorkerInfo
from . import lifecycle as L
from .reads import demand

log = logging.getLogger("shoal.broker")

MAX_HELD_PER_PASS = 1000  # rate-limited jobs set aside in one pass, at most
_HEARTBEAT = P.encode(P.HEARTBEAT, {})


def tick(core: Core) -> None:
    """Timers: due jobs, silent workers, orphaned leases, expiry, heartbeats; then dispatch."""
    now = core.clock.mono()
    wake_due(core, now)
    for worker in core.leases.workers.silent_since(lambda w: now - w.lease_s):
        log.warning("worker %s (%s) went silent; releasing %d leases", worker.name, worker.group, len(worker.leases))
        L.drop_worker(core, worker.identity, J.KIND_WORKER_LOST)
    for old in core.leases.past_grace(now):  # reconnected workers' old connections: what they hold never ran
        L.release_leases(core, old, charge=False, why="not_on_worker")
    orphans = core.leases.orphans
    for job_id, deadline in list(orphans.items()):
        if deadline <= now:
            del orphans[job_id]
            L.release(core, core.jobs.jobs[job_id], charge=False, why="orphan")
    if now >= core.next_expiry:
        core.next_expiry = now + 1.0
        expire(core, core.clock.wall_ms())
        core.admission.measure()
    if now - core.last_heartbeat >= core.heartbeat_s:
        core.last_heartbeat = now
        for worker in core.leases.workers:
            core.effects.send(worker.identity, _HEARTBEAT)
    dispatch(core, now)
    supervisor = core.admission.supervisor
    if supervisor is not None:
        supervisor.tick(lambda group: demand(core, group), now)  # asked per group only where needed


def wake_due(core: Core, now: float) -> None:
    """Scheduled jobs whose time has come are pending again."""
    for job_id in core.timetable.pop_due(now):
        job = core.jobs.jobs[job_id]
        job.move("due")
        if job.waiting_on:  # step.wait timed out: the run resumes and sees the deadline passed
            core.waiters.drop(job_id)
            job.waiting_on = job.wait_step = None
        core.effects.save(job, "due", {"state": job.state, "waiting_on": None, "wait_step": None})
        core.dispatch.queue(job)


def expire(core: Core, wall_ms: int) -> None:
    """Finished jobs past their retention leave storage (with their steps)."""
    batch = core.effects.batch
    for expire_ms, job_id in core.store.expired(wall_ms):
        batch.expiry_del.append((expire_ms, job_id))
        if job_id in core.jobs.jobs:  # requeued meanwhile; not ours to drop
            continue
        batch.jobs[job_id] = None
        batch.drop_steps.append(job_id)
        batch.log.append(("expire", job_id, {}))


def dispatch(core: Core, now: float) -> None:
    """Send ready jobs to workers of their group, never beyond a worker's credit or a global rate.

    A job whose workflow is out of tokens is set aside for this pass (and put back in its
    place), so a rate-limited workflow never holds up the other workflows of its group.
    """
    d = core.dispatch
    d.rate_wait_s = None
    for group, queue in d.ready.items():
        if not queue:
            continue
        allowance = d.allowance(group, now)
        held: list[J.Job] = []
        for worker in core.leases.workers.rotation(group):
            sent = _fill(core, worker, queue, allowance, held, now)
            if allowance is not None and sent:
                allowance -= sent
                d.spend(group, sent)
            if not queue:
                break
        for job in held:
            queue.push(job.id, job.seq, job.priority)


def _fill(core: Core, worker: WorkerInfo, queue: Any, allowance: int | None, held: list[J.Job], now: float) -> int:
    """One JOB message to ``worker`` with as many ready jobs as its credit (and the rate) allow."""
    credit = worker.credit if allowance is None else min(worker.credit, allowance)
    jobs, workflow_allows = core.jobs.jobs, core.dispatch.workflow_allows
    batch: list[dict[str, Any]] = []
    while len(batch) < credit:
        job_id = queue.pop()
        if job_id is None:
            break
        job = jobs[job_id]
        if not workflow_allows(job.workflow, now):
            held.append(job)
            if len(held) >= MAX_HELD_PER_PASS:
                break  # bound the scan of a long rate-limited backlog
            continue
        batch.append(L.lease(core, job, worker))
    if batch:
        ids = tuple(item["id"] for item in batch)
        core.effects.send(worker.identity, P.encode(P.JOB, {"jobs": batch}), ids)
    return len(batch)

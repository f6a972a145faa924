"""Durable workflow steps: STEP (persist a result), SUSPEND (sleep or wait for children), STEPS.

A step result is committed before the worker's ``step.run`` returns, so a retried or
redelivered run answers finished steps from storage. A suspended job gives its slot
back: it is ``scheduled`` until its wake time, or until every child it waits for is
final. The last child's result and the parent's wake-up are one transaction.
"""
from __future__ import annotations

from typing import Any

from shoal import jobs as J
from shoal import messages as M
from shoal import protocol as P

from ..state import Core
from . import lifecycle as L
from .enqueue import admit
from .worker import current


def on_steps(core: Core, identity: bytes, msg: M.JobRequest) -> None:
    if core.jobs.record_of(msg.id) is None:
        core.effects.error(identity, msg.rid, P.E_UNKNOWN_JOB, f"no job with id {msg.id.hex()}")
        return
    core.effects.reply(identity, msg.rid, steps=L.steps_for(core, msg.id))


def _leased(core: Core, identity: bytes, step: M.Step) -> J.Job | None:
    worker = core.leases.workers.get(identity)
    if worker is not None:
        core.leases.seen(worker, core.clock.mono())
    job = core.jobs.jobs.get(step.id)
    if job is None or job.state != J.RUNNING or job.token != step.token:
        core.effects.error(identity, step.rid, P.E_STALE_LEASE, "this run no longer holds the job's lease")
        return None
    return job


def _put_step(core: Core, job: J.Job, name: str, record: dict[str, Any]) -> None:
    record.setdefault("finished_ms", core.clock.wall_ms())
    core.effects.put(core.effects.batch.steps, (job.id, name), record)
    core.jobs.touch(job)
    job.steps += 1
    core.effects.save(job, "step", {"steps": job.steps, "step": name, "record": record})


def on_step(core: Core, identity: bytes, step: M.Step) -> None:
    job = _leased(core, identity, step)
    if job is None:
        return
    existing = L.steps_for(core, job.id).get(step.name)
    if existing is not None:  # a re-send: the first one was committed
        core.effects.reply(identity, step.rid, record=existing)
        return
    record = dict(step.record)
    if step.enqueue:
        refused = admit(core, step.enqueue, parent=job.id)
        if isinstance(refused, dict):  # the step fails: the handler sees the error, the attempt is retried
            core.effects.refuse(identity, step.rid, refused)
            return
    _put_step(core, job, step.name, record)
    core.effects.reply(identity, step.rid, record=record)


def on_suspend(core: Core, identity: bytes, suspend: M.Suspend) -> None:
    job = current(core, identity, suspend.id, suspend.token)
    if job is None:
        return
    core.leases.settle_sender(identity, job.id, job.token)
    if job.cancel_requested:
        L.cancel_running_done(core, job)
        return
    name, due_ms, wait_on = suspend.name, suspend.due_ms, list(suspend.wait_on)
    core.jobs.touch(job)
    job.attempts = max(0, job.attempts - 1)  # giving the slot back is not a failed attempt
    if name not in L.steps_for(core, job.id):
        _put_step(core, job, name, {"wake_ms": due_ms} if not wait_on else {"deadline_ms": due_ms})
    job.move("suspend")
    job.token = 0
    job.due_ms = due_ms
    pending: set[bytes] = set()
    if wait_on:
        job.waiting_on, job.wait_step = wait_on, name
        pending = {c for c in wait_on if not core.jobs.is_final(c)}
        core.waiters.wait_for_children(job.id, pending)
    core.effects.save(job, "suspend", {"state": job.state, "attempts": job.attempts, "token": 0, "due_ms": due_ms,
                                       "waiting_on": job.waiting_on, "wait_step": job.wait_step})
    if wait_on and not pending:
        core.jobs.wake_parent(job)
    elif due_ms:
        core.timetable.at(job, due_ms)


def rebuild_fanin(core: Core) -> None:
    """After a restart: which suspended parents still wait for which children."""
    for job in list(core.jobs.jobs.values()):
        if job.state == J.SCHEDULED and job.waiting_on:
            pending = {c for c in job.waiting_on if not core.jobs.is_final(c)}
            core.waiters.wait_for_children(job.id, pending)
            if not pending:
                core.jobs.wake_parent(job)

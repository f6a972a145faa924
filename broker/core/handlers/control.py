"""Cancelling jobs: at once when pending or scheduled, by telling the worker when running."""
from __future__ import annotations

from shoal import jobs as J
from shoal import messages as M
from shoal import protocol as P

from ..state import Core
from . import lifecycle as L


def on_cancel(core: Core, identity: bytes, msg: M.JobRequest) -> None:
    rid, effects = msg.rid, core.effects
    job = core.jobs.jobs.get(msg.id)
    if job is None:
        record = core.jobs.record_of(msg.id)
        if record is None:
            effects.error(identity, rid, P.E_UNKNOWN_JOB, f"no job with id {msg.id.hex()} (never enqueued, or expired)")
        else:  # finished already: nothing to do, and the caller is told so
            effects.reply(identity, rid, cancelled=False, state=record["state"],
                          message=f"the job is already {record['state']}")
        return
    if job.state == J.RUNNING:
        _ask_worker_to_cancel(core, job)
        effects.reply(identity, rid, cancelled=True, state=job.state,
                      message="the job is running; its worker was told to stop it")
        return
    core.dispatch.unqueue(job)
    core.timetable.remove(job.id)
    core.waiters.drop(job.id)
    L.cancel_now(core, job)
    effects.reply(identity, rid, cancelled=True, state=job.state, message="cancelled")


def _ask_worker_to_cancel(core: Core, job: J.Job) -> None:
    if not job.cancel_requested:
        core.jobs.touch(job)
        job.cancel_requested = True
        core.effects.save(job, "cancel_requested", {"cancel_requested": True})
    for worker in core.leases.holders(job.id, job.token):
        core.effects.send(worker.identity, P.encode(P.CANCEL, {"id": job.id, "token": job.token}))

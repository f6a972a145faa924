"""Transitions that touch several parts at once, shared by the handlers and the timers.

Each begins by ``touch``-ing the job it changes, so a handler that raises later can be undone.
"""
from __future__ import annotations

from typing import Any

from shoal import jobs as J

from ..state import Core
from ..workers import WorkerInfo


def lease(core: Core, job: J.Job, worker: WorkerInfo) -> dict[str, Any]:
    """Dispatch: the job runs on ``worker`` under a fresh token; returns its JOB item.

    Only ``tick`` dispatches, and time's changes are never taken back: no undo entries here
    (the hot path of every job)."""
    job.move("dispatch")
    job.attempts += 1
    job.token = token = core.rng.getrandbits(62)  # a stale run never guesses the current one
    job.worker = worker.name
    job.started_ms = core.clock.wall_ms()
    worker.leases[job.id] = token
    core.effects.emit("started", job, worker=worker.name)
    batch = core.effects.batch
    batch.jobs[job.id] = job.to_row()
    batch.log.append(("dispatch", job.id, {"state": job.state, "attempts": job.attempts, "token": token,
                                           "worker": job.worker, "started_ms": job.started_ms}))
    item = {"id": job.id, "token": job.token, "wf": job.workflow, "payload": job.payload,
            "attempt": job.attempts, "max_retries": core.dispatch.max_retries(job)}
    if job.steps:
        item["steps"] = steps_for(core, job.id)
    return item


def steps_for(core: Core, job_id: bytes) -> dict[str, dict[str, Any]]:
    """Stored steps of a job, including those written in this pass."""
    steps = core.store.steps_of(job_id)
    for (owner, name), record in core.effects.batch.steps.items():
        if owner == job_id:
            steps[name] = record
    return steps


def release(core: Core, job: J.Job, charge: bool, why: str) -> None:
    """A running job lost its worker: back to the front, or dead when its attempts are spent."""
    core.leases.claimed(job.id)
    if job.cancel_requested:  # it was being cancelled: losing its worker ends it
        cancel_running_done(core, job)
        return
    core.jobs.touch(job)
    if not charge:
        job.attempts = max(0, job.attempts - 1)
    if charge and job.attempts > core.dispatch.max_retries(job):
        core.jobs.bury(job, "bury", J.KIND_WORKER_LOST,
                       f"the worker running it was lost ({why}) on each of {job.attempts} attempts", None)
        return
    job.move("release")
    job.token = 0
    core.effects.save(job, "release", {"state": job.state, "attempts": job.attempts, "token": 0, "why": why})
    core.dispatch.queue(job, front=True)


def release_leases(core: Core, worker: WorkerInfo, charge: bool, why: str) -> None:
    """Every live lease of a worker entry goes back (charged only for a real loss)."""
    for job_id, token in list(worker.leases.items()):
        job = core.jobs.jobs.get(job_id)
        if job is not None and job.state == J.RUNNING and job.token == token:
            release(core, job, charge=charge, why=why)
    core.leases.clear(worker)


def drop_worker(core: Core, identity: bytes, why: str) -> None:
    """A worker is gone (silent past its lease): what it held is charged and goes back."""
    worker = core.leases.leave(identity)
    if worker is not None:
        release_leases(core, worker, charge=True, why=why)


def failed_attempt(core: Core, job: J.Job, kind: str, error: str, tb: str | None, duration_ms: int) -> None:
    """An attempt that failed: retried with backoff, or dead-lettered when permanent or out of retries."""
    core.jobs.count(job.group, "failed")
    core.effects.emit("failed", job, error=error, error_kind=kind, duration_ms=duration_ms)
    if kind in J.PERMANENT_KINDS or job.attempts > core.dispatch.max_retries(job):
        core.jobs.bury(job, "bury", kind, error, tb, failed=True)
    else:
        retry(core, job, kind, error, tb)


def retry(core: Core, job: J.Job, kind: str, error: str, tb: str | None) -> None:
    settings = core.groups(job.group)
    base = min(settings.backoff_max_s, settings.backoff_s * (2 ** (job.attempts - 1)))
    delay_s = base * (0.5 + core.rng.random() / 2)  # jitter: retries of a burst do not march in step
    core.jobs.touch(job)
    job.move("retry")
    job.due_ms = core.clock.wall_ms() + int(delay_s * 1000)
    job.error, job.error_kind, job.traceback = error, kind, tb
    job.token = 0
    core.jobs.count(job.group, "retried")
    core.effects.emit("retrying", job, due_ms=job.due_ms, error=error)
    core.effects.save(job, "retry", {"state": job.state, "due_ms": job.due_ms, "error": error,
                                     "error_kind": kind, "traceback": tb, "token": 0})
    core.timetable.at(job, job.due_ms)


def complete(core: Core, job: J.Job, value: bytes) -> None:
    core.jobs.touch(job)
    job.move("complete")
    job.value = value
    job.finished_ms = core.clock.wall_ms()
    core.jobs.count(job.group, "completed")
    core.jobs.finish(job, "complete", {"state": job.state, "value": job.value, "finished_ms": job.finished_ms})


def cancel_now(core: Core, job: J.Job) -> None:
    """End the job as cancelled (it is not running anywhere any more)."""
    core.jobs.touch(job)
    job.move("cancel")
    job.finished_ms = core.clock.wall_ms()
    job.token = 0
    job.waiting_on = job.wait_step = None
    core.jobs.finish(job, "cancel", {"state": job.state, "finished_ms": job.finished_ms, "token": 0,
                                     "waiting_on": None, "wait_step": None, "value": job.value})


def cancel_running_done(core: Core, job: J.Job) -> None:
    """The run of a job being cancelled ended (any outcome, or its worker was lost)."""
    for worker in core.leases.holders(job.id, job.token):
        core.leases.settle(worker, job.id)
    cancel_now(core, job)

"""What the broker does for workers: HELLO, READY, HEARTBEAT, BYE, DONE, FAIL, RETURN."""
from __future__ import annotations

import logging
from typing import Any

from shoal import jobs as J
from shoal import messages as M
from shoal import protocol as P
from shoal.ids import id_to_str

from ..leases import SUPERSEDED_GRACE_S
from ..state import Core
from ..workers import WorkerInfo
from . import lifecycle as L

log = logging.getLogger("shoal.broker")

DEFER_RETRY_MS = 1000  # storage is measured once a second
_RECONNECT = P.encode(P.RECONNECT, {})


def known(core: Core, identity: bytes) -> WorkerInfo | None:
    """The sender, with its liveness refreshed; an unknown one is asked to say HELLO."""
    worker = core.leases.workers.get(identity)
    if worker is None:
        if core.leases.should_ask_hello(identity, core.clock.mono()):
            core.effects.send(identity, _RECONNECT)
    else:
        worker.last_seen = core.clock.mono()  # Leases.seen, inline: every worker message passes here
    return worker


# --- joining ---------------------------------------------------------------------------------
def on_hello(core: Core, identity: bytes, hello: M.Hello) -> None:
    leases = core.leases
    conflict = _route_conflict(core, hello.group, hello.workflows)
    if conflict:
        log.error("refused worker from group %s: %s", hello.group, conflict)
        core.effects.error(identity, None, P.E_BAD_REQUEST, conflict)
        return
    leases.greeted(identity)
    previous = leases.leave(identity)
    worker = WorkerInfo(
        identity=identity, group=hello.group, slots=hello.slots,
        lease_s=core.groups(hello.group).lease_s, last_seen=core.clock.mono(),
        workflows=tuple(hello.workflows), pid=hello.pid, host=hello.host, server=hello.server,
        name=f"{hello.host or '?'}:{hello.pid}",
    )
    if previous is not None and previous.group == hello.group:
        # Same connection: a JOB sent before this HELLO arrived is still on its way to the
        # worker (one connection delivers in order), so its lease stays as it is.
        worker.leases.update(previous.leases)
    leases.join(worker)
    core.jobs.know(hello.group)
    _adopt(core, worker, hello.running)
    # The same process on a new connection (it reconnected), or a changed group: what it
    # does not list it does not have. Its JOBs died with the old connection: never run.
    stale = [w for w in leases.workers if w is not worker and hello.pid and w.pid == hello.pid
             and w.host == hello.host]
    if previous is not None and previous.group != hello.group:
        stale.append(previous)
    for old in stale:
        leases.leave(old.identity)
        if old is previous:
            L.release_leases(core, old, charge=False, why="not_on_worker")
        else:  # results it sent on the old connection may still arrive: they settle first
            leases.supersede(old, core.clock.mono() + SUPERSEDED_GRACE_S)
    _learn_routes(core, hello.group, hello.workflows)
    log.info("worker %s joined group %s with %d slots", worker.name, hello.group, worker.slots)


def _route_conflict(core: Core, group: str, workflows: dict[str, int | None]) -> str | None:
    for name in workflows:
        for other in core.leases.workers:
            if other.group != group and name in other.workflows:
                return (f"workflow {name!r} is claimed by group {other.group!r} (worker {other.name}) "
                        f"and by group {group!r}; a workflow belongs to one group")
    return None


def _adopt(core: Core, worker: WorkerInfo, running: tuple[tuple[bytes, int], ...]) -> None:
    """Take back the leases a worker still holds after a reconnect or broker restart."""
    for job_id, token in running:
        job = core.jobs.jobs.get(job_id)
        if job is not None and job.state == J.RUNNING and job.token == token:
            core.leases.claimed(job_id)
            for other in core.leases.workers:
                core.leases.settle(other, job_id)
            core.leases.grant(worker, job_id, token)


def _learn_routes(core: Core, group: str, workflows: dict[str, int | None]) -> None:
    for name, retries in workflows.items():
        for job_id in core.dispatch.learn(name, {"group": group, "retries": retries}):
            job = core.jobs.jobs.get(job_id)
            if job is not None and not job.group:
                core.jobs.adopt_route(job, group)


def on_ready(core: Core, identity: bytes, ready: M.Ready) -> None:
    worker = known(core, identity)
    if worker is not None:
        core.leases.set_slots(worker, ready.slots)


def on_heartbeat(core: Core, identity: bytes, body: Any) -> None:
    known(core, identity)


def on_bye(core: Core, identity: bytes, body: Any) -> None:
    worker = core.leases.leave(identity)
    if worker is not None:
        log.info("worker %s of group %s said goodbye", worker.name, worker.group)
        # A worker says BYE only after finishing or returning what it started, so a lease
        # left now is a JOB that crossed its BYE on the wire: never run, no attempt spent.
        L.release_leases(core, worker, charge=False, why="crossed_bye")


# --- outcomes --------------------------------------------------------------------------------
def current(core: Core, identity: bytes, job_id: bytes, token: int) -> J.Job | None:
    """The job if this outcome is for its live lease, else None (a re-sent or stale report).

    A result whose token is the one the finished job was stored with is a re-send of one
    already stored (after a restart the workers send their recent results again): dropped
    quietly. Any other token means the report comes from a run the broker gave up on: a
    warning, said once per interval with a count.
    """
    job = core.jobs.jobs.get(job_id)
    if job is not None and job.state == J.RUNNING and job.token == token:
        if job_id in core.leases.orphans:
            core.leases.claimed(job_id)
        return job
    worker = core.leases.workers.get(identity)
    if worker is not None and worker.leases.get(job_id) == token:
        core.leases.settle(worker, job_id)  # that lease is over: its slot is free again
    stored = core.jobs.stored(job_id) if job is None else None
    if stored is not None and stored.get("token") == token:
        log.debug("dropped a re-sent result for job %s, stored already", id_to_str(job_id))
    else:
        core.quiet.warning("stale lease tokens", "rejected a result for job %s with a stale lease token (from %s)",
                           id_to_str(job_id), worker.name if worker else identity.hex())
    return None


def on_done(core: Core, identity: bytes, done: M.Done) -> None:
    known(core, identity)
    deferred: list[list[Any]] = []
    reason = ""
    admission = core.admission
    # Checked once for the whole DONE when the sum fits (the usual case; stale results are charged
    # too, until the next measurement); else each result on its own, below.
    all_fit = admission.results_fit(sum(len(result.value) for result in done.results))
    for result in done.results:
        job = current(core, identity, result.id, result.token)
        if job is None:
            continue
        if job.cancel_requested:  # finished anyway, but the caller asked to cancel it
            core.jobs.touch(job)
            job.value = result.value
            L.cancel_running_done(core, job)
            continue
        if not all_fit:
            too_big = admission.result_never_fits(len(result.value))
            if too_big:  # no amount of waiting makes it fit: the attempt fails (retried, then dead)
                core.leases.settle_sender(identity, job.id, job.token)
                L.failed_attempt(core, job, J.KIND_STORAGE_FULL, too_big, None, duration_ms=0)
                continue
            no_room = admission.result_refusal(len(result.value))
            if no_room:  # the broker's storage trouble, not the job's: it stays running, the worker keeps it
                deferred.append([result.id, result.token])
                reason = no_room
                continue
        core.leases.settle_sender(identity, job.id, job.token)
        L.complete(core, job, result.value)
    if deferred:
        core.quiet.warning("deferred results", "%d result(s) not stored yet, the worker keeps them: %s",
                           len(deferred), reason)
        core.effects.send(identity, P.encode(P.DEFER, {"results": deferred, "reason": reason,
                                                       "retry_ms": DEFER_RETRY_MS}))


def on_fail(core: Core, identity: bytes, failed: M.Fail) -> None:
    known(core, identity)
    for failure in failed.failures:
        job = current(core, identity, failure.id, failure.token)
        if job is None:
            continue
        core.leases.settle_sender(identity, job.id, job.token)
        if job.cancel_requested:  # it stopped because it was cancelled: not a failed attempt
            L.cancel_running_done(core, job)
            continue
        L.failed_attempt(core, job, failure.kind, failure.error, failure.traceback, failure.duration_ms)


def on_return(core: Core, identity: bytes, returned: M.Return) -> None:
    """A draining worker hands back jobs it did not start or finish: requeue them now."""
    known(core, identity)
    for job_id, token in returned.jobs:
        job = current(core, identity, job_id, token)
        if job is not None:
            core.leases.settle_sender(identity, job.id, job.token)
            L.release(core, job, charge=False, why="returned")

"""What the broker does for workers: HELLO, READY, DONE, FAIL, RETURN, HEARTBEAT, BYE."""
from __future__ import annotations

import logging
import random
from typing import Any, Callable

from shoal import jobs as J
from shoal import messages as M
from shoal import protocol as P
from shoal.ids import id_to_str

from .core import BrokerCore, Outgoing
from .workers import WorkerInfo

log = logging.getLogger("shoal.broker")


class WorkerCommands(BrokerCore):
    """Handlers for the commands workers send."""

    def handlers(self) -> dict[bytes, Callable[[bytes, dict[str, Any]], None]]:
        table = super().handlers()
        table.update({P.HELLO: self._on_hello, P.READY: self._on_ready, P.DONE: self._on_done,
                      P.FAIL: self._on_fail, P.RETURN: self._on_return,
                      P.HEARTBEAT: self._on_heartbeat, P.BYE: self._on_bye})
        return table

    RECONNECT_GAP_S = 1.0  # at most one RECONNECT per unknown peer this often
    SUPERSEDED_GRACE_S = 2.0  # a reconnected worker's old connection may still deliver results this long

    def _known(self, identity: bytes) -> WorkerInfo | None:
        """The sender, with its liveness refreshed; an unknown one is asked to say HELLO."""
        worker = self.workers.get(identity)
        if worker is None:
            self._ask_hello(identity)
        else:
            worker.last_seen = self.clock.mono()
        return worker

    def _ask_hello(self, identity: bytes) -> None:
        """RECONNECT, once per peer and gap: after a restart every worker sends many messages
        before its HELLO arrives, and answering each one made a HELLO storm."""
        now = self.clock.mono()
        asked = self.asked_hello.get(identity)
        if asked is not None and now - asked < self.RECONNECT_GAP_S:
            return
        if len(self.asked_hello) >= 10_000:  # bounded: forget peers asked long enough ago
            self.asked_hello = {k: t for k, t in self.asked_hello.items() if now - t < self.RECONNECT_GAP_S}
        self.asked_hello[identity] = now
        self.outbox.append(Outgoing(identity, P.encode(P.RECONNECT, {})))

    # --- joining ---------------------------------------------------------------
    def _on_hello(self, identity: bytes, body: dict[str, Any]) -> None:
        hello = M.Hello.from_body(body)
        conflict = self._route_conflict(hello.group, hello.workflows)
        if conflict:
            log.error("refused worker from group %s: %s", hello.group, conflict)
            self.error(identity, None, P.E_BAD_REQUEST, conflict)
            return
        self.asked_hello.pop(identity, None)
        previous = self.workers.remove(identity)
        worker = WorkerInfo(
            identity=identity, group=hello.group, slots=hello.slots,
            lease_s=self.group_settings(hello.group).lease_s, last_seen=self.clock.mono(),
            workflows=tuple(hello.workflows), pid=hello.pid, host=hello.host, server=hello.server,
            name=f"{hello.host or '?'}:{hello.pid}",
        )
        if previous is not None and previous.group == hello.group:
            # Same connection: a JOB sent before this HELLO arrived is still on its way to the
            # worker (one connection delivers in order), so its lease stays as it is.
            worker.leases.update(previous.leases)
        self.workers.add(worker)
        self.known_groups.add(hello.group)
        self._adopt(worker, hello.running)
        # The same process on a new connection (it reconnected), or a changed group: what it
        # does not list it does not have. Its JOBs died with the old connection: never run.
        stale = [w for w in self.workers if w is not worker and hello.pid and w.pid == hello.pid
                 and w.host == hello.host]
        if previous is not None and previous.group != hello.group:
            stale.append(previous)
        for old in stale:
            self.workers.remove(old.identity)
            if old is previous:
                self._hand_back(old, "not_on_worker")
            else:  # results it sent on the old connection may still arrive: they settle first
                self.superseded[old.identity] = (old, self.clock.mono() + self.SUPERSEDED_GRACE_S)
        self._learn_routes(hello.group, hello.workflows)
        log.info("worker %s joined group %s with %d slots", worker.name, hello.group, worker.slots)

    def hand_back_superseded(self, now: float) -> None:
        """Old connections of reconnected workers, past their grace: what they still hold never ran."""
        for identity, (old, deadline) in list(self.superseded.items()):
            if deadline <= now:
                del self.superseded[identity]
                self._hand_back(old, "not_on_worker")

    def _hand_back(self, worker: WorkerInfo, why: str) -> None:
        """Requeue a worker entry's live leases without charging an attempt (the job never ran there)."""
        for job_id, token in list(worker.leases.items()):
            job = self.jobs.get(job_id)
            if job is not None and job.state == J.RUNNING and job.token == token:
                self._release(job, charge=False, why=why)
        worker.leases.clear()

    def _route_conflict(self, group: str, workflows: dict[str, int | None]) -> str | None:
        for name in workflows:
            for other in self.workers:
                if other.group != group and name in other.workflows:
                    return (f"workflow {name!r} is claimed by group {other.group!r} (worker {other.name}) "
                            f"and by group {group!r}; a workflow belongs to one group")
        return None

    def _adopt(self, worker: WorkerInfo, running: tuple[tuple[bytes, int], ...]) -> None:
        """Take back the leases a worker still holds after a reconnect or broker restart."""
        for job_id, token in running:
            job = self.jobs.get(job_id)
            if job is not None and job.state == J.RUNNING and job.token == token:
                self.orphans.pop(job_id, None)
                for other in self.workers:
                    other.leases.pop(job_id, None)
                worker.leases[job_id] = token

    def _learn_routes(self, group: str, workflows: dict[str, int | None]) -> None:
        for name, retries in workflows.items():
            route = {"group": group, "retries": retries}
            if self.routes.get(name) != route:
                self.routes[name] = route
                self.batch.routes[name] = route
                self.batch.log.append(("learn_route", b"", {"workflow": name, **route}))
            for job_id in self.unrouted.pop(name, []):
                job = self.jobs.get(job_id)
                if job is not None and not job.group:
                    self.active[""] = self.active.get("", 0) - 1
                    self.active[group] = self.active.get(group, 0) + 1
                    job.group = group
                    self._save(job, "route", {"group": group})
                    self._queue(job)

    def _on_ready(self, identity: bytes, body: dict[str, Any]) -> None:
        ready = M.Ready.from_body(body)
        worker = self._known(identity)
        if worker is not None:
            worker.slots = ready.slots

    def _on_heartbeat(self, identity: bytes, body: dict[str, Any]) -> None:
        self._known(identity)

    def _on_bye(self, identity: bytes, body: dict[str, Any]) -> None:
        worker = self.workers.get(identity)
        if worker is not None:
            log.info("worker %s of group %s said goodbye", worker.name, worker.group)
            # A worker says BYE only after finishing or returning what it started, so a lease
            # left now is a JOB that crossed its BYE on the wire: never run, no attempt spent.
            for job_id in list(worker.leases):
                job = self.jobs.get(job_id)
                if job is not None and job.state == J.RUNNING and job.token == worker.leases[job_id]:
                    self._release(job, charge=False, why="crossed_bye")
            worker.leases.clear()
            self.workers.remove(identity)

    # --- outcomes ---------------------------------------------------------------
    DEFER_RETRY_MS = 1000  # storage is measured once a second

    def _current(self, identity: bytes, job_id: bytes, token: int) -> J.Job | None:
        """The job if this outcome is for its live lease, else None (a re-sent or stale report).

        A result whose token is the one the finished job was stored with is a re-send of one
        already stored (after a restart the workers send their recent results again): dropped
        quietly. Any other token means the report comes from a run the broker gave up on: a
        warning, said once per interval with a count.
        """
        job = self.jobs.get(job_id)
        if job is not None and job.state == J.RUNNING and job.token == token:
            self.orphans.pop(job_id, None)
            return job
        worker = self.workers.get(identity)
        if worker is not None and worker.leases.get(job_id) == token:
            del worker.leases[job_id]  # that lease is over: its slot is free again
        stored = None
        if job is None:
            stored = self.batch.jobs[job_id] if job_id in self.batch.jobs else self.store.get_job(job_id)
        if stored is not None and stored.get("token") == token:
            log.debug("dropped a re-sent result for job %s, stored already", id_to_str(job_id))
        else:
            self.quiet.warning("stale lease tokens", "rejected a result for job %s with a stale lease token (from %s)",
                               id_to_str(job_id), worker.name if worker else identity.hex())
        return None

    def _settle(self, identity: bytes, job: J.Job) -> None:
        """The sender's lease on ``job`` is over: its slot is free."""
        worker = self.workers.get(identity)
        if worker is not None and worker.leases.get(job.id) == job.token:
            del worker.leases[job.id]

    def _on_done(self, identity: bytes, body: dict[str, Any]) -> None:
        done = M.Done.from_body(body)
        self._known(identity)
        deferred: list[list[Any]] = []
        reason = ""
        for result in done.results:
            job = self._current(identity, result.id, result.token)
            if job is None:
                continue
            if job.cancel_requested:  # finished anyway, but the caller asked to cancel it
                job.value = result.value
                self.cancel_running_done(job)
                continue
            too_big = self.result_never_fits(len(result.value))
            if too_big:  # no amount of waiting makes it fit: the attempt fails (retried, then dead)
                self._settle(identity, job)
                self._failed_attempt(job, J.KIND_STORAGE_FULL, too_big, None, duration_ms=0)
                continue
            no_room = self.result_refusal(len(result.value))
            if no_room:  # the broker's storage trouble, not the job's: it stays running, the worker keeps it
                deferred.append([result.id, result.token])
                reason = no_room
                continue
            self._settle(identity, job)
            job.move("complete")
            job.value = result.value
            job.finished_ms = self.clock.wall_ms()
            self._count(job.group, "completed")
            self._finish(job, "complete", {"state": job.state, "value": job.value, "finished_ms": job.finished_ms})
        if deferred:
            self.quiet.warning("deferred results", "%d result(s) not stored yet, the worker keeps them: %s",
                               len(deferred), reason)
            self.outbox.append(Outgoing(identity, P.encode(P.DEFER, {
                "results": deferred, "reason": reason, "retry_ms": self.DEFER_RETRY_MS})))

    def _on_fail(self, identity: bytes, body: dict[str, Any]) -> None:
        failed = M.Fail.from_body(body)
        self._known(identity)
        for failure in failed.failures:
            job = self._current(identity, failure.id, failure.token)
            if job is None:
                continue
            self._settle(identity, job)
            if job.cancel_requested:  # it stopped because it was cancelled: not a failed attempt
                self.cancel_running_done(job)
                continue
            self._failed_attempt(job, failure.kind, failure.error, failure.traceback, failure.duration_ms)

    def _failed_attempt(self, job: J.Job, kind: str, error: str, tb: str | None, duration_ms: int) -> None:
        """An attempt that failed: retried with backoff, or dead-lettered when permanent or out of retries."""
        self._count(job.group, "failed")
        self._emit("failed", job, error=error, error_kind=kind, duration_ms=duration_ms)
        if kind in J.PERMANENT_KINDS or job.attempts > self.max_retries(job):
            self._finish_failed(job, "bury", kind, error, tb, failed=True)
        else:
            self._retry(job, kind, error, tb)

    def _retry(self, job: J.Job, kind: str, error: str, tb: str | None) -> None:
        settings = self.group_settings(job.group)
        base = min(settings.backoff_max_s, settings.backoff_s * (2 ** (job.attempts - 1)))
        delay_s = base * (0.5 + random.random() / 2)  # jitter: retries of a burst do not march in step
        job.move("retry")
        job.due_ms = self.clock.wall_ms() + int(delay_s * 1000)
        job.error, job.error_kind, job.traceback = error, kind, tb
        job.token = 0
        self._count(job.group, "retried")
        self._emit("retrying", job, due_ms=job.due_ms, error=error)
        self._save(job, "retry", {"state": job.state, "due_ms": job.due_ms, "error": error,
                                  "error_kind": kind, "traceback": tb, "token": 0})
        self.schedule_at(job, job.due_ms)

    def _on_return(self, identity: bytes, body: dict[str, Any]) -> None:
        """A draining worker hands back jobs it did not start or finish: requeue them now."""
        returned = M.Return.from_body(body)
        self._known(identity)
        for job_id, token in returned.jobs:
            job = self._current(identity, job_id, token)
            if job is not None:
                self._settle(identity, job)
                self._release(job, charge=False, why="returned")

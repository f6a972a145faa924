"""What the broker does for workers: HELLO, READY, DONE, FAIL, RETURN, HEARTBEAT, BYE."""
from __future__ import annotations

import logging
import random
from typing import Any, Callable

from shoal import jobs as J
from shoal import protocol as P
from shoal.ids import id_to_str
from shoal.protocol import field

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

    def _known(self, identity: bytes) -> WorkerInfo | None:
        """The sender, with its liveness refreshed; an unknown one is asked to say HELLO."""
        worker = self.workers.get(identity)
        if worker is None:
            self.outbox.append(Outgoing(identity, P.encode(P.RECONNECT, {})))
        else:
            worker.last_seen = self.clock.mono()
        return worker

    # --- joining ---------------------------------------------------------------
    def _on_hello(self, identity: bytes, body: dict[str, Any]) -> None:
        group = field(body, "group", str)
        if not group:
            raise P.ProtocolError("HELLO needs a non-empty group", body)
        workflows = field(body, "workflows", dict, {})
        if not all(isinstance(name, str) and name for name in workflows):
            raise P.ProtocolError("HELLO workflow names must be non-empty strings", list(workflows))
        conflict = self._route_conflict(group, workflows)
        if conflict:
            log.error("refused worker from group %s: %s", group, conflict)
            self.error(identity, None, P.E_BAD_REQUEST, conflict)
            return
        previous = self.workers.remove(identity)
        settings = self.group_settings(group)
        worker = WorkerInfo(
            identity=identity, group=group, slots=max(0, field(body, "slots", int)),
            lease_s=settings.lease_s, last_seen=self.clock.mono(), workflows=tuple(workflows),
            pid=field(body, "pid", int, 0), host=field(body, "host", str, ""),
            server=field(body, "server", str, ""),
            name=f"{field(body, 'host', str, '?')}:{field(body, 'pid', int, 0)}",
        )
        self.workers.add(worker)
        self.known_groups.add(group)
        self._adopt(worker, field(body, "running", list, []))
        if previous is not None:  # leases it held that it no longer claims were lost
            for job_id, token in previous.leases.items():
                job = self.jobs.get(job_id)
                if job_id not in worker.leases and job is not None and job.token == token:
                    self._release(job, charge=True, why=J.KIND_WORKER_LOST)
        self._learn_routes(group, workflows)
        log.info("worker %s joined group %s with %d slots", worker.name, group, worker.slots)

    def _route_conflict(self, group: str, workflows: dict[str, Any]) -> str | None:
        for name in workflows:
            for other in self.workers:
                if other.group != group and name in other.workflows:
                    return (f"workflow {name!r} is claimed by group {other.group!r} (worker {other.name}) "
                            f"and by group {group!r}; a workflow belongs to one group")
        return None

    def _adopt(self, worker: WorkerInfo, running: list[Any]) -> None:
        """Take back the leases a worker still holds after a reconnect or broker restart."""
        for entry in running:
            if not (isinstance(entry, list) and len(entry) == 2):
                continue
            job_id, token = entry
            job = self.jobs.get(job_id) if isinstance(job_id, bytes) else None
            if job is not None and job.state == J.RUNNING and job.token == token:
                self.orphans.pop(job_id, None)
                for other in self.workers:
                    other.leases.pop(job_id, None)
                worker.leases[job_id] = token

    def _learn_routes(self, group: str, workflows: dict[str, Any]) -> None:
        for name, info in workflows.items():
            retries = info.get("retries") if isinstance(info, dict) else None
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
        worker = self._known(identity)
        if worker is not None:
            worker.slots = max(0, field(body, "slots", int))

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
    def _current(self, identity: bytes, job_id: Any, token: Any) -> J.Job | None:
        """The job if this outcome is for its live lease; a stale token is logged and dropped."""
        worker = self.workers.get(identity)
        if worker is not None and isinstance(job_id, bytes) and worker.leases.get(job_id) == token:
            del worker.leases[job_id]  # only the live lease frees its slot; a stale report frees nothing
        job = self.jobs.get(job_id) if isinstance(job_id, bytes) else None
        if job is None or job.state != J.RUNNING or job.token != token:
            shown = id_to_str(job_id) if isinstance(job_id, bytes) and len(job_id) == 16 else repr(job_id)
            log.warning("rejected a result for job %s with a stale lease token (from %s)", shown,
                        worker.name if worker else identity.hex())
            return None
        self.orphans.pop(job.id, None)
        return job

    def _on_done(self, identity: bytes, body: dict[str, Any]) -> None:
        self._known(identity)
        for entry in field(body, "results", list):
            if not (isinstance(entry, list) and len(entry) >= 3):
                raise P.ProtocolError("each result must be [id, token, value, ...]", entry)
            job = self._current(identity, entry[0], entry[1])
            if job is None:
                continue
            if job.cancel_requested:  # finished anyway, but the caller asked to cancel it
                job.value = entry[2]
                self.cancel_running_done(job)
                continue
            no_room = self.result_refusal(len(entry[2]) if isinstance(entry[2], bytes) else 0)
            if no_room:  # storing it would fill the store: a failed attempt, not a failed commit
                self._failed_attempt(job, J.KIND_STORAGE_FULL, no_room, None, duration_ms=0)
                continue
            job.move("complete")
            job.value = entry[2]
            job.finished_ms = self.clock.wall_ms()
            self._count(job.group, "completed")
            self._finish(job, "complete", {"state": job.state, "value": job.value, "finished_ms": job.finished_ms})

    def _on_fail(self, identity: bytes, body: dict[str, Any]) -> None:
        self._known(identity)
        for entry in field(body, "failures", list):
            if not isinstance(entry, dict):
                raise P.ProtocolError("each failure must be a map", entry)
            job = self._current(identity, entry.get("id"), entry.get("token"))
            if job is None:
                continue
            kind = field(entry, "kind", str, J.KIND_ERROR)
            error = field(entry, "error", str, "")
            tb = field(entry, "traceback", str, None)
            if job.cancel_requested:  # it stopped because it was cancelled: not a failed attempt
                self.cancel_running_done(job)
                continue
            self._failed_attempt(job, kind, error, tb, field(entry, "duration_ms", int, 0))

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
        self.schedule.add(job.id, job.due_ms)

    def _on_return(self, identity: bytes, body: dict[str, Any]) -> None:
        """A draining worker hands back jobs it did not start or finish: requeue them now."""
        self._known(identity)
        for entry in field(body, "jobs", list):
            if not (isinstance(entry, list) and len(entry) == 2):
                raise P.ProtocolError("each returned job must be [id, token]", entry)
            job = self._current(identity, entry[0], entry[1])
            if job is not None:
                self._release(job, charge=False, why="returned")

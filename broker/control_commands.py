"""Cancelling jobs: at once when pending or scheduled, by telling the worker when running."""
from __future__ import annotations

from typing import Any, Callable

from shoal import jobs as J
from shoal import protocol as P
from shoal.protocol import field

from .client_commands import ClientCommands
from .core import Outgoing


class ControlCommands(ClientCommands):
    """The CANCEL command."""

    def handlers(self) -> dict[bytes, Callable[[bytes, dict[str, Any]], None]]:
        table = super().handlers()
        table[P.CANCEL] = self._on_cancel
        table[P.STORAGE] = self._on_storage
        return table

    def _on_storage(self, identity: bytes, body: dict[str, Any]) -> None:
        rid = field(body, "rid", int)
        self.reply(identity, rid, storage={**self.store.sizes(), "refusing_enqueues": self.storage_full,
                                           "disk_room_bytes": self.storage_room,
                                           "min_free_disk_bytes": self.settings.broker.min_free_disk_mb << 20})

    def _on_cancel(self, identity: bytes, body: dict[str, Any]) -> None:
        rid = field(body, "rid", int)
        job_id = P.job_id_field(body)
        job = self.jobs.get(job_id)
        if job is None:
            record = self.record_of(job_id)
            if record is None:
                self.error(identity, rid, P.E_UNKNOWN_JOB, f"no job with id {job_id.hex()} (never enqueued, or expired)")
            else:  # finished already: nothing to do, and the caller is told so
                self.reply(identity, rid, cancelled=False, state=record["state"],
                           message=f"the job is already {record['state']}")
            return
        if job.state == J.RUNNING:
            self._ask_worker_to_cancel(job)
            self.reply(identity, rid, cancelled=True, state=job.state,
                       message="the job is running; its worker was told to stop it")
            return
        self._unqueue(job)
        self._cancel_now(job, "cancel")
        self.reply(identity, rid, cancelled=True, state=job.state, message="cancelled")

    def _unqueue(self, job: J.Job) -> None:
        queue = self.ready.get(job.group)
        if queue is not None:
            queue.remove(job.id)
        self.schedule.remove(job.id)
        self.fanin.pop(job.id, None)
        waiting = self.unrouted.get(job.workflow)
        if waiting and job.id in waiting:
            waiting.remove(job.id)

    def _cancel_now(self, job: J.Job, op: str) -> None:
        job.move("cancel")
        job.finished_ms = self.clock.wall_ms()
        job.token = 0
        job.waiting_on = job.wait_step = None
        self._finish(job, op, {"state": job.state, "finished_ms": job.finished_ms, "token": 0,
                               "waiting_on": None, "wait_step": None, "value": job.value})

    def _ask_worker_to_cancel(self, job: J.Job) -> None:
        if not job.cancel_requested:
            job.cancel_requested = True
            self._save(job, "cancel_requested", {"cancel_requested": True})
        for worker in self.workers:
            if worker.leases.get(job.id) == job.token:
                self.outbox.append(Outgoing(worker.identity, P.encode(P.CANCEL, {"id": job.id, "token": job.token})))

    def cancel_running_done(self, job: J.Job) -> None:
        """The run of a job being cancelled ended (any outcome, or its worker was lost)."""
        for worker in self.workers:
            if worker.leases.get(job.id) == job.token:
                del worker.leases[job.id]
        self._cancel_now(job, "cancel")

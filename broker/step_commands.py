"""Durable workflow steps: STEP (persist a result), SUSPEND (sleep or wait for children), fan-in.

A step result is committed before the worker's ``step.run`` returns, so a retried or
redelivered run answers finished steps from storage. A suspended job gives its slot
back: it is ``scheduled`` until its wake time, or until every child it waits for is
final. The last child's result and the parent's wake-up are one transaction.
"""
from __future__ import annotations

from typing import Any, Callable

from shoal import jobs as J
from shoal import messages as M
from shoal import protocol as P
from shoal.protocol import field

from .client_commands import ClientCommands
from .core import Outgoing


class StepCommands(ClientCommands):
    """Handlers for STEP, SUSPEND and STEPS, and the fan-in bookkeeping."""

    def handlers(self) -> dict[bytes, Callable[[bytes, dict[str, Any]], None]]:
        table = super().handlers()
        table.update({P.STEP: self._on_step, P.SUSPEND: self._on_suspend, P.STEPS: self._on_steps})
        return table

    # --- reading ------------------------------------------------------------------
    def steps_for(self, job_id: bytes) -> dict[str, dict[str, Any]]:
        """Stored steps of a job, including those written in this pass."""
        steps = self.store.steps_of(job_id)
        for (owner, name), record in self.batch.steps.items():
            if owner == job_id:
                steps[name] = record
        return steps

    def _on_steps(self, identity: bytes, body: dict[str, Any]) -> None:
        rid = field(body, "rid", int)
        job_id = P.job_id_field(body)
        if self.record_of(job_id) is None:
            self.error(identity, rid, P.E_UNKNOWN_JOB, f"no job with id {job_id.hex()}")
            return
        self.reply(identity, rid, steps=self.steps_for(job_id))

    # --- writing ------------------------------------------------------------------
    def _leased(self, identity: bytes, step: M.Step) -> J.Job | None:
        worker = self.workers.get(identity)
        if worker is not None:
            worker.last_seen = self.clock.mono()
        job = self.jobs.get(step.id)
        if job is None or job.state != J.RUNNING or job.token != step.token:
            self.error(identity, step.rid, P.E_STALE_LEASE, "this run no longer holds the job's lease")
            return None
        return job

    def _put_step(self, job: J.Job, name: str, record: dict[str, Any]) -> None:
        record.setdefault("finished_ms", self.clock.wall_ms())
        self.batch.steps[(job.id, name)] = record
        job.steps += 1
        self._save(job, "step", {"steps": job.steps, "step": name, "record": record})

    def _on_step(self, identity: bytes, body: dict[str, Any]) -> None:
        step = M.Step.from_body(body)
        children = [self._parse_job(raw) for raw in step.enqueue]  # all checked before any is created
        job = self._leased(identity, step)
        if job is None:
            return
        existing = self.steps_for(job.id).get(step.name)
        if existing is not None:  # a re-send: the first one was committed
            self.reply(identity, step.rid, record=existing)
            return
        record = dict(step.record)
        new = [c for c in children if self.record_of(c["id"]) is None]
        refused = self.admission(new) if new else None
        if refused:  # the step fails: the handler sees the error, the attempt is retried with backoff
            self.outbox.append(Outgoing(identity, P.encode(P.ERROR, {"rid": step.rid, **refused})))
            return
        if new:
            self._enqueue_children(job, new)
        self._put_step(job, step.name, record)
        self.reply(identity, step.rid, record=record)

    def _enqueue_children(self, parent: J.Job, items: list[dict[str, Any]]) -> None:
        now = self.clock.wall_ms()
        for item in items:
            self._create(item, now, parent=parent.id)

    def _on_suspend(self, identity: bytes, body: dict[str, Any]) -> None:
        suspend = M.Suspend.from_body(body)
        job = self._current(identity, suspend.id, suspend.token)
        if job is None:
            return
        self._settle(identity, job)
        if job.cancel_requested:
            self.cancel_running_done(job)
            return
        name, due_ms, wait_on = suspend.name, suspend.due_ms, list(suspend.wait_on)
        job.attempts = max(0, job.attempts - 1)  # giving the slot back is not a failed attempt
        if name not in self.steps_for(job.id):
            self._put_step(job, name, {"wake_ms": due_ms} if not wait_on else {"deadline_ms": due_ms})
        job.move("suspend")
        job.token = 0
        job.due_ms = due_ms
        if wait_on:
            job.waiting_on, job.wait_step = wait_on, name
            self.fanin[job.id] = {c for c in wait_on if not self._is_final(c)}
        self._save(job, "suspend", {"state": job.state, "attempts": job.attempts, "token": 0, "due_ms": due_ms,
                                    "waiting_on": job.waiting_on, "wait_step": job.wait_step})
        if wait_on and not self.fanin[job.id]:
            self._wake_parent(job)
        elif due_ms:
            self.schedule_at(job, due_ms)

    # --- fan-in -------------------------------------------------------------------
    def _is_final(self, job_id: bytes) -> bool:
        record = self.record_of(job_id)
        return record is None or record["state"] in J.FINAL_STATES

    def _child_final(self, child: J.Job) -> None:
        assert child.parent is not None
        pending = self.fanin.get(child.parent)
        if pending is None:
            return
        pending.discard(child.id)
        parent = self.jobs.get(child.parent)
        if not pending and parent is not None:
            self._wake_parent(parent)

    def _wake_parent(self, parent: J.Job) -> None:
        """Every child is final: store their results as the wait step's, resume the parent."""
        self.fanin.pop(parent.id, None)
        if parent.state != J.SCHEDULED or not parent.waiting_on or parent.wait_step is None:
            return
        results = []
        for child_id in parent.waiting_on:
            record = self.record_of(child_id) or {"state": "unknown"}
            results.append([child_id, record["state"], record.get("value"), record.get("error")])
        step_name = parent.wait_step
        step_record = {"children": results, "finished_ms": self.clock.wall_ms()}
        self.batch.steps[(parent.id, step_name)] = step_record
        self.schedule.remove(parent.id)
        parent.waiting_on = parent.wait_step = None
        parent.move("due")
        self._save(parent, "fan_in", {"state": parent.state, "waiting_on": None, "wait_step": None,
                                      "step": step_name, "record": step_record})
        self._queue(parent)

    def rebuild_fanin(self) -> None:
        """After a restart: which suspended parents still wait for which children."""
        for job in list(self.jobs.values()):
            if job.state == J.SCHEDULED and job.waiting_on:
                self.fanin[job.id] = {c for c in job.waiting_on if not self._is_final(c)}
                if not self.fanin[job.id]:
                    self._wake_parent(job)

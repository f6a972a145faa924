"""The job table: every active job, and the rules of a job's birth, end and return.

Owns the active jobs, the active count per group, the dead letters per group, the dedup keys,
the arrival sequence and the per-group counters. Invariants, each kept here and nowhere else:
- ``active[g]`` is the number of jobs of group ``g`` in ``jobs`` (pending, scheduled, running);
- ``dead[g]`` holds exactly the dead jobs of ``g`` still stored;
- a dedup key maps to the job that holds it: an active one (``until_ms`` 0), or a finished one
  for ``key_ttl`` after it ended; two jobs never hold a live key together, at start or on requeue;
- every change of a job writes its new record and a log entry into the pass's batch.
Every change made here is undoable (see ``undo``): the caller ``touch``-es a job before changing it.
"""
from __future__ import annotations

import logging
import operator
from dataclasses import fields
from collections.abc import Sequence
from typing import Any

from shoal import jobs as J
from shoal.ids import id_to_str
from shoal.messages import JobItem

from ..storage.contract import CoreStore
from . import undo as U
from .dispatch import Dispatch
from .effects import Clock, Effects
from .groups import Groups
from .leases import Leases
from .schedule import Timetable
from .waiters import Waiters

log = logging.getLogger("shoal.broker")

_FIELDS = tuple(f.name for f in fields(J.Job))
_VALUES = operator.attrgetter(*_FIELDS)  # one C call: a job's snapshot is cheap to take


def _restore_fields(job: J.Job, values: tuple[Any, ...]) -> None:
    for name, value in zip(_FIELDS, values):
        setattr(job, name, value)


class JobTable:
    """Active jobs, dead letters, dedup keys, counters; create, finish, bury, requeue, wake."""

    def __init__(self, store: CoreStore, clock: Clock, groups: Groups, effects: Effects, dispatch: Dispatch,
                 timetable: Timetable, leases: Leases, waiters: Waiters, undo: U.Undo) -> None:
        self.store, self.clock, self.groups, self.effects = store, clock, groups, effects
        self.dispatch, self.timetable, self.leases, self.waiters = dispatch, timetable, leases, waiters
        self.undo = undo
        self.jobs: dict[bytes, J.Job] = {}             # active jobs only
        self.active: dict[str, int] = {}               # active jobs per group
        self.dead: dict[str, set[bytes]] = {}
        self.keys: dict[str, tuple[bytes, int]] = {}   # dedup key -> (job id, taken until ms; 0 = while active)
        self.seq = 0
        self.counters: dict[str, dict[str, int]] = {}
        self.known_groups: set[str] = set(groups.settings.groups)

    # --- start ------------------------------------------------------------------------------
    def load(self, orphan_deadline: float) -> None:
        """Rebuild from storage; jobs running when the broker stopped wait for their worker."""
        self.seq = self.store.next_seq
        self.counters = self.store.counters()
        self.known_groups.update(self.counters)
        for record in self.store.iter_jobs():
            job = J.Job.from_record(record)
            self.seq = max(self.seq, job.seq + 1)
            if job.state == J.DEAD:
                self.dead.setdefault(job.group, set()).add(job.id)
            if job.key:
                self.hold_key(job)
            if job.state not in J.ACTIVE_STATES:
                continue
            self.jobs[job.id] = job
            self.active[job.group] = self.active.get(job.group, 0) + 1
            if job.group:
                self.known_groups.add(job.group)
            if job.state == J.RUNNING:  # its worker may come back and finish it
                self.leases.orphans[job.id] = orphan_deadline
            else:
                self.place(job)
        self.undo.clear()  # loading is not a message: nothing to take back

    # --- reading ----------------------------------------------------------------------------
    def stored(self, job_id: bytes) -> dict[str, Any] | None:
        """The record as this pass leaves it: written in this pass, else in storage."""
        batch = self.effects.batch.jobs
        if job_id in batch:
            stored = batch[job_id]  # a row (Job.to_row), or None: dropped in this pass
            return None if stored is None else J.as_record(stored)
        return self.store.get_job(job_id)

    def record_of(self, job_id: bytes) -> dict[str, Any] | None:
        """What clients see of a job, active or finished (None: never enqueued, or expired)."""
        job = self.jobs.get(job_id)
        if job is not None:
            return J.public_view(job.to_record())
        record = self.stored(job_id)
        return None if record is None else J.public_view(record)

    def is_final(self, job_id: bytes) -> bool:
        record = self.record_of(job_id)
        return record is None or record["state"] in J.FINAL_STATES

    # --- small rules ------------------------------------------------------------------------
    def touch(self, job: J.Job) -> None:
        """About to change ``job``: remember it as it is, so a failed message can put it back."""
        self.undo.append((_restore_fields, job, _VALUES(job)))

    def count(self, group: str, name: str, n: int = 1) -> None:
        counts = self.counters.get(group)
        if counts is None:
            U.put(self.undo, self.counters, group, {})
            counts = self.counters[group]
        batch = self.effects.batch.counters
        self.undo.append((self._uncount, group, name, n, batch.get(group, U.MISSING)))
        counts[name] = counts.get(name, 0) + n
        batch[group] = counts

    def _uncount(self, group: str, name: str, n: int, stored: Any) -> None:
        counts = self.counters[group]
        counts[name] -= n
        if not counts[name]:
            del counts[name]
        U.restore(self.effects.batch.counters, group, stored)

    def know(self, group: str) -> None:
        if group and group not in self.known_groups:
            self.known_groups.add(group)
            self.undo.append((self.known_groups.discard, group))

    def hold_key(self, job: J.Job) -> None:
        """Keep a dedup key taken while its job is active (and for key_ttl after)."""
        assert job.key is not None
        held = self.keys.get(job.key)
        if job.state in J.ACTIVE_STATES:
            U.put(self.undo, self.keys, job.key, (job.id, 0))
        elif held is not None and held[1] == 0 and held[0] != job.id:
            return  # an active job holds the key (read at start in any order): a finished one never takes it
        elif job.key_ttl_ms and job.finished_ms + job.key_ttl_ms > self.clock.wall_ms():
            U.put(self.undo, self.keys, job.key, (job.id, job.finished_ms + job.key_ttl_ms))
        elif held is not None and held[0] == job.id:
            U.pop(self.undo, self.keys, job.key)

    def key_holder(self, key: str) -> bytes | None:
        """The job that holds a dedup key now, or None when the key is free."""
        held = self.keys.get(key)
        if held is None:
            return None
        job_id, until_ms = held
        if until_ms and until_ms <= self.clock.wall_ms():
            U.pop(self.undo, self.keys, key)
            return None
        return job_id

    def place(self, job: J.Job, front: bool = False) -> None:
        """A job that is pending waits in dispatch; a scheduled one waits for its due time."""
        if job.state == J.PENDING:
            self.dispatch.queue(job, front)
        elif job.state == J.SCHEDULED and (job.due_ms or not job.waiting_on):  # a step.wait may have no deadline
            self.timetable.at(job, job.due_ms)

    # --- birth ------------------------------------------------------------------------------
    def create(self, item: JobItem, now_ms: int, parent: bytes | None = None) -> J.Job:
        """A new job (admission said yes): stored, queued or scheduled, its key taken."""
        group = item.group
        if group is None:
            route = self.dispatch.routes.get(item.wf)
            group = route["group"] if route else ""  # "" = unrouted until a worker announces it
        job = J.Job(id=item.id, workflow=item.wf, group=group, payload=item.payload, seq=self.seq,
                    priority=item.priority, key=item.key, max_retries=item.retries, created_ms=now_ms,
                    parent=parent, key_ttl_ms=max(0, item.key_ttl_ms))
        # the hot path: one undo entry takes back the table's part (seq, job, count, record)
        active, batch = self.active, self.effects.batch
        self.undo.append((self._uncreate, job, batch.jobs.get(job.id, U.MISSING)))
        self.seq += 1
        if group not in self.known_groups:
            self.know(group)
        self.jobs[job.id] = job
        active[group] = active.get(group, 0) + 1
        if item.delay_ms > 0:
            job.state = J.SCHEDULED
            job.due_ms = now_ms + item.delay_ms
        record = job.to_row()
        batch.jobs[job.id] = record
        batch.log.append(("enqueue", job.id, record))
        if job.state == J.PENDING:
            self.dispatch.queue(job)
        else:
            self.timetable.at(job, job.due_ms)
        if job.key:
            self.hold_key(job)
        self.effects.emit("queued", job)
        return job

    def create_many(self, items: Sequence[JobItem], now_ms: int, parent: bytes | None = None) -> None:
        """``create`` for each item, in order (admission said yes to them all). The usual item,
        pending at once in a known group with no dedup key, takes a shorter path: one undo entry
        for all of them, the group's queue looked up once, the job built from positional fields
        (a stored row's order, fixed by the schema) and no event unless someone listens. An
        ENQUEUE of 1,000 jobs spends most of its time here (BENCHMARKS.md, "Bulk enqueue and the
        broker's commit")."""
        batch = self.effects.batch
        records, entries = batch.jobs, batch.log
        jobs, active, routes = self.jobs, self.active, self.dispatch.routes
        made: list[tuple[J.Job, Any]] = []  # the short path's jobs, with what the batch held for their id
        self.undo.append((self._uncreate_many, made, self.seq))
        emitting = self.effects.emitting()
        queue, queued_group = None, None
        new, pending, missing = J.Job, J.PENDING, U.MISSING
        for item in items:
            group = item.group
            if group is None:
                route = routes.get(item.wf)
                group = route["group"] if route else ""  # "" = unrouted: create() parks it
            if item.delay_ms > 0 or item.key is not None or item.key_ttl_ms or not group:
                self.create(item, now_ms, parent)
                queued_group = None
                continue
            if group != queued_group:
                self.know(group)
                queue, queued_group = self.dispatch.ready_queue(group), group
            seq = self.seq
            self.seq = seq + 1
            # Job's first eleven fields: id, workflow, group, payload, state, seq, priority, key,
            # attempts, max_retries, created_ms
            job = new(item.id, item.wf, group, item.payload, pending, seq, item.priority, None, 0, item.retries,
                      now_ms)
            if parent is not None:
                job.parent = parent
            job_id = job.id
            made.append((job, records.get(job_id, missing)))
            jobs[job_id] = job
            active[group] = active.get(group, 0) + 1
            row = job.to_row()
            records[job_id] = row
            entries.append(("enqueue", job_id, row))
            assert queue is not None
            queue.push(job_id, seq, item.priority)
            if emitting:
                self.effects.emit("queued", job)

    def _uncreate_many(self, made: list[tuple[J.Job, Any]], seq: int) -> None:
        ready, records = self.dispatch.ready, self.effects.batch.jobs
        for job, stored in reversed(made):
            del self.jobs[job.id]
            self.active[job.group] -= 1
            U.restore(records, job.id, stored)
            queue = ready.get(job.group)
            if queue is not None:
                queue.restore(job.id, None)
        self.seq = seq

    def _uncreate(self, job: J.Job, stored: Any) -> None:
        self.seq = job.seq
        del self.jobs[job.id]
        self.active[job.group] -= 1
        U.restore(self.effects.batch.jobs, job.id, stored)

    def adopt_route(self, job: J.Job, group: str) -> None:
        """An unrouted job learns its group (a worker announced its workflow)."""
        self.touch(job)
        U.add(self.undo, self.active, "", -1)
        U.add(self.undo, self.active, group, 1)
        job.group = group
        self.effects.save(job, "route", {"group": group})
        self.dispatch.queue(job)

    # --- the end ----------------------------------------------------------------------------
    def finish(self, job: J.Job, op: str, changes: dict[str, Any]) -> None:
        """Log the final transition and move the job out of memory; its record stays in storage
        until it expires (dead letters stay until requeued). Waiters and a waiting parent hear of it."""
        batch = self.effects.batch
        active = self.jobs.pop(job.id, None) is not None
        # one undo entry takes back the table's part (the job back in memory, its count, its record)
        self.undo.append((self._unfinish, job, active, batch.jobs.get(job.id, U.MISSING)))
        if active:
            self.active[job.group] -= 1
        if job.id in self.leases.orphans:
            self.leases.claimed(job.id)
        if job.state != J.DEAD:
            job.expire_ms = job.finished_ms + int(self.groups(job.group).retention_s * 1000)
            batch.expiry_add.append((job.expire_ms, job.id))
            changes["expire_ms"] = job.expire_ms
        batch.jobs[job.id] = job.to_row()
        batch.log.append((op, job.id, changes))
        if job.key:
            self.hold_key(job)
        if job.state == J.COMPLETED:
            self.effects.emit("completed", job, duration_ms=max(0, job.finished_ms - job.started_ms))
        elif job.state == J.CANCELLED:
            self.effects.emit("cancelled", job)
        else:
            self.effects.emit("dead_letter", job, error=job.error, error_kind=job.error_kind)
        if job.parent is not None and self.waiters.child_final(job.parent, job.id):
            parent = self.jobs.get(job.parent)
            if parent is not None:
                self.wake_parent(parent)
        if job.id in self.waiters.waiters:
            self.waiters.answer(job)  # the record (a dict) is built only when someone waits

    def _unfinish(self, job: J.Job, active: bool, stored: Any) -> None:
        if active:
            self.jobs[job.id] = job
            self.active[job.group] += 1
        U.restore(self.effects.batch.jobs, job.id, stored)

    def bury(self, job: J.Job, event: str, kind: str, error: str, tb: str | None, failed: bool = False) -> None:
        """Dead-letter a job; ``failed`` when a FAIL caused it (counted for replay's counters)."""
        self.touch(job)
        job.move(event)
        job.finished_ms = self.clock.wall_ms()
        job.error, job.error_kind, job.traceback = error, kind, tb
        self.count(job.group, "dead")
        dead = self.dead.setdefault(job.group, set())
        if job.id not in dead:
            dead.add(job.id)
            self.undo.append((dead.discard, job.id))
        log.info("job %s (%s) is dead: %s", id_to_str(job.id), job.workflow, error)
        self.finish(job, "dead", {"state": job.state, "error": error, "error_kind": kind, "traceback": tb,
                                  "finished_ms": job.finished_ms, "attempts": job.attempts, "failed": failed})

    # --- return -----------------------------------------------------------------------------
    def dead_letter(self, job_id: bytes) -> tuple[J.Job | None, str | None]:
        """The dead job ``job_id`` as it would be requeued, or why it cannot be."""
        record = self.stored(job_id)
        if record is None or record.get("state") != J.DEAD:
            return None, "not a dead letter" if record is not None else "no such job"
        return J.Job.from_record(record), None

    def requeue(self, job: J.Job) -> None:
        """Give a dead job (from ``dead_letter``, admitted) a fresh retry budget; active again,
        its dedup key is its own until it ends."""
        job.move("requeue")
        job.attempts = 0
        job.error = job.error_kind = job.traceback = None
        job.finished_ms = 0
        job.token = 0
        dead = self.dead.get(job.group)
        if dead is not None and job.id in dead:
            dead.discard(job.id)
            self.undo.append((dead.add, job.id))
        U.put(self.undo, self.jobs, job.id, job)
        U.add(self.undo, self.active, job.group, 1)
        self.effects.save(job, "requeue", {"state": job.state, "attempts": 0, "error": None, "error_kind": None,
                                           "traceback": None, "finished_ms": 0, "token": 0})
        self.dispatch.queue(job)
        if job.key:
            self.hold_key(job)

    def wake_parent(self, parent: J.Job) -> None:
        """Every child is final: store their results as the wait step's, resume the parent."""
        self.waiters.drop(parent.id)
        if parent.state != J.SCHEDULED or not parent.waiting_on or parent.wait_step is None:
            return
        results = []
        for child_id in parent.waiting_on:
            record = self.record_of(child_id) or {"state": "unknown"}
            results.append([child_id, record["state"], record.get("value"), record.get("error")])
        step_name = parent.wait_step
        step_record = {"children": results, "finished_ms": self.clock.wall_ms()}
        self.effects.put(self.effects.batch.steps, (parent.id, step_name), step_record)
        self.timetable.remove(parent.id)
        self.touch(parent)
        parent.waiting_on = parent.wait_step = None
        parent.move("due")
        self.effects.save(parent, "fan_in", {"state": parent.state, "waiting_on": None, "wait_step": None,
                                             "step": step_name, "record": step_record})
        self.dispatch.queue(parent)

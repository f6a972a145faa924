"""The schedule: jobs waiting for a deadline (delay, retry backoff, durable sleep, wait timeout).

Stored due times are wall time (for people and replay); each is turned into a monotonic
deadline once, here, so a step of the wall clock neither fires a job early nor holds it.
"""
from __future__ import annotations

from shoal import jobs as J

from . import undo as U
from .effects import Clock
from .queues import Schedule


class Timetable:
    """Deadlines of scheduled jobs, soonest first."""

    def __init__(self, clock: Clock, undo: U.Undo) -> None:
        self.clock = clock
        self.undo = undo
        self.due = Schedule()

    def at(self, job: J.Job, due_ms: int) -> None:
        """Wake ``job`` at the stored wall time ``due_ms``, kept as a monotonic deadline from now on."""
        self.undo.append((self.due.restore, job.id, self.due.deadline_of(job.id)))
        self.due.add(job.id, self.clock.mono() + (due_ms - self.clock.wall_ms()) / 1000)

    def remove(self, job_id: bytes) -> None:
        """Forget a job's deadline (cancelled, or woken by its children)."""
        old = self.due.deadline_of(job_id)
        if old is not None:
            self.undo.append((self.due.restore, job_id, old))
            self.due.remove(job_id)

    def pop_due(self, now: float) -> list[bytes]:
        """Every job due at monotonic ``now`` (tick only)."""
        return self.due.pop_due(now)

    def next_deadline(self) -> float | None:
        return self.due.next_deadline()

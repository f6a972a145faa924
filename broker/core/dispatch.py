"""Dispatch's data: the ready queues, jobs nobody can route yet, the routing table, rate buckets.

Invariant: a pending job is in exactly one place: its group's ready queue, or (no group known)
its workflow's unrouted list. Changes made while a message is handled are undoable; the rate
buckets only move in ``tick``, which is never taken back.
"""
from __future__ import annotations

from typing import Any

from shoal import jobs as J
from shoal.conf.settings import Settings

from . import undo as U
from .effects import Effects
from .groups import Groups
from .queues import ReadyQueue


class Dispatch:
    """Where pending jobs wait, and the limits on letting them out."""

    def __init__(self, settings: Settings, groups: Groups, effects: Effects, undo: U.Undo) -> None:
        self.settings = settings
        self.groups = groups
        self.effects = effects
        self.undo = undo
        self.ready: dict[str, ReadyQueue] = {}
        self.unrouted: dict[str, list[bytes]] = {}    # workflow -> job ids
        self.routes: dict[str, dict[str, Any]] = {}   # workflow -> {group, retries}, learned from HELLOs
        self.buckets: dict[str, list[float]] = {}      # rate-limited group or workflow -> [tokens, last refill]
        self.rate_wait_s: float | None = None          # until a bucket has a token again

    # --- where a pending job waits ------------------------------------------------------
    def queue(self, job: J.Job, front: bool = False) -> None:
        """Queue a pending job in its group (ahead of its priority when ``front``), or as unrouted."""
        if not job.group:
            waiting = self.unrouted.setdefault(job.workflow, [])
            waiting.append(job.id)
            self.undo.append((waiting.remove, job.id))
            return
        queue = self.ready_queue(job.group)
        old = queue.push_front(job.id, job.priority) if front else queue.push(job.id, job.seq, job.priority)
        self.undo.append((queue.restore, job.id, old))

    def ready_queue(self, group: str) -> ReadyQueue:
        """The group's queue of pending jobs, made (undoably) if it has none yet."""
        queue = self.ready.get(group)
        if queue is None:
            queue = self.ready[group] = ReadyQueue()
            self.undo.append((self.ready.pop, group, None))
        return queue

    def unqueue(self, job: J.Job) -> None:
        """Take a pending job out of wherever it waits (cancel)."""
        queue = self.ready.get(job.group)
        if queue is not None:
            self.undo.append((queue.restore, job.id, queue.key_of(job.id)))
            queue.remove(job.id)
        waiting = self.unrouted.get(job.workflow)
        if waiting and job.id in waiting:
            place = waiting.index(job.id)
            del waiting[place]
            self.undo.append((waiting.insert, place, job.id))

    def pending(self, group: str) -> int:
        queue = self.ready.get(group)
        return len(queue) if queue else 0

    # --- routes -------------------------------------------------------------------------
    def group_of(self, workflow: str, group: str | None) -> str | None:
        """The group a job goes to: the one it names, else its workflow's route (None: unrouted)."""
        if group:
            return group
        route = self.routes.get(workflow)
        return route["group"] if route else None

    def learn(self, workflow: str, route: dict[str, Any]) -> list[bytes]:
        """A worker announced this workflow: store the route; returns the jobs that waited for it."""
        if self.routes.get(workflow) != route:
            U.put(self.undo, self.routes, workflow, route)
            self.effects.put(self.effects.batch.routes, workflow, route)
            self.effects.log("learn_route", b"", {"workflow": workflow, **route})
        return U.pop(self.undo, self.unrouted, workflow) or []

    def max_retries(self, job: J.Job) -> int:
        """The job's own limit, else its workflow's (from the route), else its group's."""
        if job.max_retries is not None:
            return job.max_retries
        route = self.routes.get(job.workflow)
        if route is not None and route.get("retries") is not None:
            return int(route["retries"])
        return int(self.groups(job.group).retries)

    # --- rate limits (tick only) ------------------------------------------------------------
    def tokens(self, key: str, rate: float, now: float) -> float:
        """Refill and return the token bucket ``key`` (a group or a workflow) at ``rate`` per second."""
        capacity = max(1.0, rate / 10)  # bursts of at most a tenth of a second's worth
        bucket = self.buckets.setdefault(key, [capacity, now])
        bucket[0] = min(capacity, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if bucket[0] < 1:
            wait = (1 - bucket[0]) / rate
            self.rate_wait_s = wait if self.rate_wait_s is None else min(self.rate_wait_s, wait)
        return bucket[0]

    def allowance(self, group: str, now: float) -> int | None:
        """How many jobs the group's global rate limit lets out now (None: no limit)."""
        rate = self.groups(group).rate_per_s
        return int(self.tokens("group:" + group, rate, now)) if rate else None

    def workflow_allows(self, workflow: str, now: float) -> bool:
        """Take a token for one job of ``workflow`` if ``[rates]`` limits it; False when none is left."""
        rate = self.settings.rates.get(workflow)
        if not rate:
            return True
        if self.tokens("workflow:" + workflow, rate, now) < 1:
            return False
        self.buckets["workflow:" + workflow][0] -= 1
        return True

    def spend(self, group: str, n: int) -> None:
        """``n`` jobs of a rate-limited group went out."""
        self.buckets["group:" + group][0] -= n

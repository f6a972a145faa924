"""Admission: the one check every way a job is born passes.

Client enqueue, enqueue_many, a step's children, a cron tick and a requeue all ask ``refusal``
(storage room, a group whose workers cannot start, a group at its ``max_pending``) for the jobs
that are new: not ``known`` (an id seen before is a re-send) and whose dedup key no other job
holds (the job table's ``key_holder``, the one place that rule lives). Owns the storage
figures (measured once a second, charged as work is accepted) and the supervisor's word
on unhealthy groups.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from shoal import protocol as P
from shoal.conf.settings import Settings
from shoal.messages import JobItem

from ..storage.contract import CoreStore
from .demand import Demand
from .dispatch import Dispatch
from .effects import Clock
from .jobs import JobTable
from .leases import Leases

log = logging.getLogger("shoal.broker")

# Near the cap, new work is refused so what is queued can still be dispatched and finish:
# LMDB copies a page on every change, and a job's record (with its payload) is rewritten
# at dispatch and at completion, so accepted work needs room beyond its own size.
STORAGE_HEADROOM = 0.5
STORAGE_COST = 6     # bytes per payload byte over a job's life: job, log entry, rewrites, fragmentation
RESULT_LIMIT = 0.9   # of max_size: a result that would take the store past it is refused
ITEM_OVERHEAD = 512  # bytes of a job's record beside its payload


class SupervisorView(Protocol):
    """What the core asks of the supervisor (the shell's; None when it starts no workers)."""

    groups: Any

    def refusal(self, group: str, now: float) -> str | None: ...

    def state_of(self, group: str, demand: Demand, now: float) -> dict[str, object]: ...

    def tick(self, demand_of: Callable[[str], Demand], now: float) -> None: ...


class Admission:
    """Storage room, unhealthy groups, max_pending and dedup, for every new job."""

    def __init__(self, store: CoreStore, settings: Settings, clock: Clock, jobs: JobTable, dispatch: Dispatch,
                 leases: Leases) -> None:
        self.store, self.settings, self.clock = store, settings, clock
        self.jobs, self.dispatch, self.leases = jobs, dispatch, leases
        self.supervisor: SupervisorView | None = None  # set by the server when it starts workers
        self.storage_used = 0
        self.storage_room = 1 << 62  # until the first measurement (load() takes one)
        self.storage_full = False

    # --- the one check ----------------------------------------------------------------------
    def known(self, items: Sequence[JobItem]) -> set[bytes]:
        """Which of these ids are jobs already (active, written in this pass, or stored)."""
        jobs, batch = self.jobs.jobs, self.jobs.effects.batch.jobs
        unseen = [i.id for i in items if i.id not in jobs and i.id not in batch]
        found = self.store.has_jobs(unseen) if unseen else set()
        found.update(i.id for i in items if i.id in jobs or batch.get(i.id) is not None)
        return found

    def refusal(self, items: Sequence[JobItem]) -> dict[str, Any] | None:
        """None when these new jobs may be created (their storage is then charged), else the
        ERROR body (code, message, maybe retry_after_s)."""
        incoming = sum(len(i.payload) + ITEM_OVERHEAD for i in items)
        no_room = self.storage_refusal(incoming)
        if no_room:
            return {"code": P.E_STORAGE, "message": no_room}
        unhealthy = self._unhealthy(items) if self.supervisor is not None else None
        if unhealthy:
            return {"code": P.E_GROUP_UNHEALTHY, "message": unhealthy}
        saturated = self._saturation(items)
        if saturated:
            return self._saturated_error(*saturated)
        self.storage_used += 2 * incoming  # until the next measurement: job record + log entry
        self.storage_room -= 2 * incoming
        self.jobs.undo.append((self._uncharge, 2 * incoming))
        return None

    def _unhealthy(self, items: Sequence[JobItem]) -> str | None:
        assert self.supervisor is not None
        now = self.clock.mono()
        for item in items:
            group = self.dispatch.group_of(item.wf, item.group)
            reason = self.supervisor.refusal(group, now) if group else None
            if reason:
                return reason
        return None

    def _saturation(self, items: Sequence[JobItem]) -> tuple[str, int, int] | None:
        """(group, backlog, max_pending) of a group these jobs would push past its max_pending."""
        adding: dict[str, int] = {}
        routes = self.dispatch.routes
        for item in items:
            group = item.group or (routes.get(item.wf) or {}).get("group")  # Dispatch.group_of, inline: hot path
            if group:
                adding[group] = adding.get(group, 0) + 1
        for group, n in adding.items():
            limit = self.dispatch.groups(group).max_pending
            if not limit:
                continue
            backlog = self.dispatch.pending(group)
            if backlog + n > limit:
                return group, backlog, limit
        return None

    def _saturated_error(self, group: str, backlog: int, limit: int) -> dict[str, Any]:
        done = self.jobs.counters.get(group, {}).get("completed", 0)
        # a rough hint: how long the group needs to work off the overflow at one job per slot per second
        slots = max(1, sum(w.slots for w in self.leases.workers.in_group(group)))
        retry_after_s = round(max(0.1, (backlog - limit + 1) / slots), 2)
        message = (f"group {group!r} has {backlog} pending jobs, at its max_pending of {limit}; "
                   f"retry after about {retry_after_s}s ({done} completed so far)")
        return {"code": P.E_SATURATED, "message": message, "retry_after_s": retry_after_s}

    # --- storage ----------------------------------------------------------------------------
    def _uncharge(self, nbytes: int) -> None:
        self.storage_used -= nbytes
        self.storage_room += nbytes

    def measure(self) -> None:
        """Measure (once a second) how much the store may still grow: under ``max_size`` and on
        its disk, beyond ``min_free_disk``. A failed commit (disk really full) also sets
        ``storage_full``; this clears it once there is room again."""
        self.storage_used = self.store.used_bytes()
        try:
            self.storage_room = self.store.disk_room(self.storage_used)
        except OSError as exc:  # the directory vanished or cannot be stat'ed: do not guess room
            log.warning("cannot measure the free space under %s: %s", self.store.path, exc)
            self.storage_room = 0
        problem = self._storage_problem(0)
        full = problem is not None
        if full and not self.storage_full:
            log.error("%s", problem)
        elif self.storage_full and not full:
            log.info("storage has room again (%d MiB used, %d MiB free on the disk); accepting enqueues",
                     self.storage_used // 2**20, self.storage_room // 2**20)
        self.storage_full = full

    def _storage_problem(self, incoming_bytes: int) -> str | None:
        need = STORAGE_COST * incoming_bytes
        cap = self.settings.broker.max_size_mb * 1024 * 1024
        if cap and self.storage_used + need > cap * STORAGE_HEADROOM:
            return (f"storage full: {self.storage_used // 2**20} MiB used of max_size {cap // 2**20} MiB; "
                    f"enqueues are refused until finished jobs expire (retention) or max_size is raised")
        reserve = self.settings.broker.min_free_disk_mb * 1024 * 1024
        if self.storage_room - need < reserve:
            return (f"storage full: the disk under {self.store.path} has {max(0, self.storage_room) // 2**20} MiB "
                    f"of room left (min_free_disk is {reserve // 2**20} MiB); enqueues are refused until space "
                    f"is freed on that disk or finished jobs expire (running jobs still complete)")
        return None

    def storage_refusal(self, incoming_bytes: int) -> str | None:
        """Why an enqueue of about this many bytes is refused for lack of storage, or None."""
        if self.storage_full:
            return self._storage_problem(0) or ("storage full: the last commit failed for lack of space; "
                                                "enqueues are refused until the next measurement finds room")
        return self._storage_problem(incoming_bytes)

    def result_refusal(self, value_bytes: int) -> str | None:
        """Why a job's result of this many bytes cannot be stored now, or None.

        Enqueues stop at half of max_size (or at min_free_disk) so that what is queued can
        finish; a handler returning big values can still outgrow that room. Past these harder
        limits the result is not stored now (the worker keeps it and sends it again, see
        ``DEFER``) instead of its commit failing, which would throw away the whole pass."""
        problem = self._result_problem(value_bytes)
        if problem is None:
            self._charge(3 * value_bytes)
        return problem

    def results_fit(self, total_bytes: int) -> bool:
        """True when results of this many bytes in all fit now and can never be too big, each of
        them (so one DONE is checked once, not per result): they are then charged together. False
        charges nothing; the caller checks each result (``result_never_fits``, ``result_refusal``)."""
        if self.result_never_fits(total_bytes) is not None or self._result_problem(total_bytes) is not None:
            return False
        self._charge(3 * total_bytes)
        return True

    def _result_problem(self, value_bytes: int) -> str | None:
        need = 3 * value_bytes  # in the record, in the log entry, and page overhead
        cap = self.settings.broker.max_size_mb * 1024 * 1024
        if cap and self.storage_used + need > cap * RESULT_LIMIT:
            return (f"storage full: a result of {value_bytes:,} bytes does not fit in what is left of "
                    f"max_size {cap // 2**20} MiB ({self.storage_used // 2**20} MiB used)")
        reserve = self.settings.broker.min_free_disk_mb * 1024 * 1024
        if self.storage_room - need < reserve // 2:
            return (f"storage full: a result of {value_bytes:,} bytes would leave the disk under "
                    f"{self.store.path} below half of min_free_disk ({reserve // 2**20} MiB)")
        return None

    def _charge(self, need: int) -> None:
        self.storage_used += need  # until the next measurement
        self.storage_room -= need
        self.jobs.undo.append((self._uncharge, need))

    def result_never_fits(self, value_bytes: int) -> str | None:
        """Why a result is too big for this broker even with an empty store (a handler's fault,
        not a passing shortage: waiting for room would wait forever), or None."""
        cap = self.settings.broker.max_size_mb * 1024 * 1024
        if cap and 3 * value_bytes > cap * RESULT_LIMIT * STORAGE_HEADROOM:
            return (f"storage full: a result of {value_bytes:,} bytes can never fit under max_size "
                    f"{cap // 2**20} MiB; return less, or store it elsewhere and return a reference")
        return None

"""Leases: who holds which running job, and for how long it is believed.

Owns the connected workers (with their leases and liveness), the jobs running at start that
no worker has claimed yet (orphans), the old connections of reconnected workers (superseded),
the peers asked to say HELLO. Invariant: a job id is leased by at most
one connected worker, with the token the job holds; every change here is undoable.
"""
from __future__ import annotations

from . import undo as U
from .workers import WorkerInfo, WorkerRegistry

RECONNECT_GAP_S = 1.0       # at most one RECONNECT per unknown peer this often
SUPERSEDED_GRACE_S = 2.0    # a reconnected worker's old connection may still deliver results this long
MAX_ASKED = 10_000          # peers remembered as asked to say HELLO


class Leases:
    """Workers, their leases, orphans and tokens."""

    def __init__(self, undo: U.Undo) -> None:
        self.undo = undo
        self.workers = WorkerRegistry()
        self.orphans: dict[bytes, float] = {}        # running at start, no worker yet -> deadline (mono)
        self.superseded: dict[bytes, tuple[WorkerInfo, float]] = {}  # old connection -> (it, grace deadline)
        self.asked_hello: dict[bytes, float] = {}    # unknown peer -> when it was last sent RECONNECT (mono)

    # --- workers ------------------------------------------------------------------------
    def join(self, worker: WorkerInfo) -> None:
        """Register a worker (its identity must not be registered)."""
        self.workers.add(worker)
        self.undo.append((self.workers.remove, worker.identity))

    def leave(self, identity: bytes) -> WorkerInfo | None:
        """Forget a worker; returns it (with its leases, for the caller to release)."""
        worker = self.workers.get(identity)
        if worker is None:
            return None
        place = self.workers.place_of(worker)
        self.workers.remove(identity)
        self.undo.append((self.workers.put_back, worker, place))
        return worker

    @staticmethod
    def seen(worker: WorkerInfo, now: float) -> None:
        """The worker was heard from now. Never undone: a message whose handler failed still
        showed the worker alive (as a strike still counts against a peer whose frame was bad)."""
        worker.last_seen = now

    def set_slots(self, worker: WorkerInfo, slots: int) -> None:
        self.undo.append((setattr, worker, "slots", worker.slots))
        worker.slots = slots

    def grant(self, worker: WorkerInfo, job_id: bytes, token: int) -> None:
        """The worker holds this job's lease now."""
        U.put(self.undo, worker.leases, job_id, token)

    def settle(self, worker: WorkerInfo, job_id: bytes) -> None:
        """The worker's lease on this job is over: its slot is free."""
        token = worker.leases.pop(job_id, None)
        if token is not None:
            self.undo.append((worker.leases.__setitem__, job_id, token))

    def settle_sender(self, identity: bytes, job_id: bytes, token: int) -> None:
        """The sender's lease on this job, if it holds it with ``token``, is over."""
        worker = self.workers.by_identity.get(identity)
        if worker is not None and worker.leases.get(job_id) == token:
            del worker.leases[job_id]
            self.undo.append((worker.leases.__setitem__, job_id, token))

    def clear(self, worker: WorkerInfo) -> None:
        """Every lease of a worker is over."""
        for job_id in list(worker.leases):
            U.pop(self.undo, worker.leases, job_id)

    def holders(self, job_id: bytes, token: int) -> list[WorkerInfo]:
        """Workers holding this job with this token (one at most, unless a reconnect is in flight)."""
        return [w for w in self.workers if w.leases.get(job_id) == token]

    # --- orphans and old connections ----------------------------------------------------
    def claimed(self, job_id: bytes) -> None:
        """A job is no longer waiting for its worker to come back."""
        U.pop(self.undo, self.orphans, job_id)

    def supersede(self, old: WorkerInfo, deadline: float) -> None:
        """A reconnected worker's old connection: its results may arrive until ``deadline``."""
        U.put(self.undo, self.superseded, old.identity, (old, deadline))

    def past_grace(self, now: float) -> list[WorkerInfo]:
        """Old connections whose grace is over (forgotten here; their leases are the caller's to hand back)."""
        done = [old for old, deadline in self.superseded.values() if deadline <= now]
        for old in done:
            U.pop(self.undo, self.superseded, old.identity)
        return done

    def forgive(self, gap_s: float, now: float) -> None:
        """The loop stood still ``gap_s``: nobody could be heard, so nobody's lease ran meanwhile."""
        for worker in self.workers:
            worker.last_seen = max(worker.last_seen, now)
        for job_id in self.orphans:
            self.orphans[job_id] += gap_s
        for identity, (old, deadline) in self.superseded.items():
            self.superseded[identity] = (old, deadline + gap_s)

    # --- peers we do not know -----------------------------------------------------------
    def should_ask_hello(self, identity: bytes, now: float) -> bool:
        """True when an unknown peer is to get RECONNECT now: once per peer and gap, because after
        a restart every worker sends many messages before its HELLO arrives."""
        asked = self.asked_hello.get(identity)
        if asked is not None and now - asked < RECONNECT_GAP_S:
            return False
        if len(self.asked_hello) >= MAX_ASKED:  # bounded: forget peers asked long enough ago
            U.set_attr(self.undo, self, "asked_hello",
                       {k: t for k, t in self.asked_hello.items() if now - t < RECONNECT_GAP_S})
        U.put(self.undo, self.asked_hello, identity, now)
        return True

    def greeted(self, identity: bytes) -> None:
        U.pop(self.undo, self.asked_hello, identity)

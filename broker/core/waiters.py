"""Who is waiting for a job to end: clients' WAITs, and suspended parents' fan-in.

Invariants: ``waits_of[peer]`` is the number of (job, rid) entries of that peer in
``waiters``, never more than ``max_per_peer``; ``fanin[parent]`` holds the parent's children
that are not final yet, and a parent is woken the moment it becomes empty.
"""
from __future__ import annotations

from typing import Any

from shoal import jobs as J
from shoal import protocol as P

from . import undo as U
from .effects import Effects

MAX_WAITS_PER_PEER = 10_000


class Waiters:
    """WAITs by job, their count per peer, and fan-in by parent."""

    def __init__(self, effects: Effects, undo: U.Undo) -> None:
        self.effects = effects
        self.undo = undo
        self.waiters: dict[bytes, dict[tuple[bytes, int], None]] = {}
        self.waits_of: dict[bytes, int] = {}          # peer -> WAITs it has outstanding (capped)
        self.max_per_peer = MAX_WAITS_PER_PEER
        self.fanin: dict[bytes, set[bytes]] = {}      # suspended parent -> children not final yet

    # --- WAIT -----------------------------------------------------------------------------
    def add(self, job_id: bytes, identity: bytes, rid: int) -> bool:
        """Answer ``(identity, rid)`` when the job is final; False when the peer is at its cap.
        Keyed by (identity, rid): a client re-sending its WAIT does not register twice."""
        waiting = self.waiters.get(job_id)
        if waiting is not None and (identity, rid) in waiting:
            return True
        if self.waits_of.get(identity, 0) >= self.max_per_peer:
            return False
        if waiting is None:
            U.put(self.undo, self.waiters, job_id, {})
            waiting = self.waiters[job_id]
        U.put(self.undo, waiting, (identity, rid), None)
        U.add(self.undo, self.waits_of, identity, 1)
        return True

    def answer(self, job: J.Job) -> None:
        """The job is final: every WAIT on it gets its record."""
        waiting = U.pop(self.undo, self.waiters, job.id)
        if not waiting:
            return
        view = J.public_view(job.to_record())
        for identity, rid in waiting:
            self._done(identity)
            self.effects.send(identity, P.encode(P.REPLY, {"job": view, "rid": rid}), wait_for=job.id)

    def _done(self, identity: bytes) -> None:
        left = self.waits_of.get(identity, 0) - 1
        if left > 0:
            U.put(self.undo, self.waits_of, identity, left)
        else:
            U.pop(self.undo, self.waits_of, identity)

    def forget(self, identity: bytes) -> int:
        """Drop every WAIT of a peer that left or stopped reading; returns how many (after a send, never undone)."""
        if identity not in self.waits_of:
            return 0
        dropped = 0
        for job_id in list(self.waiters):
            waiting = self.waiters[job_id]
            for key in [k for k in waiting if k[0] == identity]:
                del waiting[key]
                dropped += 1
            if not waiting:
                del self.waiters[job_id]
        self.waits_of.pop(identity, None)
        return dropped

    # --- fan-in ---------------------------------------------------------------------------
    def wait_for_children(self, parent_id: bytes, children: set[bytes]) -> None:
        U.put(self.undo, self.fanin, parent_id, children)

    def child_final(self, parent_id: bytes, child_id: bytes) -> bool:
        """One child of a waiting parent is final; True when that was the last one."""
        pending = self.fanin.get(parent_id)
        if pending is None or child_id not in pending:
            return False
        pending.discard(child_id)
        self.undo.append((pending.add, child_id))
        return not pending

    def drop(self, parent_id: bytes) -> Any:
        """The parent no longer waits (woken, timed out or cancelled)."""
        return U.pop(self.undo, self.fanin, parent_id)

"""What a pass decided besides memory: the writes (``Batch``), the messages (outbox) and events.

The shell commits the batch in one synced transaction and only then sends the outbox, so
nothing leaves the broker before the state that explains it is durable. A message whose
handler raised is cut out again: ``begin`` marks where it started, ``rewind`` goes back there.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from shoal import jobs as J
from shoal import protocol as P
from shoal.faults import trip
from shoal.ids import id_to_str

from ..storage.batch import Batch
from .undo import Undo, put

log = logging.getLogger("shoal.broker")


class Clock:
    """Wall time for what is stored and what people read; monotonic time for deadlines."""

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def mono(self) -> float:
        return time.monotonic()


@dataclass
class Outgoing:
    """One message to send after the commit; ``job_ids`` are dispatches to undo if it fails."""

    identity: bytes
    frames: list[bytes]
    job_ids: tuple[bytes, ...] = ()
    wait_for: bytes | None = None  # the answer to a WAIT on this job (kept if the commit fails)


class Effects:
    """The pass's batch, outbox and lifecycle events (owned here; everyone else appends through it)."""

    def __init__(self, clock: Clock, undo: Undo) -> None:
        self.clock = clock
        self.undo = undo
        self.batch = Batch()
        self.outbox: list[Outgoing] = []
        self.events: list[dict[str, Any]] = []   # published after the commit
        self.events_wanted = False               # any subscriber on the events socket
        self.events_dropped = 0
        self.events_endpoint = ""
        self.replies_dropped = 0                 # to peers that stopped reading or left

    # --- one message, or none of it -----------------------------------------------------
    # Handlers append to four lists (the rest of the batch is dicts, whose writes go through
    # the undo journal; expiry_del and drop_steps change only in tick). The broker notes their
    # lengths before each message, and a failed one is cut back to them.
    def rewind(self, outbox: int, events: int, logged: int, expiring: int) -> None:
        """Cut the lists back to where they stood before the failed message."""
        b = self.batch
        del self.outbox[outbox:], self.events[events:], b.log[logged:], b.expiry_add[expiring:]

    def take(self) -> tuple[Batch, list[Outgoing]]:
        """What this pass decided: the writes, then the messages."""
        batch, outbox = self.batch, self.outbox
        self.batch, self.outbox = Batch(), []
        return batch, outbox

    # --- writes ---------------------------------------------------------------------------
    def save(self, job: J.Job, op: str, changes: dict[str, Any]) -> None:
        """Write the job's whole record and a log entry of what changed."""
        put(self.undo, self.batch.jobs, job.id, job.to_row())
        self.batch.log.append((op, job.id, changes))

    def put(self, table: dict[Any, Any], key: Any, value: Any) -> None:
        """A write into one of the batch's tables (routes, steps, cron, counters, jobs)."""
        put(self.undo, table, key, value)

    def log(self, op: str, job_id: bytes, changes: dict[str, Any]) -> None:
        self.batch.log.append((op, job_id, changes))

    # --- messages ---------------------------------------------------------------------------
    def send(self, identity: bytes, frames: list[bytes], job_ids: tuple[bytes, ...] = (),
             wait_for: bytes | None = None) -> None:
        self.outbox.append(Outgoing(identity, frames, job_ids, wait_for))

    def reply(self, identity: bytes, rid: Any, **body: Any) -> None:
        body["rid"] = rid
        self.outbox.append(Outgoing(identity, P.encode(P.REPLY, body)))

    def error(self, identity: bytes, rid: Any, code: str, message: str, size: int | None = None) -> None:
        body: dict[str, Any] = {"rid": rid, "code": code, "message": message}
        if size is not None:
            body["size"] = size
        self.outbox.append(Outgoing(identity, P.encode(P.ERROR, body)))

    def refuse(self, identity: bytes, rid: Any, refused: dict[str, Any]) -> None:
        """An ERROR whose body admission built (code, message, maybe retry_after_s)."""
        self.outbox.append(Outgoing(identity, P.encode(P.ERROR, {"rid": rid, **refused})))

    def emitting(self) -> bool:
        """Whether ``emit`` does anything now (a subscriber, or debug logging): a loop over many
        jobs asks once."""
        return self.events_wanted or log.isEnabledFor(logging.DEBUG)

    def emit(self, event: str, job: J.Job, **extra: Any) -> None:
        """A lifecycle event: published on the events socket after the commit, and logged."""
        if not self.emitting():
            return  # nobody listens: skip the work on the hot path
        trip("event_emit")  # a fault point inside handlers: armed, it raises (tests of the undo)
        record = {"event": event, "id": job.id, "workflow": job.workflow, "group": job.group,
                  "attempt": job.attempts, "ts_ms": self.clock.wall_ms(), **extra}
        if self.events_wanted:
            self.events.append(record)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", event, id_to_str(job.id), extra={
                "job": id_to_str(job.id), "workflow": job.workflow, "group": job.group,
                "attempt": job.attempts, **{k: v for k, v in extra.items() if k != "id"}})


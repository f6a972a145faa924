"""The broker: a thin step function over the core's parts (zguide's ``mediate()``, h11's ``Connection``).

``handle(identity, frames)`` and ``tick()`` change the in-memory state and record what must be
written (the batch) and what must be sent (the outbox); ``take()`` hands both to the shell,
which commits the batch in one synced transaction and only then sends. A message whose handler
raises is taken back whole (the undo journal, see ``undo``): its reply then truly says it was
not applied.
"""
from __future__ import annotations

import logging
import random
from typing import Any

from shoal import protocol as P
from shoal.conf.settings import Settings
from shoal.errors import ProtocolError

from ..storage.batch import Batch
from ..storage.contract import CoreStore
from .commands import COMMANDS, Command, Principal, refusal
from .demand import Demand
from .effects import Clock, Outgoing
from .handlers import reads, step
from .handlers.cron import fire_due
from .handlers.lifecycle import release
from .handlers.timers import tick as run_timers
from .queues import ReadyQueue, Schedule
from .state import Core
from .undo import rollback
from .workers import WorkerInfo, WorkerRegistry

log = logging.getLogger("shoal.broker")



def _part(part: str, name: str, doc: str) -> Any:
    """A read-write property for a field one of the parts owns (the shell and tests set a few)."""
    return property(lambda self: getattr(getattr(self.core, part), name),
                    lambda self, value: setattr(getattr(self.core, part), name, value), doc=doc)


class Broker:
    """All broker state (in ``core``'s parts) and the entry points the shell calls."""

    def __init__(self, store: CoreStore, settings: Settings, clock: Clock | None = None,
                 rng: random.Random | None = None) -> None:
        self.core = Core(store, settings, clock or Clock(), rng or random.Random())  # seeded from the OS; a test passes its own
        self.store, self.settings, self.clock = store, settings, self.core.clock
        self.max_message_bytes = settings.broker.max_message_bytes
        self._handlers: dict[bytes, Command] = COMMANDS
        self.send_hwm = 10_000  # messages queued per peer before sends to it fail (set by the server)

    # --- start -----------------------------------------------------------------------------
    def load(self) -> None:
        """Rebuild memory from storage after a (re)start: jobs, queues, keys, fan-in, cron marks."""
        core = self.core
        core.dispatch.routes = self.store.routes()
        core.jobs.load(core.clock.mono() + core.groups.longest_lease_s())
        log.info("loaded %d active jobs (%d running from before the restart)", len(core.jobs.jobs),
                 len(core.leases.orphans))
        core.admission.measure()  # a broker started on a full disk refuses enqueues from the first one
        step.rebuild_fanin(core)
        core.cron.load(self.store)
        core.undo.clear()

    # --- entry points ----------------------------------------------------------------------
    def handle(self, identity: bytes, frames: list[bytes], principal: Principal | None = None) -> None:
        """Act on one message from a client or worker. A bad one gets an error reply, and so
        does one its sender's key may not send (``principal`` is None with security off)."""
        core = self.core
        if core.strikes.quarantined and core.strikes.blocked(identity, core.clock.mono()):
            return  # a peer that floods the broker with bad frames is not read for a while
        rid = None
        decoded = False
        effects = core.effects
        marks = len(effects.outbox), len(effects.events), len(effects.batch.log), len(effects.batch.expiry_add)
        try:
            command, body = P.decode(frames, self.max_message_bytes)
            decoded = True
            rid = body.get("rid")
            row = self._handlers.get(command)
            if row is None:
                raise ProtocolError(f"{command.decode()} is not a command the broker accepts", command)
            why = refusal(principal, command, body)
            if why is not None:
                self._forbid(identity, rid, principal, why)
                return
            row.handler(core, identity, row.parse(body))
            core.undo.clear()
        except ProtocolError as exc:
            self._take_back(marks)
            self._bad(identity, rid, exc, decoded)
        except Exception:  # a bug of ours must not take the broker down for everyone
            log.exception("internal error handling a message from %s", identity.hex())
            self._take_back(marks)
            core.effects.error(identity, rid, P.E_INTERNAL, "internal broker error (logged); the request was not applied")

    def _take_back(self, marks: tuple[int, int, int, int]) -> None:
        """Undo what the failed message did, in memory and in the pass's batch and outbox."""
        rollback(self.core.undo)
        self.core.effects.rewind(*marks)

    def _bad(self, identity: bytes, rid: Any, exc: ProtocolError, decoded: bool) -> None:
        core = self.core
        # a well-formed message whose content a handler refused is a bad request
        code = getattr(exc, "code", P.E_BAD_REQUEST if decoded else P.E_PROTOCOL)
        core.quiet.warning("bad messages", "bad message from %s: %s", identity.hex(), exc.reason)
        core.effects.error(identity, rid, code, exc.reason, size=getattr(exc, "size", None))
        if core.strikes.strike(identity, core.clock.mono()):
            log.warning("peer %s sent over %d bad messages in %.0f s: its messages are dropped unread for "
                        "%.0f s", identity.hex(), core.strikes.limit, core.strikes.window_s,
                        core.strikes.quarantine_s)

    def _forbid(self, identity: bytes, rid: Any, principal: Principal | None, why: str) -> None:
        """Refuse a command the sender's key may not send: a clear error to it, a line naming the key."""
        name = principal.name if principal is not None else "?"
        self.core.quiet.warning(f"forbidden {name}", "refused %s: %s", identity.hex(), why)
        self.core.effects.error(identity, rid, P.E_FORBIDDEN, why)
        self.core.strikes.strike(identity, self.core.clock.mono())

    def tick(self) -> None:
        """Cron ticks that are due first, so their jobs dispatch in this same pass; then the timers."""
        core = self.core
        fire_due(core, core.clock.wall_ms())
        run_timers(core)
        core.undo.clear()  # time's changes are never taken back

    def next_wakeup_s(self) -> float:
        """How long the loop may sleep: the next heartbeat, due job, rate token or cron tick."""
        core = self.core
        now = core.clock.mono()
        wait = core.heartbeat_s - (now - core.last_heartbeat)
        due = core.timetable.next_deadline()
        if due is not None:
            wait = min(wait, due - now)
        if core.dispatch.rate_wait_s is not None:
            wait = min(wait, core.dispatch.rate_wait_s)
        cron = core.cron.wait_s(core.clock.wall_ms())
        if cron is not None:
            wait = min(wait, cron)
        return float(max(0.0, wait))

    def unobserved(self) -> bool:
        """This pass wrote something and has nothing to send or read: nobody learns of it
        before its commit, so the commit may wait for company (``IdleSpin.company``)."""
        effects = self.core.effects
        return bool(effects.batch) and not effects.outbox and not self.core.history.wanted

    def take(self) -> tuple[Batch, list[Outgoing]]:
        """What this pass decided: the writes, then the messages."""
        return self.core.effects.take()

    def forgive_stall(self, gap_s: float) -> None:
        """The loop itself stood still ``gap_s`` seconds (SIGSTOP, a swapped-out VM; the shell
        measures it): nobody could be heard meanwhile, so workers get a fresh lease and
        orphans their time back, instead of being declared lost before their first message
        since is read."""
        log.warning("the broker stood still for %.1f s; workers and orphaned jobs keep their leases", gap_s)
        self.core.leases.forgive(gap_s, self.core.clock.mono())

    def undeliverable(self, out: Outgoing, not_reading: bool = False) -> None:
        """A send failed: the peer is gone, or (``not_reading``) its queue is at the high-water mark.

        A worker's undelivered dispatches are undone without an attempt charged. Its last
        messages (DONE, RETURN, BYE) may still be waiting in our socket, so it is not dropped
        now: it gets no more jobs and is declared lost within a second unless those messages
        settle its leases first (a worker that stopped reading is as good as gone). A client's
        reply is dropped and counted, and its WAITs are forgotten: nobody reads their answers.
        """
        core = self.core
        worker = core.leases.workers.get(out.identity)
        if worker is None:
            core.effects.replies_dropped += 1
            dropped = core.waiters.forget(out.identity)
            if not_reading:
                core.quiet.warning("peers not reading", "peer %s does not read its replies (%d queued, the most "
                                   "kept per peer): replies to it are dropped, %d of its WAITs forgotten",
                                   out.identity.hex(), self.send_hwm, dropped)
            return
        for job_id in out.job_ids:  # never reached the worker: no attempt spent
            if worker.leases.pop(job_id, None) is not None:
                release(core, core.jobs.jobs[job_id], charge=False, why="undeliverable")
        worker.slots = 0
        worker.last_seen = min(worker.last_seen, core.clock.mono() - worker.lease_s + 1.0)
        if not_reading:
            core.quiet.warning("workers not reading", "worker %s does not read what the broker sends; "
                               "it is treated as gone", worker.name)
        core.undo.clear()

    # --- reads the shell, the simulation and tests use ------------------------------------------
    def demand(self, group: str) -> Demand:
        """Pending, running and connected capacity of one group (for scaling decisions)."""
        return reads.demand(self.core, group)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-group counters (what STATS answers and the metrics show)."""
        return reads.stats(self.core)

    def record_of(self, job_id: bytes) -> dict[str, Any] | None:
        """What clients see of a job, active or finished."""
        return self.core.jobs.record_of(job_id)

    def add_waiter(self, job_id: bytes, identity: bytes, rid: int) -> bool:
        """Answer ``(identity, rid)`` when the job is final (the shell re-registers WAITs after a failed commit)."""
        added = self.core.waiters.add(job_id, identity, rid)
        self.core.undo.clear()
        return added

    def reloaded(self, answered_waits: list[tuple[bytes, bytes, int]]) -> tuple["Broker", list[Outgoing]]:
        """A broker rebuilt from storage after a commit failed (the store is the truth), with
        what is not stored carried over: the shell's settings, counters, history scans still
        running, and every WAIT (those still open and those ``answered_waits`` answered in the
        lost pass: their jobs are not final after all). A WAIT whose job is final in storage
        is answered now; the rest stay registered. Enqueues are refused until room is measured."""
        new = Broker(self.store, self.settings, self.clock, self.core.rng)
        new.load()
        new.supervisor, new.events_endpoint = self.supervisor, self.events_endpoint
        new.send_hwm, new.replies_dropped = self.send_hwm, self.replies_dropped
        new.history_reading = self.history_reading  # their scans still run and answer
        new.events_wanted = self.events_wanted  # the shell reads subscriptions only when they change
        new.storage_full = True
        waits = [(job_id, identity, rid) for job_id, waiting in self.waiters.items() for identity, rid in waiting]
        answers = []
        for job_id, identity, rid in waits + answered_waits:
            if job_id in new.jobs:
                new.add_waiter(job_id, identity, rid)
            else:  # final in storage after all (an earlier pass): answer now
                record = new.record_of(job_id)
                if record is not None:
                    answers.append(Outgoing(identity, P.encode(P.REPLY, {"rid": rid, "job": record})))
        return new, answers

    def history_answered(self, identity: bytes) -> None:
        """The reader thread answered one of this peer's HISTORY requests."""
        self.core.history.answered(identity)

    def cron_wait_s(self, now_ms: int) -> float | None:
        """Seconds until the next cron tick."""
        return self.core.cron.wait_s(now_ms)

    @property
    def jobs(self) -> dict[bytes, Any]:
        """The active jobs (read-only use)."""
        return self.core.jobs.jobs

    @property
    def workers(self) -> WorkerRegistry:
        return self.core.leases.workers

    @property
    def ready(self) -> dict[str, ReadyQueue]:
        return self.core.dispatch.ready

    @property
    def schedule(self) -> Schedule:
        return self.core.timetable.due

    @property
    def orphans(self) -> dict[bytes, float]:
        return self.core.leases.orphans

    @property
    def superseded(self) -> dict[bytes, tuple[WorkerInfo, float]]:
        return self.core.leases.superseded

    @property
    def waiters(self) -> dict[bytes, dict[tuple[bytes, int], None]]:
        return self.core.waiters.waiters

    @property
    def waits_of(self) -> dict[bytes, int]:
        return self.core.waiters.waits_of

    @property
    def batch(self) -> Batch:
        return self.core.effects.batch

    @property
    def strikes(self) -> Any:
        return self.core.strikes

    supervisor: Any = _part("admission", "supervisor", "The shell's supervisor (None: it starts no workers).")
    storage_room = _part("admission", "storage_room", "Bytes the store may still grow by (measured once a second).")
    storage_full = _part("admission", "storage_full", "Enqueues are refused for lack of storage.")
    events = _part("effects", "events", "Lifecycle events of this pass, for the shell to publish.")
    events_wanted = _part("effects", "events_wanted", "Any subscriber on the events socket.")
    events_dropped = _part("effects", "events_dropped", "Events the events socket could not take.")
    events_endpoint = _part("effects", "events_endpoint", "Where events are published (shown by STATS).")
    replies_dropped = _part("effects", "replies_dropped", "Replies to peers that stopped reading or left.")
    history_wanted = _part("history", "wanted", "HISTORY requests of this pass, for the reader thread.")
    history_reading = _part("history", "reading", "Peers with a history scan running.")
    MAX_WAITS_PER_PEER = _part("waiters", "max_per_peer", "WAITs one connection may hold.")

"""The broker's decisions, with no sockets in them.

``handle(identity, frames)`` and ``tick()`` change the in-memory state and record
what must be written (``batch``) and what must be sent (``outbox``). The shell in
``server.py`` commits the batch in one synced transaction and only then sends the
outbox: nothing leaves the broker before the state that explains it is durable.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

from shoal import jobs as J
from shoal import protocol as P
from shoal.conf.settings import GroupSettings, Settings
from shoal.errors import ProtocolError
from shoal.ids import id_to_str

from .queues import ReadyQueue, Schedule
from .quiet import QuietLog, Strikes
from .roles import Principal, refusal
from .batch import Batch
from .contract import CoreStore
from .supervisor import Demand, Supervisor
from .workers import WorkerInfo, WorkerRegistry

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


class BrokerCore:
    """All broker state and the rules that change it (message handlers are in mixins)."""

    def __init__(self, store: CoreStore, settings: Settings, clock: Clock | None = None) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock or Clock()
        self.max_message_bytes = settings.broker.max_message_bytes
        self.heartbeat_s = settings.broker.heartbeat_interval_s
        self.jobs: dict[bytes, J.Job] = {}            # active jobs only
        self.active: dict[str, int] = {}              # active jobs per group, kept as they come and go
        self.ready: dict[str, ReadyQueue] = {}
        self.schedule = Schedule()
        self.unrouted: dict[str, list[bytes]] = {}    # workflow -> job ids
        self.workers = WorkerRegistry()
        self.routes: dict[str, dict[str, Any]] = {}
        self.orphans: dict[bytes, float] = {}         # running at start, no worker yet -> deadline
        self.waiters: dict[bytes, dict[tuple[bytes, int], None]] = {}
        self.waits_of: dict[bytes, int] = {}          # peer -> WAITs it has outstanding (capped)
        self.replies_dropped = 0                      # to peers that stopped reading or left
        self.dead: dict[str, set[bytes]] = {}
        self.fanin: dict[bytes, set[bytes]] = {}     # suspended parent -> children not final yet
        self.keys: dict[str, tuple[bytes, int]] = {}  # dedup key -> (job id, taken until ms; 0 = while active)
        self.events: list[dict[str, Any]] = []       # lifecycle events, published after the commit
        self.events_dropped = 0
        self.events_endpoint = ""
        self.events_wanted = False                   # any subscriber on the events socket
        self.buckets: dict[str, list[float]] = {}     # rate-limited group -> [tokens, last refill (mono)]
        self._rate_wait_s: float | None = None
        self.counters: dict[str, dict[str, int]] = {}
        self.known_groups: set[str] = set(settings.groups)
        self._group_settings: dict[str, GroupSettings] = {}
        self.storage_used = 0
        self.storage_room = 1 << 62  # until the first measurement (load() takes one)
        self.storage_full = False
        self.supervisor: Supervisor | None = None   # set by the server when it starts workers
        self.batch = Batch()
        self.outbox: list[Outgoing] = []
        self._seq = 0
        self._last_heartbeat = 0.0
        self._next_expiry = 0.0
        self.superseded: dict[bytes, tuple[WorkerInfo, float]] = {}  # old connection of a reconnected worker
        self.asked_hello: dict[bytes, float] = {}    # unknown peer -> when it was last sent RECONNECT (mono)
        self.quiet = QuietLog(log)
        self.strikes = Strikes()
        self._handlers: dict[bytes, Callable[[bytes, dict[str, Any]], None]] = self.handlers()

    def handlers(self) -> dict[bytes, Callable[[bytes, dict[str, Any]], None]]:
        """Command -> method; the mixins add theirs."""
        return {}

    # --- start -----------------------------------------------------------------
    def load(self) -> None:
        """Rebuild the in-memory indexes from storage after a (re)start."""
        self._seq = self.store.next_seq
        self.routes = self.store.routes()
        self.counters = self.store.counters()
        self.known_groups.update(self.counters)
        orphan_deadline = self.clock.mono() + max(g.lease_s for g in [self.settings.defaults, *self.settings.groups.values()])
        for record in self.store.iter_jobs():
            job = J.Job.from_record(record)
            self._seq = max(self._seq, job.seq + 1)
            if job.state == J.DEAD:
                self.dead.setdefault(job.group, set()).add(job.id)
            if job.key:
                self._hold_key(job)
            if job.state not in J.ACTIVE_STATES:
                continue
            self.jobs[job.id] = job
            self.active[job.group] = self.active.get(job.group, 0) + 1
            if job.group:
                self.known_groups.add(job.group)
            if job.state == J.PENDING:
                self._queue(job)
            elif job.state == J.SCHEDULED:
                self.schedule_at(job, job.due_ms)
            else:  # running when we stopped: its worker may come back and finish it
                self.orphans[job.id] = orphan_deadline
        log.info("loaded %d active jobs (%d running from before the restart)", len(self.jobs), len(self.orphans))
        self._check_storage()  # a broker started on a full disk refuses enqueues from the first one

    # --- helpers ---------------------------------------------------------------
    def group_settings(self, group: str) -> GroupSettings:
        """A group's effective settings (cached: unnamed groups are built on each Settings.group call)."""
        found = self._group_settings.get(group)
        if found is None:
            found = self._group_settings[group] = self.settings.group(group)
        return found

    def _save(self, job: J.Job, op: str, changes: dict[str, Any]) -> None:
        self.batch.jobs[job.id] = job.to_record()
        self.batch.log.append((op, job.id, changes))

    def _emit(self, event: str, job: J.Job, **extra: Any) -> None:
        """A lifecycle event: published on the events socket after the commit, and logged."""
        if not self.events_wanted and not log.isEnabledFor(logging.DEBUG):
            return  # nobody listens: skip the work on the hot path
        record = {"event": event, "id": job.id, "workflow": job.workflow, "group": job.group,
                  "attempt": job.attempts, "ts_ms": self.clock.wall_ms(), **extra}
        if self.events_wanted:
            self.events.append(record)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", event, id_to_str(job.id), extra={
                "job": id_to_str(job.id), "workflow": job.workflow, "group": job.group,
                "attempt": job.attempts, **{k: v for k, v in extra.items() if k != "id"}})

    def _hold_key(self, job: J.Job) -> None:
        """Keep a dedup key taken while its job is active (and for key_ttl after)."""
        assert job.key is not None
        held = self.keys.get(job.key)
        if job.state in J.ACTIVE_STATES:
            self.keys[job.key] = (job.id, 0)
        elif held is not None and held[1] == 0 and held[0] != job.id:
            return  # an active job holds the key (read at start in any order): a finished one never takes it
        elif job.key_ttl_ms and job.finished_ms + job.key_ttl_ms > self.clock.wall_ms():
            self.keys[job.key] = (job.id, job.finished_ms + job.key_ttl_ms)
        elif self.keys.get(job.key, (b"",))[0] == job.id:
            del self.keys[job.key]

    def key_holder(self, key: str) -> bytes | None:
        """The job that holds a dedup key now, or None when the key is free."""
        held = self.keys.get(key)
        if held is None:
            return None
        job_id, until_ms = held
        if until_ms and until_ms <= self.clock.wall_ms():
            del self.keys[key]
            return None
        return job_id

    def schedule_at(self, job: J.Job, due_ms: int) -> None:
        """Wake ``job`` at the stored wall time ``due_ms``, kept as a monotonic deadline from now on."""
        self.schedule.add(job.id, self.clock.mono() + (due_ms - self.clock.wall_ms()) / 1000)

    def _count(self, group: str, name: str, n: int = 1) -> None:
        counts = self.counters.setdefault(group, {})
        counts[name] = counts.get(name, 0) + n
        self.batch.counters[group] = counts

    def _queue(self, job: J.Job, front: bool = False) -> None:
        if not job.group:
            self.unrouted.setdefault(job.workflow, []).append(job.id)
            return
        queue = self.ready.get(job.group)
        if queue is None:
            queue = self.ready[job.group] = ReadyQueue()
        if front:
            queue.push_front(job.id, job.priority)
        else:
            queue.push(job.id, job.seq, job.priority)

    def reply(self, identity: bytes, rid: Any, **body: Any) -> None:
        body["rid"] = rid
        self.outbox.append(Outgoing(identity, P.encode(P.REPLY, body)))

    def error(self, identity: bytes, rid: Any, code: str, message: str, size: int | None = None) -> None:
        body: dict[str, Any] = {"rid": rid, "code": code, "message": message}
        if size is not None:
            body["size"] = size
        self.outbox.append(Outgoing(identity, P.encode(P.ERROR, body)))

    def max_retries(self, job: J.Job) -> int:
        if job.max_retries is not None:
            return job.max_retries
        route = self.routes.get(job.workflow)
        if route is not None and route.get("retries") is not None:
            return int(route["retries"])
        return int(self.group_settings(job.group).retries)

    def take(self) -> tuple[Batch, list[Outgoing]]:
        """What this pass decided: the writes, then the messages."""
        batch, outbox = self.batch, self.outbox
        self.batch, self.outbox = Batch(), []
        return batch, outbox

    # --- entry points ----------------------------------------------------------
    def handle(self, identity: bytes, frames: list[bytes], principal: Principal | None = None) -> None:
        """Act on one message from a client or worker. A bad one gets an error reply, and so
        does one its sender's key may not send (``principal`` is None with security off)."""
        if self.strikes.quarantined and self.strikes.blocked(identity, self.clock.mono()):
            return  # a peer that floods the broker with bad frames is not read for a while
        rid = None
        decoded = False
        try:
            command, body = P.decode(frames, self.max_message_bytes)
            decoded = True
            rid = body.get("rid")
            handler = self._handlers.get(command)
            if handler is None:
                raise ProtocolError(f"{command.decode()} is not a command the broker accepts", command)
            why = refusal(principal, command, body)
            if why is not None:
                self._forbid(identity, rid, principal, why)
                return
            handler(identity, body)
        except ProtocolError as exc:
            # a well-formed message whose content a handler refused is a bad request
            code = getattr(exc, "code", P.E_BAD_REQUEST if decoded else P.E_PROTOCOL)
            self.quiet.warning("bad messages", "bad message from %s: %s", identity.hex(), exc.reason)
            self.error(identity, rid, code, exc.reason, size=getattr(exc, "size", None))
            if self.strikes.strike(identity, self.clock.mono()):
                log.warning("peer %s sent over %d bad messages in %.0f s: its messages are dropped unread for "
                            "%.0f s", identity.hex(), self.strikes.limit, self.strikes.window_s,
                            self.strikes.quarantine_s)
        except Exception:  # a bug of ours must not take the broker down for everyone
            log.exception("internal error handling a message from %s", identity.hex())
            self.error(identity, rid, P.E_INTERNAL, "internal broker error (logged); the request was not applied")

    def _forbid(self, identity: bytes, rid: Any, principal: Principal | None, why: str) -> None:
        """Refuse a command the sender's key may not send: a clear error to it, a line naming the key."""
        name = principal.name if principal is not None else "?"
        self.quiet.warning(f"forbidden {name}", "refused %s: %s", identity.hex(), why)
        self.error(identity, rid, P.E_FORBIDDEN, why)
        self.strikes.strike(identity, self.clock.mono())

    def forgive_stall(self, gap_s: float) -> None:
        """The loop itself stood still ``gap_s`` seconds (SIGSTOP, a swapped-out VM; the shell
        measures it): nobody could be heard meanwhile, so workers get a fresh lease and
        orphans their time back, instead of being declared lost before their first message
        since is read."""
        now = self.clock.mono()
        log.warning("the broker stood still for %.1f s; workers and orphaned jobs keep their leases", gap_s)
        for worker in self.workers:
            worker.last_seen = max(worker.last_seen, now)
        for job_id in self.orphans:
            self.orphans[job_id] += gap_s
        for identity, (old, deadline) in self.superseded.items():
            self.superseded[identity] = (old, deadline + gap_s)

    def tick(self) -> None:
        """Timers: due jobs, silent workers, orphaned leases, expiry, heartbeats; then dispatch."""
        now = self.clock.mono()
        wall = self.clock.wall_ms()
        for job_id in self.schedule.pop_due(now):
            job = self.jobs[job_id]
            job.move("due")
            if job.waiting_on:  # step.wait timed out: the run resumes and sees the deadline passed
                self.fanin.pop(job_id, None)
                job.waiting_on = job.wait_step = None
            self._save(job, "due", {"state": job.state, "waiting_on": None, "wait_step": None})
            self._queue(job)
        for worker in self.workers.silent_since(lambda w: now - w.lease_s):
            log.warning("worker %s (%s) went silent; releasing %d leases", worker.name, worker.group, len(worker.leases))
            self._drop_worker(worker.identity, J.KIND_WORKER_LOST)
        if self.superseded:
            self.hand_back_superseded(now)
        for job_id, deadline in list(self.orphans.items()):
            if deadline <= now:
                del self.orphans[job_id]
                self._release(self.jobs[job_id], charge=False, why="orphan")
        if now >= self._next_expiry:
            self._next_expiry = now + 1.0
            self._expire(wall)
            self._check_storage()
        if now - self._last_heartbeat >= self.heartbeat_s:
            self._last_heartbeat = now
            frames = P.encode(P.HEARTBEAT, {})
            for worker in self.workers:
                self.outbox.append(Outgoing(worker.identity, frames))
        self.dispatch()
        if self.supervisor is not None:
            self.supervisor.tick({g: self.demand(g) for g in self.supervisor.groups}, now)

    def demand(self, group: str) -> Demand:
        """Pending, running and connected capacity of one group (for scaling decisions)."""
        members = self.workers.in_group(group)
        queue = self.ready.get(group)
        return Demand(pending=len(queue) if queue else 0, running=sum(len(w.leases) for w in members),
                      slots=sum(w.slots for w in members), connected_pids=frozenset(w.pid for w in members))

    def next_wakeup_s(self) -> float:
        """How long the loop may sleep: the next heartbeat or the next due job."""
        wait = self.heartbeat_s - (self.clock.mono() - self._last_heartbeat)
        due = self.schedule.next_deadline()
        if due is not None:
            wait = min(wait, due - self.clock.mono())
        if self._rate_wait_s is not None:
            wait = min(wait, self._rate_wait_s)
        return float(max(0.0, wait))

    def undeliverable(self, out: Outgoing, not_reading: bool = False) -> None:
        """A send failed: the peer is gone, or (``not_reading``) its queue is at the high-water mark.

        A worker's undelivered dispatches are undone without an attempt charged. Its last
        messages (DONE, RETURN, BYE) may still be waiting in our socket, so it is not dropped
        now: it gets no more jobs and is declared lost within a second unless those messages
        settle its leases first (a worker that stopped reading is as good as gone). A client's
        reply is dropped and counted, and its WAITs are forgotten: nobody reads their answers.
        """
        worker = self.workers.get(out.identity)
        if worker is None:
            self.replies_dropped += 1
            dropped = self.forget_waits(out.identity)
            if not_reading:
                self.quiet.warning("peers not reading", "peer %s does not read its replies (%d queued, the most "
                                   "kept per peer): replies to it are dropped, %d of its WAITs forgotten",
                                   out.identity.hex(), self.send_hwm, dropped)
            return
        for job_id in out.job_ids:  # never reached the worker: no attempt spent
            if worker.leases.pop(job_id, None) is not None:
                self._release(self.jobs[job_id], charge=False, why="undeliverable")
        worker.slots = 0
        worker.last_seen = min(worker.last_seen, self.clock.mono() - worker.lease_s + 1.0)
        if not_reading:
            self.quiet.warning("workers not reading", "worker %s does not read what the broker sends; "
                               "it is treated as gone", worker.name)

    send_hwm = 10_000  # messages queued per peer before sends to it fail (set by the server)

    # --- dispatch ----------------------------------------------------------------
    def _tokens(self, key: str, rate: float) -> float:
        """Refill and return the token bucket ``key`` (a group or a workflow) at ``rate`` per second."""
        now = self.clock.mono()
        capacity = max(1.0, rate / 10)  # bursts of at most a tenth of a second's worth
        bucket = self.buckets.setdefault(key, [capacity, now])
        bucket[0] = min(capacity, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if bucket[0] < 1:
            wait = (1 - bucket[0]) / rate
            self._rate_wait_s = wait if self._rate_wait_s is None else min(self._rate_wait_s, wait)
        return bucket[0]

    def _rate_allowance(self, group: str) -> int | None:
        """How many jobs the group's global rate limit lets out now (None: no limit)."""
        rate = self.group_settings(group).rate_per_s
        return int(self._tokens("group:" + group, rate)) if rate else None

    def _workflow_allows(self, workflow: str) -> bool:
        """Take a token for one job of ``workflow`` if ``[rates]`` limits it; False when none is left."""
        rate = self.settings.rates.get(workflow)
        if not rate:
            return True
        if self._tokens("workflow:" + workflow, rate) < 1:
            return False
        self.buckets["workflow:" + workflow][0] -= 1
        return True

    MAX_HELD_PER_PASS = 1000

    def dispatch(self) -> None:
        """Send ready jobs to workers of their group, never beyond a worker's credit or a global rate.

        A job whose workflow is out of tokens is set aside for this pass (and put back in its
        place), so a rate-limited workflow never holds up the other workflows of its group.
        """
        self._rate_wait_s = None
        for group, queue in self.ready.items():
            if not queue:
                continue
            allowance = self._rate_allowance(group)
            held: list[J.Job] = []
            for worker in self.workers.rotation(group):
                credit = worker.credit if allowance is None else min(worker.credit, allowance)
                batch: list[dict[str, Any]] = []
                while len(batch) < credit:
                    job_id = queue.pop()
                    if job_id is None:
                        break
                    job = self.jobs[job_id]
                    if not self._workflow_allows(job.workflow):
                        held.append(job)
                        if len(held) >= self.MAX_HELD_PER_PASS:
                            break  # bound the scan of a long rate-limited backlog
                        continue
                    batch.append(self._lease(job, worker))
                if batch:
                    ids = tuple(item["id"] for item in batch)
                    self.outbox.append(Outgoing(worker.identity, P.encode(P.JOB, {"jobs": batch}), ids))
                    if allowance is not None:
                        allowance -= len(batch)
                        self.buckets["group:" + group][0] -= len(batch)
                if not queue:
                    break
            for job in held:
                queue.push(job.id, job.seq, job.priority)

    def _lease(self, job: J.Job, worker: WorkerInfo) -> dict[str, Any]:
        job.move("dispatch")
        job.attempts += 1
        job.token = random.getrandbits(62)
        job.worker = worker.name
        job.started_ms = self.clock.wall_ms()
        worker.leases[job.id] = job.token
        self._emit("started", job, worker=worker.name)
        self._save(job, "dispatch", {"state": job.state, "attempts": job.attempts, "token": job.token,
                                     "worker": job.worker, "started_ms": job.started_ms})
        item = {"id": job.id, "token": job.token, "wf": job.workflow, "payload": job.payload,
                "attempt": job.attempts, "max_retries": self.max_retries(job)}
        if job.steps:
            item["steps"] = self.steps_for(job.id)
        return item

    def steps_for(self, job_id: bytes) -> dict[str, dict[str, Any]]:
        """Stored step results of a job (see step_commands)."""
        return {}

    def _current(self, identity: bytes, job_id: bytes, token: int) -> J.Job | None:
        """The job if an outcome is for its live lease (see worker_commands)."""
        raise NotImplementedError

    def _settle(self, identity: bytes, job: J.Job) -> None:
        """The sender's lease on ``job`` is over (see worker_commands)."""
        raise NotImplementedError

    def hand_back_superseded(self, now: float) -> None:
        """Requeue what reconnected workers' old connections still hold (see worker_commands)."""
        raise NotImplementedError

    def cancel_running_done(self, job: J.Job) -> None:
        """A running job whose cancel was asked has stopped (see control_commands)."""
        raise NotImplementedError

    def _child_final(self, child: J.Job) -> None:
        """A child job reached a final state (fan-in, see step_commands)."""

    def _release(self, job: J.Job, charge: bool, why: str) -> None:
        """A running job lost its worker: back to the front, or dead when its attempts are spent."""
        self.orphans.pop(job.id, None)
        if job.cancel_requested:  # it was being cancelled: losing its worker ends it
            self.cancel_running_done(job)
            return
        if not charge:
            job.attempts = max(0, job.attempts - 1)
        if charge and job.attempts > self.max_retries(job):
            self._finish_failed(job, "bury", J.KIND_WORKER_LOST,
                                f"the worker running it was lost ({why}) on each of {job.attempts} attempts", None)
            return
        job.move("release")
        job.token = 0
        self._save(job, "release", {"state": job.state, "attempts": job.attempts, "token": 0, "why": why})
        self._queue(job, front=True)

    def _drop_worker(self, identity: bytes, why: str) -> None:
        worker = self.workers.remove(identity)
        if worker is None:
            return
        for job_id in list(worker.leases):
            job = self.jobs.get(job_id)
            if job is not None and job.state == J.RUNNING and job.token == worker.leases[job_id]:
                self._release(job, charge=True, why=why)
        worker.leases.clear()

    # --- finishing --------------------------------------------------------------
    def _finish(self, job: J.Job, op: str, changes: dict[str, Any]) -> None:
        """Log the final transition and move the job out of memory; its record stays in
        storage until it expires (dead letters stay until requeued)."""
        if self.jobs.pop(job.id, None) is not None:
            self.active[job.group] = self.active.get(job.group, 0) - 1
        self.orphans.pop(job.id, None)
        if job.state != J.DEAD:
            job.expire_ms = job.finished_ms + int(self.group_settings(job.group).retention_s * 1000)
            self.batch.expiry_add.append((job.expire_ms, job.id))
            changes["expire_ms"] = job.expire_ms
        self.batch.jobs[job.id] = job.to_record()
        self.batch.log.append((op, job.id, changes))
        if job.key:
            self._hold_key(job)
        if job.state == J.COMPLETED:
            self._emit("completed", job, duration_ms=max(0, job.finished_ms - job.started_ms))
        elif job.state == J.CANCELLED:
            self._emit("cancelled", job)
        else:
            self._emit("dead_letter", job, error=job.error, error_kind=job.error_kind)
        if job.parent is not None:
            self._child_final(job)
        waiting = self.waiters.pop(job.id, None)
        if waiting:
            view = J.public_view(job.to_record())
            for identity, rid in waiting:
                self._waits_done(identity)
                self.outbox.append(Outgoing(identity, P.encode(P.REPLY, {"job": view, "rid": rid}), wait_for=job.id))

    # --- waiters -----------------------------------------------------------------------
    MAX_WAITS_PER_PEER = 10_000

    def add_waiter(self, job_id: bytes, identity: bytes, rid: int) -> bool:
        """Answer ``(identity, rid)`` when the job is final; False when the peer is at its cap.
        Keyed by (identity, rid): a client re-sending its WAIT does not register twice."""
        waiting = self.waiters.setdefault(job_id, {})
        if (identity, rid) in waiting:
            return True
        if self.waits_of.get(identity, 0) >= self.MAX_WAITS_PER_PEER:
            if not waiting:
                del self.waiters[job_id]
            return False
        waiting[(identity, rid)] = None
        self.waits_of[identity] = self.waits_of.get(identity, 0) + 1
        return True

    def _waits_done(self, identity: bytes, n: int = 1) -> None:
        left = self.waits_of.get(identity, 0) - n
        if left > 0:
            self.waits_of[identity] = left
        else:
            self.waits_of.pop(identity, None)

    def forget_waits(self, identity: bytes) -> int:
        """Drop every WAIT of a peer that left or stopped reading; returns how many."""
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

    def _finish_failed(self, job: J.Job, event: str, kind: str, error: str, tb: str | None,
                       failed: bool = False) -> None:
        """Dead-letter a job; ``failed`` when a FAIL caused it (counted for replay's counters)."""
        job.move(event)
        job.finished_ms = self.clock.wall_ms()
        job.error, job.error_kind, job.traceback = error, kind, tb
        self._count(job.group, "dead")
        self.dead.setdefault(job.group, set()).add(job.id)
        log.info("job %s (%s) is dead: %s", id_to_str(job.id), job.workflow, error)
        self._finish(job, "dead", {"state": job.state, "error": error, "error_kind": kind, "traceback": tb,
                                   "finished_ms": job.finished_ms, "attempts": job.attempts, "failed": failed})

    # Near the cap, new work is refused so what is queued can still be dispatched and finish:
    # LMDB copies a page on every change, and a job's record (with its payload) is rewritten
    # at dispatch and at completion, so accepted work needs room beyond its own size.
    STORAGE_HEADROOM = 0.5
    STORAGE_COST = 6  # bytes per payload byte over a job's life: job, log entry, rewrites, fragmentation

    def _check_storage(self) -> None:
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
        need = self.STORAGE_COST * incoming_bytes
        cap = self.settings.broker.max_size_mb * 1024 * 1024
        if cap and self.storage_used + need > cap * self.STORAGE_HEADROOM:
            return (f"storage full: {self.storage_used // 2**20} MiB used of max_size {cap // 2**20} MiB; "
                    f"enqueues are refused until finished jobs expire (retention) or max_size is raised")
        reserve = self.settings.broker.min_free_disk_mb * 1024 * 1024
        if self.storage_room - need < reserve:
            return (f"storage full: the disk under {self.store.path} has {max(0, self.storage_room) // 2**20} MiB "
                    f"of room left (min_free_disk is {reserve // 2**20} MiB); enqueues are refused until space "
                    f"is freed on that disk or finished jobs expire (running jobs still complete)")
        return None

    RESULT_LIMIT = 0.9  # of max_size: a result that would take the store past it is refused

    def result_refusal(self, value_bytes: int) -> str | None:
        """Why a job's result of this many bytes cannot be stored now, or None.

        Enqueues stop at half of max_size (or at min_free_disk) so that what is queued can
        finish; a handler returning big values can still outgrow that room. Past these harder
        limits the result is not stored now (the worker keeps it and sends it again, see
        ``DEFER``) instead of its commit failing, which would throw away the whole pass."""
        need = 3 * value_bytes  # in the record, in the log entry, and page overhead
        cap = self.settings.broker.max_size_mb * 1024 * 1024
        if cap and self.storage_used + need > cap * self.RESULT_LIMIT:
            return (f"storage full: a result of {value_bytes:,} bytes does not fit in what is left of "
                    f"max_size {cap // 2**20} MiB ({self.storage_used // 2**20} MiB used)")
        reserve = self.settings.broker.min_free_disk_mb * 1024 * 1024
        if self.storage_room - need < reserve // 2:
            return (f"storage full: a result of {value_bytes:,} bytes would leave the disk under "
                    f"{self.store.path} below half of min_free_disk ({reserve // 2**20} MiB)")
        self.storage_used += need  # until the next measurement
        self.storage_room -= need
        return None

    def result_never_fits(self, value_bytes: int) -> str | None:
        """Why a result is too big for this broker even with an empty store (a handler's fault,
        not a passing shortage: waiting for room would wait forever), or None."""
        cap = self.settings.broker.max_size_mb * 1024 * 1024
        if cap and 3 * value_bytes > cap * self.RESULT_LIMIT * self.STORAGE_HEADROOM:
            return (f"storage full: a result of {value_bytes:,} bytes can never fit under max_size "
                    f"{cap // 2**20} MiB; return less, or store it elsewhere and return a reference")
        return None

    def storage_refusal(self, incoming_bytes: int) -> str | None:
        """Why an enqueue of about this many bytes is refused for lack of storage, or None."""
        if self.storage_full:
            return self._storage_problem(0) or ("storage full: the last commit failed for lack of space; "
                                                "enqueues are refused until the next measurement finds room")
        return self._storage_problem(incoming_bytes)

    def _expire(self, wall_ms: int) -> None:
        for expire_ms, job_id in self.store.expired(wall_ms):
            self.batch.expiry_del.append((expire_ms, job_id))
            if job_id in self.jobs:  # requeued meanwhile; not ours to drop
                continue
            self.batch.jobs[job_id] = None
            self.batch.drop_steps.append(job_id)
            self.batch.log.append(("expire", job_id, {}))

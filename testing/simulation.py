"""``Simulation``: the real broker core, in process, on a memory store and a virtual clock.

Each message is one pass of the broker as the server runs it: ``handle``, ``tick``, ``take``,
commit the batch, then deliver the outbox (to the simulated client and workers). Retries,
dedup keys, priority, rate limits, leases, fan-in and cron follow the broker's own rules
because they are the broker's own code; only sockets, LMDB, threads and real time are gone.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import random
from collections.abc import Iterable
from datetime import datetime
from types import ModuleType
from typing import Any, Callable, Union

from shoal import protocol as P
from shoal.broker.core import Broker
from shoal.broker.core import Outgoing
from shoal.broker.recovery.history_reader import history_reply  # the same reply the server's reader sends
from shoal.broker.storage.memstore import MemoryStore
from shoal.conf import Settings, load_settings
from shoal.errors import ConfigError
from shoal.workflow import Workflow, import_workflows, select, workflows_in

from .client import CLIENT_IDENTITY, SimClient, user_event
from .clock import VirtualClock
from .workers import CRASH, SILENT, SimWorker

App = Union[ModuleType, Workflow, str, Iterable[Union[ModuleType, Workflow, str]]]
MIN_STEP_S = 0.001      # the smallest move of the clock while running to a deadline
MAX_RUNS_IDLE = 100_000  # runs in one run_until_idle: more means a workflow makes work forever


class Simulation:
    """A broker, one in-process worker per group the workflows name, a client, and virtual time.

    ``Simulation(myapp.workflows, config="shoal.toml")``: apps are modules, module names or
    ``@workflow`` objects. ``config`` is a path (read with ``shoal.conf.load_settings``,
    ignoring the environment), a ``Settings`` object, or None for the built-in defaults.
    ``concurrency`` overrides every group's slots per worker. ``start`` is the virtual wall
    time to begin at (Unix seconds or a datetime; default 2025-01-01T00:00:00Z). ``seed`` seeds
    the broker's random source (lease tokens, retry jitter), so a run repeats exactly.
    """

    def __init__(self, *apps: App, config: str | os.PathLike[str] | Settings | None = None,
                 concurrency: int | None = None, start: float | datetime | None = None,
                 timeout: float = 10.0, seed: int = 0) -> None:
        self._groups = _workflows_by_group(apps)  # first: a bad app fails before anything is opened
        self.settings = _settings(config)
        self.clock = VirtualClock(start)
        self.store = MemoryStore()
        # seeded: lease tokens and retry jitter are the same on every run of a test
        self.broker = Broker(self.store, self.settings, self.clock, random.Random(seed))
        self.broker.events_wanted = True  # the core builds event records only for a listener
        self.broker.load()
        self.events: list[dict[str, Any]] = []
        self.client = SimClient(self, timeout)
        self._loop = asyncio.new_event_loop()  # async handlers run to completion here, one at a time
        self._concurrency = concurrency
        self._pids = itertools.count(1)
        self._workers: dict[str, SimWorker] = {}    # group -> its live worker
        self._by_identity: dict[bytes, SimWorker] = {}
        self._gone: dict[bytes, str] = {}           # identity of a killed worker -> CRASH or SILENT
        for group in self._groups:
            self._join(group)

    # --- the user's handles -------------------------------------------------------------
    @property
    def now(self) -> float:
        """Virtual wall time, Unix seconds."""
        return self.clock.now_s()

    def run_until_idle(self) -> None:
        """Run every job that can run now, and what they make runnable; virtual time does not move."""
        for _ in range(MAX_RUNS_IDLE):
            worker = next((w for w in list(self._workers.values()) if w.queued), None)
            if worker is None:
                return
            if not worker.run_next():
                self._replace(worker)
        raise RuntimeError(f"still busy after {MAX_RUNS_IDLE} runs without time moving: "
                           "does a workflow enqueue work forever?")

    def advance(self, seconds: float) -> None:
        """Move virtual time ``seconds`` on, stopping at every deadline on the way (due jobs,
        backoff, durable sleeps, leases, cron ticks, rate limits) and running what comes due.
        Never sleeps."""
        if seconds < 0:
            raise ValueError(f"time only moves forward; cannot advance by {seconds}")
        self.run_until(lambda: False, seconds)

    def kill_worker(self, group: str, *, silent: bool = False) -> None:
        """The group's worker dies mid-job: the job it is running (called from inside a handler),
        or else the next one it starts. Its process vanishes without a word; a fresh worker joins.

        As on a real broker, the attempt is charged: a dead process's connection is closed, so
        the broker's next send to it fails and it is declared lost about a second later;
        ``silent=True`` is a hung host instead, found only when its lease (the group's
        ``lease``) runs out."""
        worker = self._workers.get(group)
        if worker is None:
            known = ", ".join(sorted(self._workers)) or "none"
            raise ValueError(f"no worker of group {group!r} in this simulation (groups: {known})")
        worker.doomed = SILENT if silent else CRASH

    def close(self) -> None:
        """Release the event loop (``with Simulation(...)`` does this)."""
        if not self._loop.is_closed():
            self._loop.close()
        self.client.close()

    def __enter__(self) -> "Simulation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- passes -----------------------------------------------------------------------------
    def send(self, identity: bytes, frames: list[bytes]) -> None:
        """One message from a simulated peer, as one pass of the broker's loop."""
        self.broker.handle(identity, frames)
        self._finish_pass()

    def run_until(self, done: Callable[[], bool], seconds: float) -> bool:
        """Run jobs and move time (deadline by deadline, up to ``seconds``) until ``done()``."""
        deadline = self.clock.mono() + seconds
        while True:
            self.run_until_idle()
            if done():
                return True
            if self.clock.mono() >= deadline:
                return False
            self.clock.advance_to(self._next_moment(deadline))
            for worker in list(self._workers.values()):  # alive workers heartbeat as time passes
                self.broker.handle(worker.identity, P.encode(P.HEARTBEAT, {}))
            self._finish_pass()

    def _next_moment(self, limit: float) -> float:
        """The next monotonic time something can happen, at most ``limit``.

        Jumping straight there is what keeps a day of virtual time cheap: live workers
        heartbeat on every move, so between deadlines there is nothing to see. Ready jobs a
        worker could take (held back by a rate limit) and a crashed worker the broker has
        yet to notice need the broker's own pace (its heartbeat interval at most)."""
        broker, now = self.broker, self.clock.mono()
        soonest = now + max(MIN_STEP_S, broker.next_wakeup_s())
        if self._needs_broker_pace():
            return min(limit, soonest)
        moments = [limit, *broker.orphans.values(), *(until for _, until in broker.superseded.values())]
        due = broker.schedule.next_deadline()
        if due is not None:
            moments.append(due)
        cron_s = broker.cron_wait_s(self.clock.wall_ms())
        if cron_s is not None:
            moments.append(now + cron_s)
        # a worker that stopped heartbeating is declared silent just after its lease
        moments.extend(w.last_seen + w.lease_s + MIN_STEP_S for w in broker.workers
                       if w.identity not in self._by_identity)
        return max(now + MIN_STEP_S, min(moments))

    def _needs_broker_pace(self) -> bool:
        broker = self.broker
        if any(self._gone.get(w.identity) == CRASH for w in broker.workers):
            return True  # found out by the broker's next send to it (its heartbeat)
        return any(len(queue) and any(w.credit > 0 for w in broker.workers.in_group(group))
                   for group, queue in broker.ready.items())

    def _finish_pass(self) -> None:
        broker = self.broker
        broker.tick()
        batch, outbox = broker.take()
        self.store.commit(batch, self.clock.wall_ms())
        self.events.extend(user_event(e) for e in broker.events)
        broker.events = []
        outbox.extend(self._histories())
        for out in outbox:
            self._deliver(out)

    def _histories(self) -> list[Outgoing]:
        """HISTORY requests of this pass, answered after its commit (the server's reader does the same)."""
        wanted, self.broker.history_wanted = self.broker.history_wanted, []
        answers = []
        for identity, rid, job_id in wanted:
            entries = [(seq, entry) for seq, entry in self.store.iter_log() if entry[2] == job_id]
            answers.append(Outgoing(identity, history_reply(rid, job_id, entries, 0)))
        return answers

    def _deliver(self, out: Outgoing) -> None:
        worker = self._by_identity.get(out.identity)
        if out.identity == CLIENT_IDENTITY:
            command, body = P.decode(out.frames)
            self.client.deliver(command, body)
        elif worker is not None:
            command, body = P.decode(out.frames)
            worker.receive(command, body)
        elif self._gone.get(out.identity) == CRASH:
            self.broker.undeliverable(out)  # what the server does when ROUTER cannot reach a peer
        # a SILENT worker's messages vanish; nobody else is ever sent anything

    # --- workers ----------------------------------------------------------------------------
    def _join(self, group: str) -> None:
        slots = self._concurrency or self.settings.group(group).concurrency
        worker = SimWorker(self, group, self._groups[group], slots, next(self._pids), self.clock, self._loop,
                           self.settings.broker.max_step_bytes)
        self._workers[group] = worker
        self._by_identity[worker.identity] = worker
        worker.hello()

    def _replace(self, dead: SimWorker) -> None:
        """A worker died: it is gone without a word, and a fresh process of its group joins."""
        self._gone[dead.identity] = dead.doomed
        self._by_identity.pop(dead.identity, None)
        if self._workers.get(dead.group) is dead:
            self._join(dead.group)


def _settings(config: str | os.PathLike[str] | Settings | None) -> Settings:
    if isinstance(config, Settings):
        return config
    if config is None:
        return Settings()
    return load_settings(os.fspath(config), env={})  # the test's file alone, whatever the environment says


def _workflows_by_group(apps: tuple[App, ...]) -> dict[str, dict[str, Workflow]]:
    found: list[tuple[str, Workflow]] = []
    for app in _flatten(apps):
        if isinstance(app, Workflow):
            found.append(("the given workflows", app))
        elif isinstance(app, ModuleType):
            found.extend((app.__name__, wf) for wf in workflows_in(app))
        elif isinstance(app, str):
            found.extend(import_workflows([app]))
        else:
            raise TypeError(f"Simulation takes modules, module names or @workflow objects, not {type(app).__name__}")
    if not found:
        raise ConfigError("Simulation found no @workflow in what it was given")
    groups = sorted({wf.group for _, wf in found})
    return {group: select(found, group) for group in groups}


def _flatten(apps: Iterable[Any]) -> Iterable[Any]:
    for app in apps:
        if isinstance(app, (list, tuple, set, frozenset)):
            yield from _flatten(app)
        else:
            yield app

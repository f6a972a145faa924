"""In-process workers: they speak the worker protocol to the broker core and run the user's
handlers on the calling thread, one job at a time, with the real ``Step`` and ``AsyncStep``.

A worker's DEALER socket is replaced by a ``Wire``: every message it sends is one pass of
the broker (handled, ticked, committed, delivered), so a ``step.run`` result is committed
before the handler goes on, exactly as on a real worker, and no thread is ever needed.
"""
from __future__ import annotations

import asyncio
import itertools
from collections import deque
from concurrent.futures import Future
from typing import Any, Protocol

from shoal import protocol as P
from shoal.errors import RemoteError
from shoal.workflow import Workflow
from shoal.worker.outbox import encode_outcomes
from shoal.worker.runner import Outcome, run_async, run_sync, unknown_workflow
from shoal.worker.steps import AsyncStep, Step, StepClock

CRASH = "crash"    # the process died: its connection closed, so the broker's sends to it fail
SILENT = "silent"  # the host hung or the network split: nothing arrives, the lease runs out


class Wire(Protocol):
    """How a simulated worker reaches the broker: one pass per message."""

    def send(self, identity: bytes, frames: list[bytes]) -> None: ...


class WorkerDied(BaseException):
    """Raised inside a handler whose worker was killed: the run stops and reports nothing."""


class SimWorker:
    """One worker process of a group, simulated."""

    def __init__(self, wire: Wire, group: str, workflows: dict[str, Workflow], slots: int, pid: int,
                 clock: StepClock, loop: asyncio.AbstractEventLoop, max_step_bytes: int) -> None:
        self.wire, self.group, self.workflows, self.slots, self.pid = wire, group, workflows, slots, pid
        self.identity = f"sim-{group}-{pid}".encode()
        self.name = f"simulation:{pid}"
        self.clock, self.loop, self.max_step_bytes = clock, loop, max_step_bytes
        self.queued: deque[dict[str, Any]] = deque()  # jobs received, not started yet (leased all the same)
        self.cancelled: set[bytes] = set()            # CANCELs for jobs not started yet
        self.running: Step | None = None
        self.doomed = ""                               # CRASH or SILENT once kill_worker named this worker
        self.alive = True
        self._rids = itertools.count(1)
        self._calls: dict[int, Future[dict[str, Any]]] = {}

    # --- what the broker sends --------------------------------------------------------
    def receive(self, command: bytes, body: dict[str, Any]) -> None:
        """One message from the broker (delivered after the commit of the pass that made it)."""
        if command == P.JOB:
            self.queued.extend(body["jobs"])
        elif command == P.CANCEL:
            self._on_cancel(body["id"])
        elif command in (P.REPLY, P.ERROR) and body.get("rid") in self._calls:
            fut = self._calls.pop(body["rid"])
            if command == P.REPLY:
                fut.set_result(body)
            else:
                fut.set_exception(RemoteError(str(body.get("code")), str(body.get("message"))))
        elif command == P.RECONNECT:
            self.hello()
        # HEARTBEAT needs no answer (we heartbeat as time moves); DEFER cannot happen on an uncapped store

    def _on_cancel(self, job_id: bytes) -> None:
        if self.running is not None and self.running.job_id == job_id:
            self.running.cancel()
        else:
            self.cancelled.add(job_id)

    # --- what it sends ------------------------------------------------------------------
    def hello(self) -> None:
        """Join the group, as a real worker does on start."""
        self.wire.send(self.identity, P.encode(P.HELLO, {
            "group": self.group, "pid": self.pid, "host": "simulation", "server": "", "slots": self.slots,
            "workflows": {name: {"retries": wf.retries} for name, wf in self.workflows.items()}, "running": []}))

    def heartbeat(self) -> None:
        """Keep the leases alive while virtual time moves (a real worker's I/O thread does this)."""
        self.wire.send(self.identity, P.encode(P.HEARTBEAT, {}))

    def call(self, command: bytes, body: dict[str, Any]) -> Future[dict[str, Any]]:
        """The step channel: send now; the broker's pass answers before this returns."""
        if self.doomed:
            raise WorkerDied(self.name)
        rid = next(self._rids)
        fut: Future[dict[str, Any]] = Future()
        self._calls[rid] = fut
        self.wire.send(self.identity, P.encode(command, {**body, "rid": rid}))
        if not fut.done():  # the broker answers every STEP in its pass; never leave a step hanging
            self._calls.pop(rid, None)
            fut.set_exception(RemoteError(P.E_INTERNAL, "the simulated broker did not answer this step"))
        return fut

    # --- running ------------------------------------------------------------------------
    def run_next(self) -> bool:
        """Run the oldest received job to its end and report it; False once this worker died."""
        job = self.queued.popleft()
        if self.doomed:
            self.alive = False  # died as the job started: nothing ran, nothing is reported
            return False
        try:
            outcome = self._run(job)
        except WorkerDied:
            outcome = None
        if self.doomed or outcome is None:
            self.alive = False  # died mid-run (killed from inside the handler): the outcome is lost
            return False
        for frames in encode_outcomes([outcome]):
            self.wire.send(self.identity, frames)
        return True

    def _run(self, job: dict[str, Any]) -> Outcome:
        wf = self.workflows.get(job["wf"])
        if wf is None:
            return unknown_workflow(job, self.group, self.workflows)
        step_class = AsyncStep if wf.is_async else Step
        step = step_class(job, self.group, self, self.max_step_bytes, clock=self.clock)
        if job["id"] in self.cancelled:
            self.cancelled.discard(job["id"])
            step.cancel()
        self.running = step
        try:
            if wf.is_async:  # timeouts are not simulated: virtual time stands still during a run
                return self.loop.run_until_complete(run_async(wf, job, step, 0.0))
            return run_sync(wf, job, step)
        finally:
            self.running = None

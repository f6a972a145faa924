"""Runs handlers: sync ones in a thread pool, ``async def`` ones on one asyncio loop.

It knows nothing of sockets, heartbeats or the broker: it takes a job, runs it and
hands an ``Outcome`` to a callback.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
import traceback
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, replace
from typing import Any, Callable

from shoal import jobs as J
from shoal.errors import Permanent
from shoal.protocol import pack, unpack
from shoal.workflow import Workflow

from .steps import AsyncStep, Cancelled, Channel, LeaseLost, Step, Suspend

KIND_SUSPEND = "suspend"        # not a failure: the run gave its slot back (sleep / wait)
KIND_LEASE_LOST = "lease_lost"  # the job was redelivered elsewhere: report nothing
KIND_CANCELLED = "cancelled"    # stopped because the job was cancelled
# A sync handler asked to stop (cancel or timeout) gets this long to notice step.cancelled or
# to return from what it is waiting on. Long enough for a loop that checks once a second or a
# network call with a sane timeout; short enough that a wedged thread does not hold its slot
# (and the job) for long. Past it the run is reported and the worker replaces itself.
STUCK_GRACE_S = 5.0
NO_DEADLINE = float("inf")


@dataclass(slots=True)
class Outcome:
    """How one run ended: ``value`` (msgpack bytes) when ok, else a failure kind.

    Treated as immutable (``dataclasses.replace`` makes a changed copy), though not frozen:
    a frozen dataclass's ``__init__`` costs ~4.5 us against ~1 us, once for every job."""

    job_id: bytes
    token: int
    ok: bool
    value: bytes = b""
    kind: str = ""
    error: str = ""
    traceback: str | None = None
    duration_ms: int = 0
    suspend: Suspend | None = None
    workflow: str = ""


@dataclass(slots=True)
class _Run:
    """One job being run: its step, its future, and whether it was asked to stop."""

    step: Step
    future: "Future[Any] | None"     # an async run's; a sync one runs on the runner's threads
    is_async: bool
    token: int
    deadline: float = NO_DEADLINE    # monotonic; sync runs are asked to stop here
    timeout_s: float = 0.0
    stop_kind: str = ""              # KIND_TIMEOUT or KIND_CANCELLED once asked to stop
    stop_at: float = NO_DEADLINE
    # a sync run's work, for the thread that takes it from the queue: the job, its workflow,
    # and where its outcome goes
    job: dict[str, Any] | None = None
    wf: Workflow | None = None
    done: Callable[[Outcome], None] | None = None


class Runner:
    """Executes jobs of one group's workflows, ``concurrency`` at a time."""

    def __init__(self, workflows: dict[str, Workflow], group: str, concurrency: int,
                 channel: Channel | None = None, max_step_bytes: int = 1024 * 1024,
                 timeout_s: float = 0.0, stuck_grace_s: float = STUCK_GRACE_S) -> None:
        self.workflows = workflows
        self.timeout_s = timeout_s          # the group's `timeout` (0 = none); a workflow's own beats it
        self.stuck_grace_s = stuck_grace_s
        self.channel = channel
        self.max_step_bytes = max_step_bytes
        self.group = group
        self.concurrency = concurrency
        # Sync runs go to threads of our own through one queue: a ThreadPoolExecutor costs a
        # Future (a Condition and its Lock), a work item and a done-callback per job.
        self._work: "queue.SimpleQueue[_Run | None]" = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._busy = 0                      # sync runs queued or on a thread (given-up ones too)
        self._running: dict[bytes, _Run] = {}
        self._running_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        if any(wf.is_async for wf in workflows.values()):
            self._start_loop()

    def _start_loop(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="shoal-async", daemon=True)
        self._loop_thread.start()

    def submit(self, job: dict[str, Any], done: Callable[[Outcome], None]) -> None:
        """Start one job; ``done`` is called (from another thread) with its outcome."""
        job_id, token = job["id"], job["token"]
        wf = self.workflows.get(job["wf"])
        if wf is None:
            done(unknown_workflow(job, self.group, self.workflows))
            return
        limit = self.timeout_of(wf)
        if not wf.is_async:
            self._submit_sync(job, wf, limit, done)
            return
        step = AsyncStep(job, self.group, self.channel, self.max_step_bytes)
        with self._running_lock:
            assert self._loop is not None
            fut = asyncio.run_coroutine_threadsafe(run_async(wf, job, step, limit), self._loop)
            run = _Run(step, fut, True, token, timeout_s=limit)
            self._running[job_id] = run

        def finished(f: "Future[Outcome]") -> None:
            with self._running_lock:
                if self._running.get(job_id) is run:
                    del self._running[job_id]
            done(_stopped_as_asked(run, _result_of(f, job_id, token), wf.name))

        fut.add_done_callback(finished)

    def _submit_sync(self, job: dict[str, Any], wf: Workflow, limit: float, done: Callable[[Outcome], None]) -> None:
        step = Step(job, self.group, self.channel, self.max_step_bytes)
        run = _Run(step, None, False, job["token"], deadline=time.monotonic() + limit if limit else NO_DEADLINE,
                   timeout_s=limit, job=job, wf=wf, done=done)
        with self._running_lock:
            self._running[job["id"]] = run
            self._busy += 1
            grow = self._busy > len(self._threads) and len(self._threads) < self.concurrency
        if grow:  # a thread per run at the busiest, up to `concurrency`, as an executor would start
            thread = threading.Thread(target=self._serve, name=f"shoal-{self.group}_{len(self._threads)}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()
        self._work.put(run)

    def _serve(self) -> None:
        """A sync-run thread: run what the queue hands over, until it hands over None."""
        while True:
            run = self._work.get()
            if run is None:
                return
            job, wf, done = run.job, run.wf, run.done
            assert job is not None and wf is not None and done is not None
            try:
                outcome = run_sync(wf, job, run.step)
            except BaseException as exc:  # a bug in the runner itself (run_sync catches handlers' errors)
                outcome = Outcome(job["id"], run.token, False, kind=J.KIND_ERROR, error=f"{type(exc).__name__}: {exc}")
            with self._running_lock:
                self._busy -= 1
                if self._running.get(job["id"]) is run:
                    del self._running[job["id"]]
            done(_stopped_as_asked(run, outcome, wf.name))

    def timeout_of(self, wf: Workflow) -> float:
        """Seconds a run of ``wf`` may take (0 = no limit): the decorator's value beats the group's."""
        return self.timeout_s if wf.timeout_s is None else wf.timeout_s

    def cancel(self, job_id: bytes) -> None:
        """The broker cancelled a running job: sync handlers see ``step.cancelled``; async ones are cancelled."""
        with self._running_lock:
            run = self._running.get(job_id)
            if run is None:
                return
            run.step.cancel()
            if not run.is_async and not run.stop_kind:
                run.stop_kind, run.stop_at = KIND_CANCELLED, time.monotonic()
        if run.future is not None:  # async
            run.future.cancel()  # outside the lock: its done-callbacks (ours takes the lock) run right here

    def overdue(self, now: float) -> list[Outcome]:
        """Police sync runs: ask those past their timeout to stop (``step.cancelled``), and give up on
        those that ignored a stop for ``stuck_grace_s``. Each given-up run's outcome is returned
        (FAIL ``timeout`` or ``cancelled``); it no longer counts as running, though its thread
        cannot be stopped: the caller should replace this process."""
        stuck: list[Outcome] = []
        with self._running_lock:
            for job_id, run in list(self._running.items()):
                if run.is_async:
                    continue  # cancelled through asyncio (timeouts by wait_for)
                if not run.stop_kind and now >= run.deadline:
                    run.stop_kind, run.stop_at = J.KIND_TIMEOUT, now
                    run.step.cancel()
                elif run.stop_kind and now >= run.stop_at + self.stuck_grace_s:
                    del self._running[job_id]
                    stuck.append(_given_up(job_id, run, self.stuck_grace_s))
        return stuck

    def shutdown(self, wait: bool) -> None:
        """Stop the threads and the loop; ``wait=False`` abandons running handlers.

        Runs not started yet are dropped, reporting nothing: the broker gives them to another
        worker once this one is gone (or got them back by RETURN)."""
        while True:
            try:
                self._work.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            self._work.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
            assert self._loop_thread is not None
            self._loop_thread.join(5.0)
            if not self._loop.is_running():
                self._loop.close()


def run_sync(wf: Workflow, job: dict[str, Any], step: Step) -> Outcome:
    """Run a sync handler to its end on this thread (the pool's, or the simulation's)."""
    started = time.perf_counter()
    payload, bad = _decoded(job, started)
    if bad is not None:
        return bad
    try:
        value = wf.fn(payload, step) if wf.wants_step else wf.fn(payload)
    except (Suspend, LeaseLost, Cancelled, Exception) as exc:
        return _ended_by(job, exc, started)
    return _success(job, value, started)


async def run_async(wf: Workflow, job: dict[str, Any], step: Step, limit: float) -> Outcome:
    """Run an ``async def`` handler to its end (``limit`` seconds at most; 0 = no limit)."""
    started = time.perf_counter()
    payload, bad = _decoded(job, started)
    if bad is not None:
        return bad
    try:
        coro = wf.fn(payload, step) if wf.wants_step else wf.fn(payload)
        value = await (asyncio.wait_for(coro, limit) if limit else coro)
    except asyncio.TimeoutError:
        return _failure(job, J.KIND_TIMEOUT, f"timed out after {limit:g}s", started)
    except (Suspend, LeaseLost, Cancelled, Exception) as exc:
        return _ended_by(job, exc, started)
    return _success(job, value, started)


def _decoded(job: dict[str, Any], started: float) -> tuple[Any, Outcome | None]:
    """The job's payload, or the failure of a payload that is not msgpack."""
    try:
        return unpack(job["payload"]), None
    except Exception as exc:
        return None, _failure(job, J.KIND_BAD_PAYLOAD, f"payload is not valid msgpack: {exc}", started)


def unknown_workflow(job: dict[str, Any], group: str, workflows: dict[str, Workflow]) -> Outcome:
    """The outcome of a job whose workflow this worker does not have."""
    names = ", ".join(sorted(workflows)) or "none"
    return Outcome(job["id"], job["token"], False, kind=J.KIND_UNKNOWN_WORKFLOW, workflow=job["wf"],
                   error=f"workflow {job['wf']!r} is not registered in group {group!r} (this worker has: {names})")


def _stop_message(run: _Run) -> str:
    return f"timed out after {run.timeout_s:g}s" if run.stop_kind == J.KIND_TIMEOUT else "cancelled"


def _stopped_as_asked(run: _Run, outcome: Outcome, workflow: str) -> Outcome:
    """A sync run that ended after its timeout failed with kind ``timeout``, whatever it returned."""
    if run.stop_kind == J.KIND_TIMEOUT and outcome.kind != KIND_LEASE_LOST:
        return replace(outcome, ok=False, value=b"", kind=J.KIND_TIMEOUT, error=_stop_message(run),
                       suspend=None, workflow=workflow)
    if outcome.workflow != workflow:  # only the runner's own fallbacks (_result_of) lack it:
        return replace(outcome, workflow=workflow)  # replace() costs ~7 us, too much for every job
    return outcome


def _given_up(job_id: bytes, run: _Run, grace_s: float) -> Outcome:
    """The outcome reported for a sync run that ignored its stop past the grace time."""
    asked = "its timeout" if run.stop_kind == J.KIND_TIMEOUT else "a cancel"
    return Outcome(job_id, run.token, False, kind=run.stop_kind, workflow=run.step.workflow,
                   error=f"{_stop_message(run)}; the handler ignored {asked} for {grace_s:g}s, "
                         "so its worker process was replaced")


def _elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def _success(job: dict[str, Any], value: Any, started: float) -> Outcome:
    try:
        packed = pack(value)
    except Exception as exc:
        return _failure(job, J.KIND_BAD_RESULT,
                        f"result of type {type(value).__name__} cannot be encoded with msgpack: {exc}", started)
    return Outcome(job["id"], job["token"], True, value=packed, duration_ms=_elapsed_ms(started), workflow=job["wf"])


def _failure(job: dict[str, Any], kind: str, error: str, started: float, tb: str | None = None) -> Outcome:
    return Outcome(job["id"], job["token"], False, kind=kind, error=error, traceback=tb,
                   duration_ms=_elapsed_ms(started), workflow=job["wf"])


def _ended_by(job: dict[str, Any], exc: BaseException, started: float) -> Outcome:
    """The outcome of a run that raised: a suspension, a lost lease, a cancel, or a failure."""
    if isinstance(exc, Suspend):
        return _suspended(job, exc, started)
    if isinstance(exc, LeaseLost):
        return _failure(job, KIND_LEASE_LOST, "lease lost", started)
    if isinstance(exc, Cancelled):
        return _failure(job, KIND_CANCELLED, str(exc), started)
    return _from_exception(job, exc, started)


def _suspended(job: dict[str, Any], suspend: Suspend, started: float) -> Outcome:
    return Outcome(job["id"], job["token"], False, kind=KIND_SUSPEND, suspend=suspend,
                   duration_ms=_elapsed_ms(started), workflow=job["wf"])


def _from_exception(job: dict[str, Any], exc: BaseException, started: float) -> Outcome:
    kind = J.KIND_PERMANENT if isinstance(exc, Permanent) else J.KIND_ERROR
    return _failure(job, kind, f"{type(exc).__name__}: {exc}", started, traceback.format_exc())


def _result_of(fut: "Future[Outcome]", job_id: bytes, token: int) -> Outcome:
    try:
        return fut.result()
    except CancelledError:
        return Outcome(job_id, token, False, kind=KIND_CANCELLED, error="cancelled")
    except BaseException as exc:  # a bug in the runner itself
        return Outcome(job_id, token, False, kind=J.KIND_ERROR, error=f"{type(exc).__name__}: {exc}")

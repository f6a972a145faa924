"""Runs handlers: sync ones in a thread pool, ``async def`` ones on one asyncio loop.

It knows nothing of sockets, heartbeats or the broker: it takes a job, runs it and
hands an ``Outcome`` to a callback.
"""
from __future__ import annotations

import asyncio
import threading
import time
import traceback
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from shoal import jobs as J
from shoal.errors import Permanent
from shoal.protocol import pack, unpack
from shoal.workflow import Workflow

from .steps import AsyncStep, Cancelled, Channel, LeaseLost, Step, Suspend

KIND_SUSPEND = "suspend"        # not a failure: the run gave its slot back (sleep / wait)
KIND_LEASE_LOST = "lease_lost"  # the job was redelivered elsewhere: report nothing
KIND_CANCELLED = "cancelled"    # stopped because the job was cancelled


@dataclass(frozen=True)
class Outcome:
    """How one run ended: ``value`` (msgpack bytes) when ok, else a failure kind."""

    job_id: bytes
    token: int
    ok: bool
    value: bytes = b""
    kind: str = ""
    error: str = ""
    traceback: str | None = None
    duration_ms: int = 0
    suspend: Suspend | None = None


class Runner:
    """Executes jobs of one group's workflows, ``concurrency`` at a time."""

    def __init__(self, workflows: dict[str, Workflow], group: str, concurrency: int,
                 channel: Channel | None = None, max_step_bytes: int = 1024 * 1024) -> None:
        self.workflows = workflows
        self.channel = channel
        self.max_step_bytes = max_step_bytes
        self.group = group
        self.concurrency = concurrency
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"shoal-{group}")
        self._running: dict[bytes, tuple[Step, Future[Any]]] = {}   # job id -> its step and future
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
            names = ", ".join(sorted(self.workflows)) or "none"
            done(Outcome(job_id, token, False, kind=J.KIND_UNKNOWN_WORKFLOW,
                         error=f"workflow {job['wf']!r} is not registered in group {self.group!r} "
                               f"(this worker has: {names})"))
            return
        def finished(f: "Future[Outcome]") -> None:
            with self._running_lock:
                self._running.pop(job_id, None)
            done(_result_of(f, job_id, token))

        step: Step
        fut: Future[Any]
        with self._running_lock:
            if wf.is_async:
                step = AsyncStep(job, self.group, self.channel, self.max_step_bytes)
                assert self._loop is not None
                fut = asyncio.run_coroutine_threadsafe(self._run_async(wf, job, step), self._loop)
            else:
                step = Step(job, self.group, self.channel, self.max_step_bytes)
                fut = self._pool.submit(self._run_sync, wf, job, step)
            self._running[job_id] = (step, fut)
        fut.add_done_callback(finished)

    def cancel(self, job_id: bytes) -> None:
        """The broker cancelled a running job: sync handlers see ``step.cancelled``; async ones are cancelled."""
        with self._running_lock:
            entry = self._running.get(job_id)
        if entry is not None:
            step, fut = entry
            step.cancel()
            if isinstance(step, AsyncStep):
                fut.cancel()

    def _run_sync(self, wf: Workflow, job: dict[str, Any], step: Step) -> Outcome:
        started = time.perf_counter()
        try:
            payload = unpack(job["payload"])
        except Exception as exc:
            return _failure(job, J.KIND_BAD_PAYLOAD, f"payload is not valid msgpack: {exc}", started)
        try:
            value = wf.fn(payload, step) if wf.wants_step else wf.fn(payload)
        except (Suspend, LeaseLost, Cancelled, Exception) as exc:
            return _ended_by(job, exc, started)
        return _success(job, value, started)

    async def _run_async(self, wf: Workflow, job: dict[str, Any], step: Step) -> Outcome:
        started = time.perf_counter()
        try:
            payload = unpack(job["payload"])
        except Exception as exc:
            return _failure(job, J.KIND_BAD_PAYLOAD, f"payload is not valid msgpack: {exc}", started)
        try:
            coro = wf.fn(payload, step) if wf.wants_step else wf.fn(payload)
            value = await (asyncio.wait_for(coro, wf.timeout_s) if wf.timeout_s else coro)
        except asyncio.TimeoutError:
            return _failure(job, J.KIND_ERROR, f"timed out after {wf.timeout_s}s", started)
        except (Suspend, LeaseLost, Cancelled, Exception) as exc:
            return _ended_by(job, exc, started)
        return _success(job, value, started)

    def shutdown(self, wait: bool) -> None:
        """Stop the pool and the loop; ``wait=False`` abandons running handlers."""
        self._pool.shutdown(wait=wait, cancel_futures=True)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
            assert self._loop_thread is not None
            self._loop_thread.join(5.0)
            if not self._loop.is_running():
                self._loop.close()


def _elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def _success(job: dict[str, Any], value: Any, started: float) -> Outcome:
    try:
        packed = pack(value)
    except Exception as exc:
        return _failure(job, J.KIND_BAD_RESULT,
                        f"result of type {type(value).__name__} cannot be encoded with msgpack: {exc}", started)
    return Outcome(job["id"], job["token"], True, value=packed, duration_ms=_elapsed_ms(started))


def _failure(job: dict[str, Any], kind: str, error: str, started: float, tb: str | None = None) -> Outcome:
    return Outcome(job["id"], job["token"], False, kind=kind, error=error, traceback=tb,
                   duration_ms=_elapsed_ms(started))


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
                   duration_ms=_elapsed_ms(started))


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

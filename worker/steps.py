"""Durable steps: the ``step`` argument of a workflow handler.

``step.run(name, fn)`` runs ``fn`` once per job: its result is committed by the broker
before ``run`` returns, and any later attempt of the same job gets the stored value
without calling ``fn``. Steps are keyed by name, not position, so adding or reordering
steps in a deploy does not break runs in flight. ``sleep`` and ``wait`` give the slot
back: the handler stops here and re-runs from the top when it is due, every finished
step answering from storage.
"""
from __future__ import annotations

import asyncio
import hashlib
import inspect
import time
from concurrent.futures import Future
from datetime import datetime
from typing import Any, Callable, Protocol, Sequence

from shoal import protocol as P
from shoal.errors import Permanent, RemoteError, ShoalError
from shoal.faults import fault
from shoal.ids import id_from_str, id_to_str
from shoal.workflow import Workflow

STEP_REPLY_TIMEOUT_S = 60.0


class StepError(Permanent):
    """A step used wrongly (repeated name, unencodable or oversized result): a bug, so never retried."""


class ChildFailed(ShoalError):
    """A child job that ``step.wait`` waited for did not complete."""


class StepTimeout(ShoalError, TimeoutError):
    """``step.wait`` ran past its timeout before every child was final."""


class Suspend(BaseException):
    """Raised by sleep/wait to end this run and give the slot back (BaseException: not for handlers to catch)."""

    def __init__(self, name: str, due_ms: int, wait_on: list[bytes] | None = None) -> None:
        super().__init__(name)
        self.name, self.due_ms, self.wait_on = name, due_ms, wait_on


class Cancelled(BaseException):
    """The job was cancelled; raised by step methods so the run stops at the next step."""


class LeaseLost(BaseException):
    """This run no longer holds the job's lease (it was redelivered); stop now."""


class Channel(Protocol):
    """How a step reaches the broker (the worker shell implements it)."""

    def call(self, command: bytes, body: dict[str, Any]) -> "Future[dict[str, Any]]": ...


class StepClock:
    """The time steps see: wall time for due times, and the pause between in-step retries.

    The worker uses this real one; ``shoal.testing`` injects a virtual clock so that
    ``step.sleep`` and ``step.wait`` deadlines follow simulated time."""

    def wall_ms(self) -> int:
        """Unix time in milliseconds."""
        return time.time_ns() // 1_000_000

    def pause(self, seconds: float) -> None:
        """Wait between tries of a sync ``step.run``."""
        time.sleep(seconds)

    async def apause(self, seconds: float) -> None:
        """Wait between tries of an async ``step.run``."""
        await asyncio.sleep(seconds)


REAL_CLOCK = StepClock()


def child_job_id(parent: bytes, step_name: str, index: int = 0) -> bytes:
    """A child's id is fixed by its parent and step, so a re-run re-sends the same job (never a second)."""
    return hashlib.blake2b(parent + step_name.encode() + index.to_bytes(4, "big"), digest_size=16).digest()


class Step:
    """The step API for sync handlers; also says which run this is."""

    def __init__(self, job: dict[str, Any], group: str, channel: Channel | None, max_step_bytes: int,
                 clock: StepClock = REAL_CLOCK) -> None:
        self.job_id: bytes = job["id"]
        self.workflow: str = job["wf"]
        self.group = group
        self.attempt = int(job.get("attempt", 1))
        self._token = job["token"]
        self._stored: dict[str, dict[str, Any]] = dict(job.get("steps") or {})
        self._used: set[str] = set()
        self._channel = channel
        self._max_bytes = max_step_bytes
        # A plain flag, not a threading.Event (a Condition and a Lock for every job): only set and
        # read, never waited on; one attribute store is atomic and seen by the handler's thread.
        self._cancelled = False
        self._clock = clock

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled: a long sync handler should check it and return."""
        return self._cancelled

    def cancel(self) -> None:
        """Mark the run cancelled (called by the worker when the broker says so)."""
        self._cancelled = True

    # --- bookkeeping shared by the sync and async forms ---------------------------------
    def _claim(self, name: str) -> dict[str, Any] | None:
        if self._cancelled:
            raise Cancelled(f"job cancelled before step {name!r}")
        if not isinstance(name, str) or not name:
            raise StepError("a step needs a non-empty name")
        if name in self._used:
            raise StepError(f"step name {name!r} is used twice in this run of {self.workflow!r}; names must be unique")
        self._used.add(name)
        return self._stored.get(name)

    def _encode(self, name: str, value: Any) -> bytes:
        try:
            packed = P.pack(value)
        except Exception as exc:
            raise StepError(f"result of step {name!r} ({type(value).__name__}) cannot be encoded with msgpack: {exc}") from None
        if len(packed) > self._max_bytes:
            raise StepError(f"result of step {name!r} is {len(packed)} bytes, over the limit of {self._max_bytes}")
        return packed

    def _body(self, name: str, record: dict[str, Any], enqueue: list[dict[str, Any]] | None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.job_id, "token": self._token, "name": name, "record": record}
        if enqueue:
            body["enqueue"] = enqueue
        return body

    def _request(self, body: dict[str, Any]) -> "Future[dict[str, Any]]":
        if self._channel is None:
            raise StepError("durable steps need a worker connected to a broker")
        return self._channel.call(P.STEP, body)

    @staticmethod
    def _answer(name: str, record: dict[str, Any]) -> Any:
        if record.get("permanent"):
            raise Permanent(record.get("error") or f"step {name!r} failed permanently")
        return P.unpack(record["value"]) if "value" in record else None

    @staticmethod
    def _reply(fut: "Future[dict[str, Any]]") -> dict[str, Any]:
        try:
            return fut.result(STEP_REPLY_TIMEOUT_S)["record"]
        except RemoteError as exc:
            if exc.code == P.E_STALE_LEASE:
                raise LeaseLost(str(exc)) from None
            raise

    def _children(self, name: str, ids: str | Sequence[str]) -> tuple[bool, list[bytes]]:
        if isinstance(ids, str):
            return True, [id_from_str(ids)]
        return False, [id_from_str(i) for i in ids]

    def _child_items(self, name: str, workflow: Workflow | str, payloads: list[Any],
                     group: str | None) -> list[dict[str, Any]]:
        wf_name = workflow.name if isinstance(workflow, Workflow) else workflow
        if group is None and isinstance(workflow, Workflow):
            group = workflow.group
        items = []
        for index, payload in enumerate(payloads):
            item: dict[str, Any] = {"id": child_job_id(self.job_id, name, index), "wf": wf_name,
                                    "payload": self._encode(name, payload)}
            if group is not None:
                item["group"] = group
            items.append(item)
        return items

    def _wait_outcome(self, name: str, record: dict[str, Any] | None, ids: list[bytes], single: bool,
                      timeout: float | None) -> Any:
        if record is not None and "children" in record:
            values = []
            for child_id, state, value, error in record["children"]:
                if state != "completed":
                    raise ChildFailed(f"child job {id_to_str(child_id)} of step {name!r} ended {state}: {error}")
                values.append(None if value is None else P.unpack(value))
            return values[0] if single else values
        deadline = (record or {}).get("deadline_ms") or (self._clock.wall_ms() + int(timeout * 1000) if timeout else 0)
        if deadline and self._clock.wall_ms() >= deadline:
            raise StepTimeout(f"step {name!r}: children not all final within the timeout")
        raise Suspend(name, deadline, wait_on=ids)

    @staticmethod
    def _wake_ms(when: datetime | float) -> int:
        return int((when.timestamp() if isinstance(when, datetime) else float(when)) * 1000)

    def _sleep_check(self, name: str, wake_ms: int) -> None:
        record = self._claim(name)
        wake_ms = int(record["wake_ms"]) if record and "wake_ms" in record else wake_ms
        if self._clock.wall_ms() < wake_ms:
            raise Suspend(name, wake_ms)

    # --- the sync API ------------------------------------------------------------------
    def run(self, name: str, fn: Callable[..., Any], *args: Any, retries: int = 0, backoff: float = 0.1,
            **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once for this job; later attempts get the stored result."""
        record = self._claim(name)
        if record is not None:
            return self._answer(name, record)
        started = time.perf_counter()
        for attempt in range(1, retries + 2):
            try:
                value = fn(*args, **kwargs)
                break
            except Permanent as exc:
                self._reply(self._request(self._body(name, {"error": str(exc), "permanent": True,
                                                            "attempts": attempt}, None)))
                raise
            except Exception:
                if attempt > retries:
                    raise
                self._clock.pause(min(backoff * 2 ** (attempt - 1), 30.0))
        packed = self._encode(name, value)
        stored = self._reply(self._request(self._body(
            name, {"value": packed, "attempts": attempt, "duration_ms": int((time.perf_counter() - started) * 1000)},
            None)))
        fault("worker_after_step")
        return self._answer(name, stored)

    def sleep(self, name: str, seconds: float) -> None:
        """Durable sleep: the slot is given back and the run resumes here after ``seconds``."""
        self._sleep_check(name, self._clock.wall_ms() + int(seconds * 1000))

    def sleep_until(self, name: str, when: datetime | float) -> None:
        """Durable sleep until a datetime (or Unix time in seconds)."""
        self._sleep_check(name, self._wake_ms(when))

    def enqueue(self, name: str, workflow: Workflow | str, payload: Any = None, *, group: str | None = None) -> str:
        """Start a child job exactly once for this step name; returns its id."""
        return self.enqueue_many(name, workflow, [payload], group=group)[0]

    def enqueue_many(self, name: str, workflow: Workflow | str, payloads: Sequence[Any], *,
                     group: str | None = None) -> list[str]:
        """Start many child jobs in one step (one round trip, one transaction)."""
        record = self._claim(name)
        if record is not None:
            return list(P.unpack(record["value"]))
        items = self._child_items(name, workflow, list(payloads), group)
        ids = [id_to_str(i["id"]) for i in items]
        self._reply(self._request(self._body(name, {"value": P.pack(ids)}, items)))
        return ids

    def wait(self, name: str, ids: str | Sequence[str], timeout: float | None = None) -> Any:
        """Suspend until the children are final; returns their values (one value for one id)."""
        record = self._claim(name)
        single, raw = self._children(name, ids)
        return self._wait_outcome(name, record, raw, single, timeout)


class AsyncStep(Step):
    """The step API for ``async def`` handlers: the same methods, awaited."""

    async def run(self, name: str, fn: Callable[..., Any], *args: Any, retries: int = 0,  # type: ignore[override]
                  backoff: float = 0.1, **kwargs: Any) -> Any:
        record = self._claim(name)
        if record is not None:
            return self._answer(name, record)
        started = time.perf_counter()
        for attempt in range(1, retries + 2):
            try:
                value = fn(*args, **kwargs)
                if inspect.isawaitable(value):
                    value = await value
                break
            except Permanent as exc:
                await self._areply(self._body(name, {"error": str(exc), "permanent": True, "attempts": attempt}, None))
                raise
            except Exception:
                if attempt > retries:
                    raise
                await self._clock.apause(min(backoff * 2 ** (attempt - 1), 30.0))
        packed = self._encode(name, value)
        stored = await self._areply(self._body(
            name, {"value": packed, "attempts": attempt, "duration_ms": int((time.perf_counter() - started) * 1000)},
            None))
        return self._answer(name, stored)

    async def _areply(self, body: dict[str, Any]) -> dict[str, Any]:
        fut = self._request(body)
        try:
            return (await asyncio.wait_for(asyncio.wrap_future(fut), STEP_REPLY_TIMEOUT_S))["record"]
        except RemoteError as exc:
            if exc.code == P.E_STALE_LEASE:
                raise LeaseLost(str(exc)) from None
            raise

    async def sleep(self, name: str, seconds: float) -> None:  # type: ignore[override]
        self._sleep_check(name, self._clock.wall_ms() + int(seconds * 1000))

    async def sleep_until(self, name: str, when: datetime | float) -> None:  # type: ignore[override]
        self._sleep_check(name, self._wake_ms(when))

    async def enqueue(self, name: str, workflow: Workflow | str, payload: Any = None, *,  # type: ignore[override]
                      group: str | None = None) -> str:
        return (await self.enqueue_many(name, workflow, [payload], group=group))[0]

    async def enqueue_many(self, name: str, workflow: Workflow | str, payloads: Sequence[Any], *,  # type: ignore[override]
                           group: str | None = None) -> list[str]:
        record = self._claim(name)
        if record is not None:
            return list(P.unpack(record["value"]))
        items = self._child_items(name, workflow, list(payloads), group)
        ids = [id_to_str(i["id"]) for i in items]
        await self._areply(self._body(name, {"value": P.pack(ids)}, items))
        return ids

    async def wait(self, name: str, ids: str | Sequence[str], timeout: float | None = None) -> Any:  # type: ignore[override]
        record = self._claim(name)
        single, raw = self._children(name, ids)
        return self._wait_outcome(name, record, raw, single, timeout)

"""``Client`` and ``AsyncClient``: enqueue jobs, wait for results, read stats."""
from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import zmq

from shoal import protocol as P
from shoal.errors import PayloadError, WaitTimeout
from shoal.ids import id_from_str, id_to_str, new_job_id
from shoal.workflow import Workflow

from .connection import Connection

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
FINAL = frozenset({"completed", "dead", "cancelled"})


@dataclass(frozen=True)
class Result:
    """A job as the broker reports it; ``value`` is decoded."""

    id: str
    status: str
    value: Any = None
    error: str | None = None
    error_kind: str | None = None
    traceback: str | None = None
    attempts: int = 0
    workflow: str = ""
    group: str = ""
    created_ms: int = 0
    started_ms: int = 0
    finished_ms: int = 0
    priority: int = 0
    key: str | None = None
    payload: Any = None  # decoded; only on ``get`` and ``dead_letters`` (listings leave it out)

    @property
    def ok(self) -> bool:
        """True when the job completed."""
        return self.status == "completed"

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Result":
        raw = record.get("value")
        return cls(id=id_to_str(record["id"]), status=record["state"],
                   value=None if raw is None else P.unpack(raw), error=record.get("error"),
                   error_kind=record.get("error_kind"), traceback=record.get("traceback"),
                   attempts=record.get("attempts", 0), workflow=record.get("workflow", ""),
                   group=record.get("group", "") or "", created_ms=record.get("created_ms", 0),
                   started_ms=record.get("started_ms", 0), finished_ms=record.get("finished_ms", 0),
                   priority=record.get("priority", 0), key=record.get("key"),
                   payload=None if record.get("payload") is None else P.unpack(record["payload"]))


@dataclass(frozen=True)
class StepInfo:
    """One stored step of a run: ``status`` is done, failed, sleeping or waiting."""

    name: str
    status: str
    attempts: int = 0
    duration_ms: int = 0
    finished_ms: int = 0
    value: Any = None
    error: str | None = None

    @classmethod
    def all_from(cls, steps: dict[str, dict[str, Any]]) -> list["StepInfo"]:
        out = [cls.from_record(name, record) for name, record in steps.items()]
        return sorted(out, key=lambda s: s.finished_ms)

    @classmethod
    def from_record(cls, name: str, record: dict[str, Any]) -> "StepInfo":
        common = {"attempts": record.get("attempts", 0), "duration_ms": record.get("duration_ms", 0),
                  "finished_ms": record.get("finished_ms", 0)}
        if record.get("permanent"):
            return cls(name, "failed", error=record.get("error"), **common)
        if "value" in record:
            return cls(name, "done", value=P.unpack(record["value"]), **common)
        if "children" in record:
            values = [[id_to_str(c[0]), c[1]] for c in record["children"]]
            return cls(name, "done", value=values, **common)
        if "wake_ms" in record:
            woke = record["wake_ms"] <= time.time() * 1000
            return cls(name, "done" if woke else "sleeping", value={"wake_ms": record["wake_ms"]}, **common)
        return cls(name, "waiting", value={"deadline_ms": record.get("deadline_ms")}, **common)


@dataclass(frozen=True)
class HistoryEntry:
    """One entry of a job's history (from the broker's log): what happened, when, in which run.

    ``time_ms`` is Unix ms; ``state`` and ``attempt`` are the job's right after it; ``worker``
    and ``token`` (the lease) are set on entries made during a run; ``error`` on failures.
    """

    seq: int
    time_ms: int
    op: str
    state: str
    attempt: int = 0
    worker: str = ""
    token: int = 0
    error: str | None = None
    detail: str = ""

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "HistoryEntry":
        return cls(seq=row["seq"], time_ms=row["wall_ms"], op=row["op"], state=row.get("state", ""),
                   attempt=row.get("attempt", 0), worker=row.get("worker", ""), token=row.get("token", 0),
                   error=row.get("error"), detail=row.get("detail", ""))


class JobId(str):
    """A job id as returned by ``enqueue``: a ``str``, plus ``deduplicated`` when a job
    holding the same ``key`` already existed and nothing new was enqueued."""

    deduplicated: bool = False

    @classmethod
    def of(cls, raw: bytes, deduplicated: bool) -> "JobId":
        out = cls(id_to_str(raw))
        out.deduplicated = deduplicated
        return out


@dataclass(frozen=True)
class CancelResult:
    """What ``cancel`` did: ``cancelled`` is False for a job that had already finished."""

    cancelled: bool
    state: str
    message: str


def _event(raw: dict[str, Any]) -> dict[str, Any]:
    raw["id"] = id_to_str(raw["id"])
    return raw


class Stats(dict):  # type: ignore[type-arg]
    """Per-group counters, keyed by group; ``unrouted`` counts jobs per unknown workflow name."""

    unrouted: dict[str, int]


def _endpoint(endpoint: str | None) -> str:
    return endpoint or os.environ.get("SHOAL_BROKER") or DEFAULT_ENDPOINT


def _workers(body: dict[str, Any]) -> list[dict[str, Any]]:
    rows = list(body["workers"])
    for row in rows:
        row["jobs"] = [id_to_str(j) for j in row.get("jobs", ())]
    return rows


def _group_body(group: str | None) -> dict[str, Any]:
    return {} if group is None else {"group": group}


def _jobs_body(state: str | None, group: str | None, limit: int) -> dict[str, Any]:
    body: dict[str, Any] = {"limit": limit}
    if state:
        body["state"] = state
    if group:
        body["group"] = group
    return body


class _Requests:
    """Builds request bodies and reads replies; shared by the sync and async clients."""

    def __init__(self, endpoint: str | None, timeout: float, max_message_bytes: int) -> None:
        self.endpoint = _endpoint(endpoint)
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self.conn = Connection(self.endpoint)

    def job_items(self, workflow: Workflow | str, payloads: Iterable[Any], group: str | None,
                  delay: float | None, priority: int, key: str | None,
                  key_ttl: float | None = None) -> list[dict[str, Any]]:
        name, retries = (workflow.name, workflow.retries) if isinstance(workflow, Workflow) else (workflow, None)
        if not isinstance(name, str) or not name:
            raise PayloadError("workflow must be a @workflow object or a non-empty name")
        if group is None and isinstance(workflow, Workflow):
            group = workflow.group
        items = []
        for payload in payloads:
            try:
                packed = P.pack(payload)
            except Exception as exc:
                raise PayloadError(f"payload of type {type(payload).__name__} cannot be encoded with msgpack: {exc}") from None
            item: dict[str, Any] = {"id": new_job_id(), "wf": name, "payload": packed}
            if group is not None:
                item["group"] = group
            if delay:
                item["delay_ms"] = int(delay * 1000)
            if priority:
                item["priority"] = priority
            if retries is not None:
                item["retries"] = retries
            if key is not None:
                item["key"] = key
                if key_ttl:
                    item["key_ttl_ms"] = int(key_ttl * 1000)
            items.append(item)
        size = sum(len(i["payload"]) for i in items)
        if size > self.max_message_bytes:
            raise PayloadError(f"payloads total {size} bytes, over the limit of {self.max_message_bytes} bytes")
        return items

    @staticmethod
    def ids_from(reply: dict[str, Any], items: list[dict[str, Any]]) -> list[JobId]:
        ids = reply.get("ids") or [i["id"] for i in items]
        flags = reply.get("deduplicated") or [False] * len(ids)
        return [JobId.of(raw, bool(flag)) for raw, flag in zip(ids, flags)]

    def events_endpoint(self) -> str:
        endpoint = self.send(P.STATS, {}).result()["events"]
        if "://*:" in endpoint or "0.0.0.0" in endpoint:  # a wildcard bind: reach it where the broker is
            host = self.endpoint.split("://", 1)[1].rsplit(":", 1)[0]
            endpoint = endpoint.replace("*", host, 1).replace("0.0.0.0", host, 1)
        return endpoint

    def send(self, command: bytes, body: dict[str, Any], timeout: float | None = None,
             is_wait: bool = False) -> "Future[dict[str, Any]]":
        return self.conn.request(command, body, self.timeout if timeout is None else timeout, is_wait)


class Client:
    """Talk to a broker from plain (threaded) code. Safe to share between threads."""

    def __init__(self, endpoint: str | None = None, timeout: float = 10.0,
                 max_message_bytes: int = P.DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._r = _Requests(endpoint, timeout, max_message_bytes)
        self.endpoint = self._r.endpoint

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._r.conn.close()

    def enqueue(self, workflow: Workflow | str, payload: Any = None, *, group: str | None = None,
                delay: float | None = None, priority: int = 0, key: str | None = None,
                key_ttl: float | None = None) -> JobId:
        """Enqueue one job; returns its id once the broker has committed it.

        ``priority``: higher runs first within the group. ``key``: while a job with this key is
        pending, scheduled or running (and ``key_ttl`` seconds after), enqueue returns that job's
        id with ``.deduplicated`` set and enqueues nothing.
        """
        return self.enqueue_many(workflow, [payload], group=group, delay=delay, priority=priority, key=key,
                                 key_ttl=key_ttl)[0]

    def enqueue_many(self, workflow: Workflow | str, payloads: Iterable[Any], *, group: str | None = None,
                     delay: float | None = None, priority: int = 0, key: str | None = None,
                     key_ttl: float | None = None) -> list[JobId]:
        """Enqueue many jobs in one round trip and one transaction."""
        items = self._r.job_items(workflow, payloads, group, delay, priority, key, key_ttl)
        if not items:
            return []
        return self._r.ids_from(self._r.send(P.ENQUEUE, {"jobs": items}).result(), items)

    def cancel(self, job_id: str) -> CancelResult:
        """Cancel a job: pending or scheduled at once; a running one is told to stop."""
        body = self._r.send(P.CANCEL, {"id": id_from_str(job_id)}).result()
        return CancelResult(bool(body["cancelled"]), body["state"], body["message"])

    def events(self, group: str | None = None, workflow: str | None = None,
               timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Lifecycle events as they happen (queued, started, completed, failed, retrying,
        dead_letter, cancelled). Stops after ``timeout`` seconds without an event, if given."""
        sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(self._r.events_endpoint())
        prefix = b"" if group is None else f"{group}\0".encode() + (b"" if workflow is None else f"{workflow}\0".encode())
        sub.setsockopt(zmq.SUBSCRIBE, prefix)
        try:
            while True:
                if not sub.poll(None if timeout is None else int(timeout * 1000)):
                    return
                _, body = sub.recv_multipart()
                event = P.unpack(body)
                if workflow is None or event.get("workflow") == workflow:
                    yield _event(event)
        finally:
            sub.close(0)

    def get(self, job_id: str) -> Result | None:
        """The job's current state, or None if the broker has no such job."""
        record = self._r.send(P.GET, {"ids": [id_from_str(job_id)]}).result()["jobs"][0]
        return None if record is None else Result.from_record(record)

    def wait(self, job_id: str, timeout: float | None = None) -> Result:
        """Block until the job is final (pushed by the broker, never polled)."""
        limit = self._r.timeout if timeout is None else timeout
        fut = self._r.send(P.WAIT, {"id": id_from_str(job_id)}, limit, is_wait=True)
        try:
            return Result.from_record(fut.result()["job"])
        except WaitTimeout as exc:
            raise WaitTimeout(f"job {job_id} did not finish within {limit}s") from exc

    def steps(self, job_id: str) -> list[StepInfo]:
        """The stored steps of a workflow run, in the order they finished."""
        body = self._r.send(P.STEPS, {"id": id_from_str(job_id)}).result()
        return StepInfo.all_from(body["steps"])

    def history(self, job_id: str) -> list[HistoryEntry]:
        """Every logged transition of a job, oldest first (kept after the job itself expires)."""
        body = self._r.send(P.HISTORY, {"id": id_from_str(job_id)}).result()
        return [HistoryEntry.from_row(row) for row in body["entries"]]

    def storage(self) -> dict[str, Any]:
        """Sizes of the broker's state, log and snapshots (bytes), and whether it refuses enqueues."""
        return dict(self._r.send(P.STORAGE, {}).result()["storage"])

    def cron(self) -> list[dict[str, Any]]:
        """Cron entries with their last and next fire times (Unix ms)."""
        return list(self._r.send(P.CRON, {}).result()["entries"])

    def stats(self) -> Stats:
        """Per-group counters (cheap: the broker keeps them as jobs change)."""
        body = self._r.send(P.STATS, {}).result()
        out = Stats(body["groups"])
        out.unrouted = body.get("unrouted", {})
        return out

    def dead_letters(self, group: str | None = None, limit: int = 1000) -> list[Result]:
        """Jobs that ran out of retries (or failed permanently), all groups unless ``group``."""
        body: dict[str, Any] = {"limit": limit}
        if group is not None:
            body["group"] = group
        return [Result.from_record(r) for r in self._r.send(P.DEAD, body).result()["jobs"]]

    def requeue(self, job_id: str) -> bool:
        """Put a dead job back in its queue with a fresh retry budget; False if it is not dead."""
        return bool(self._r.send(P.REQUEUE, {"ids": [id_from_str(job_id)]}).result()["requeued"])

    def requeue_all(self, group: str | None = None) -> int:
        """Requeue every dead job (of ``group``); returns how many."""
        body: dict[str, Any] = {"all": True}
        if group is not None:
            body["group"] = group
        return len(self._r.send(P.REQUEUE, body).result()["requeued"])

    def jobs(self, state: str | None = None, group: str | None = None, limit: int = 100) -> list[Result]:
        """Active jobs (pending, scheduled, running), oldest first."""
        return [Result.from_record(r) for r in self._r.send(P.JOBS, _jobs_body(state, group, limit)).result()["jobs"]]

    def workers(self, group: str | None = None) -> list[dict[str, Any]]:
        """Connected workers (of ``group``): ``name``, ``group``, ``host``, ``pid``, ``slots``, ``busy``,
        ``jobs`` (ids of the jobs it holds), ``workflows``, ``last_seen_s`` and, for a worker on the
        broker's host, ``rss_bytes``."""
        return _workers(self._r.send(P.WORKERS, _group_body(group)).result())


class AsyncClient:
    """The same API for asyncio code; concurrent calls are pipelined on one socket."""

    def __init__(self, endpoint: str | None = None, timeout: float = 10.0,
                 max_message_bytes: int = P.DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._r = _Requests(endpoint, timeout, max_message_bytes)
        self.endpoint = self._r.endpoint

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection."""
        await asyncio.get_running_loop().run_in_executor(None, self._r.conn.close)

    async def _send(self, command: bytes, body: dict[str, Any], timeout: float | None = None,
                    is_wait: bool = False) -> dict[str, Any]:
        return await asyncio.wrap_future(self._r.send(command, body, timeout, is_wait))

    async def enqueue(self, workflow: Workflow | str, payload: Any = None, *, group: str | None = None,
                      delay: float | None = None, priority: int = 0, key: str | None = None,
                      key_ttl: float | None = None) -> JobId:
        """Enqueue one job; returns its id once the broker has committed it."""
        ids = await self.enqueue_many(workflow, [payload], group=group, delay=delay, priority=priority, key=key,
                                      key_ttl=key_ttl)
        return ids[0]

    async def enqueue_many(self, workflow: Workflow | str, payloads: Iterable[Any], *, group: str | None = None,
                           delay: float | None = None, priority: int = 0, key: str | None = None,
                           key_ttl: float | None = None) -> list[JobId]:
        """Enqueue many jobs in one round trip and one transaction."""
        items = self._r.job_items(workflow, payloads, group, delay, priority, key, key_ttl)
        if not items:
            return []
        return self._r.ids_from(await self._send(P.ENQUEUE, {"jobs": items}), items)

    async def cancel(self, job_id: str) -> CancelResult:
        """Cancel a job (see ``Client.cancel``)."""
        body = await self._send(P.CANCEL, {"id": id_from_str(job_id)})
        return CancelResult(bool(body["cancelled"]), body["state"], body["message"])

    async def get(self, job_id: str) -> Result | None:
        """The job's current state, or None."""
        record = (await self._send(P.GET, {"ids": [id_from_str(job_id)]}))["jobs"][0]
        return None if record is None else Result.from_record(record)

    async def wait(self, job_id: str, timeout: float | None = None) -> Result:
        """Wait until the job is final."""
        limit = self._r.timeout if timeout is None else timeout
        try:
            body = await self._send(P.WAIT, {"id": id_from_str(job_id)}, limit, is_wait=True)
        except WaitTimeout as exc:
            raise WaitTimeout(f"job {job_id} did not finish within {limit}s") from exc
        return Result.from_record(body["job"])

    async def steps(self, job_id: str) -> list[StepInfo]:
        """The stored steps of a workflow run."""
        return StepInfo.all_from((await self._send(P.STEPS, {"id": id_from_str(job_id)}))["steps"])

    async def history(self, job_id: str) -> list[HistoryEntry]:
        """Every logged transition of a job, oldest first."""
        body = await self._send(P.HISTORY, {"id": id_from_str(job_id)})
        return [HistoryEntry.from_row(row) for row in body["entries"]]

    async def stats(self) -> Stats:
        """Per-group counters."""
        body = await self._send(P.STATS, {})
        out = Stats(body["groups"])
        out.unrouted = body.get("unrouted", {})
        return out

    async def dead_letters(self, group: str | None = None, limit: int = 1000) -> list[Result]:
        """Dead jobs, all groups unless ``group``."""
        body: dict[str, Any] = {"limit": limit}
        if group is not None:
            body["group"] = group
        return [Result.from_record(r) for r in (await self._send(P.DEAD, body))["jobs"]]

    async def requeue(self, job_id: str) -> bool:
        """Requeue a dead job with a fresh retry budget."""
        return bool((await self._send(P.REQUEUE, {"ids": [id_from_str(job_id)]}))["requeued"])

    async def requeue_all(self, group: str | None = None) -> int:
        """Requeue every dead job (of ``group``); returns how many."""
        return len((await self._send(P.REQUEUE, {"all": True, **_group_body(group)}))["requeued"])

    async def jobs(self, state: str | None = None, group: str | None = None, limit: int = 100) -> list[Result]:
        """Active jobs (pending, scheduled, running), oldest first."""
        return [Result.from_record(r) for r in (await self._send(P.JOBS, _jobs_body(state, group, limit)))["jobs"]]

    async def cron(self) -> list[dict[str, Any]]:
        """Cron entries with their last and next fire times (Unix ms)."""
        return list((await self._send(P.CRON, {}))["entries"])

    async def workers(self, group: str | None = None) -> list[dict[str, Any]]:
        """Connected workers (see ``Client.workers``)."""
        return _workers(await self._send(P.WORKERS, _group_body(group)))

"""``Client`` and ``AsyncClient``: enqueue jobs, wait for results, read stats.

``Client`` sends each request on the calling thread's own socket (``connection``);
``AsyncClient`` on the event loop's socket (``aio``). Both build requests and read
replies through ``Requests``.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Callable, Iterable, Iterator

import zmq

from shoal import protocol as P
from shoal.endpoints import resolve_endpoint
from shoal.errors import BrokerUnreachable, PayloadError, RemoteError, WaitTimeout
from shoal.ids import id_from_str, id_to_str, new_job_id, new_job_ids
from shoal.security import apply_client_curve, resolve_keys
from shoal.sockets import connect
from shoal.workflow import Workflow

from .aio import AsyncConnection
from .coalesce import EnqueueBatcher
from .combine import Combiner
from .connection import Connection
from .results import CancelResult, HistoryEntry, JobId, Result, Stats, StepInfo, event_of

__all__ = ["AsyncClient", "CancelResult", "Client", "HistoryEntry", "JobId", "Result", "Stats", "StepInfo"]

SHOWN_IDS = 5  # job ids spelled out in an unknown-outcome message (all of them are in .job_ids)


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


def _packed(payload: Any) -> bytes:
    try:
        return P.pack(payload)
    except Exception as exc:
        raise PayloadError(f"payload of type {type(payload).__name__} cannot be encoded with msgpack: {exc}") from None


def _made(reply: dict[str, Any], job_id: bytes) -> bool:
    """Whether an ENQUEUE's reply stored the job under ``job_id`` (not a held key's other job)."""
    ids = reply.get("ids")
    return not ids or ids[0] == job_id


def _late(job_id: bytes, limit: float) -> WaitTimeout:
    text = id_to_str(job_id)
    return WaitTimeout(f"job {text} did not finish within {limit}s", text)


class Requests:
    """Builds request bodies and reads replies; shared by the sync and async clients."""

    def __init__(self, endpoint: str | None, timeout: float, max_message_bytes: int,
                 key: str | None = None, broker_key: str | None = None, config: str | None = None) -> None:
        self.endpoint = resolve_endpoint(endpoint, config)
        self.curve = resolve_keys(key, broker_key, config)  # CURVE keys, or None for a plain connection
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes

    def job_items(self, workflow: Workflow | str, payloads: Iterable[Any], group: str | None,
                  delay: float | None, priority: int, key: str | None,
                  key_ttl: float | None = None, ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        name, retries = (workflow.name, workflow.retries) if isinstance(workflow, Workflow) else (workflow, None)
        if not isinstance(name, str) or not name:
            raise PayloadError("workflow must be a @workflow object or a non-empty name")
        if group is None and isinstance(workflow, Workflow):
            group = workflow.group
        payloads = list(payloads)
        job_ids = self._job_ids(ids, len(payloads))
        pack = P.packer() if len(payloads) > 8 else P.pack  # this call's own Packer: calls run on many threads
        try:
            packed = [pack(payload) for payload in payloads]
        except Exception:  # find the payload that cannot be encoded, and say what it is
            packed = [_packed(payload) for payload in payloads]
        extra: dict[str, Any] = {}  # the fields every item of this call shares, in the wire's order
        if group is not None:
            extra["group"] = group
        if delay:
            extra["delay_ms"] = int(delay * 1000)
        if priority:
            extra["priority"] = priority
        if retries is not None:
            extra["retries"] = retries
        if key is not None:
            extra["key"] = key
            if key_ttl:
                extra["key_ttl_ms"] = int(key_ttl * 1000)
        if extra:
            items = [{"id": job_id, "wf": name, "payload": raw, **extra} for job_id, raw in zip(job_ids, packed)]
        else:
            items = [{"id": job_id, "wf": name, "payload": raw} for job_id, raw in zip(job_ids, packed)]
        size = sum(map(len, packed))
        if size > self.max_message_bytes:
            raise PayloadError(f"payloads total {size} bytes, over the limit of {self.max_message_bytes} bytes")
        return items

    @staticmethod
    def _job_ids(ids: Iterable[str] | None, count: int) -> list[bytes]:
        """New ids, or the caller's own (a retry after an unknown outcome names the same jobs again)."""
        if ids is None:
            return [new_job_id()] if count == 1 else new_job_ids(count)
        given = [id_from_str(i) for i in ids]  # UnknownJob for text that is not a job id
        if len(given) != count:
            raise PayloadError(f"{len(given)} ids given for {count} payloads: give one id per payload")
        return given

    @staticmethod
    def early_ids(items: list[dict[str, Any]]) -> tuple[list[JobId], Callable[[], None]]:
        """A list for ``items``' ids as text, and the call that fills it (made while the broker works)."""
        made: list[JobId] = []
        return made, lambda: made.extend(JobId.of(i["id"], False) for i in items)

    @staticmethod
    def ids_from(reply: dict[str, Any], items: list[dict[str, Any]], made: list[JobId] | None = None) -> list[JobId]:
        """The call's ids as the broker answered them; ``made``: those of ``items``, made before
        the reply came, taken when the broker answered with them all (no held key gave another)."""
        ids = reply.get("ids") or [i["id"] for i in items]
        flags = reply.get("deduplicated")
        if made and not (flags and any(flags)) and ids == [i["id"] for i in items]:
            return made
        flags = flags or [False] * len(ids)
        return [JobId.of(raw, bool(flag)) for raw, flag in zip(ids, flags)]

    def run_job(self, workflow: Workflow | str, payload: Any, group: str | None, delay: float | None, priority: int,
                key: str | None, key_ttl: float | None, job_id: str | None,
                timeout: float | None) -> tuple[list[dict[str, Any]], float, float]:
        """``run``'s one item, the wait's limit in seconds and its deadline (``time.monotonic()``)."""
        limit = self.timeout if timeout is None else timeout
        items = self.job_items(workflow, [payload], group, delay, priority, key, key_ttl,
                               None if job_id is None else [job_id])
        return items, limit, time.monotonic() + limit

    @contextlib.contextmanager
    def run_errors(self, items: list[dict[str, Any]], limit: float) -> Iterator[None]:
        """``run``'s errors: an unknown outcome carries the id to retry with, a late job names itself."""
        try:
            yield
        except BrokerUnreachable as exc:
            raise self.unknown_outcome(exc, items) from None
        except WaitTimeout as exc:
            raise _late(items[0]["id"], limit) from exc

    @staticmethod
    def unknown_outcome(exc: BrokerUnreachable, items: list[dict[str, Any]]) -> BrokerUnreachable:
        """The timeout of an enqueue: it may have been stored, so say so and carry the ids for a safe retry."""
        job_ids = [id_to_str(i["id"]) for i in items]
        shown = ", ".join(job_ids[:SHOWN_IDS]) + (f" and {len(job_ids) - SHOWN_IDS} more" if len(job_ids) > SHOWN_IDS else "")
        one = len(job_ids) == 1
        retry = "id=" if one else "ids="
        return BrokerUnreachable(
            f"{exc}; the outcome is unknown: the {'job' if one else f'{len(job_ids)} jobs'} may have been stored "
            f"({'id' if one else 'ids'} {shown}; all in .job_ids). Enqueue again with {retry}exc.job_ids"
            f"{'[0]' if one else ''} to get the stored {'job' if one else 'jobs'} back, never a duplicate.",
            job_ids)

    def events_endpoint(self, stats: dict[str, Any]) -> str:
        endpoint: str = stats["events"]
        if "://*:" in endpoint or "0.0.0.0" in endpoint:  # a wildcard bind: reach it where the broker is
            host = self.endpoint.split("://", 1)[1].rsplit(":", 1)[0]
            endpoint = endpoint.replace("*", host, 1).replace("0.0.0.0", host, 1)
        return endpoint


class Client:
    """Talk to a broker from plain (threaded) code. Safe to share between threads."""

    def __init__(self, endpoint: str | None = None, timeout: float = 10.0,
                 max_message_bytes: int = P.DEFAULT_MAX_MESSAGE_BYTES, *, key: str | None = None,
                 broker_key: str | None = None, config: str | None = None) -> None:
        """``key``/``broker_key``: CURVE certificate paths, this program's secret one and the broker's
        public one (else SHOAL_KEY / SHOAL_BROKER_KEY, else ``[security]`` of ``config``, SHOAL_CONFIG
        or ./shoal.toml). Neither anywhere: a plain connection."""
        self._r = Requests(endpoint, timeout, max_message_bytes, key, broker_key, config)
        self.endpoint = self._r.endpoint
        self._conn = Connection(self.endpoint, self._r.curve)
        self._combiner = Combiner(lambda body: self._call(P.ENQUEUE, body), max_message_bytes)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (every thread's socket)."""
        self._conn.close()

    def _call(self, command: bytes, body: dict[str, Any], timeout: float | None = None,
              is_wait: bool = False) -> dict[str, Any]:
        return self._conn.call(command, body, self._r.timeout if timeout is None else timeout, is_wait)

    def enqueue(self, workflow: Workflow | str, payload: Any = None, *, group: str | None = None,
                delay: float | None = None, priority: int = 0, key: str | None = None,
                key_ttl: float | None = None, id: str | None = None) -> JobId:
        """Enqueue one job; returns its id once the broker has committed it.

        ``priority``: higher runs first within the group. ``key``: while a job with this key is
        pending, scheduled or running (and ``key_ttl`` seconds after), enqueue returns that job's
        id with ``.deduplicated`` set and enqueues nothing. ``id``: the job's id (one returned by
        an earlier enqueue, or carried by its ``BrokerUnreachable``); a job that already has it
        is returned as it is, so retrying after an unknown outcome never makes a duplicate.
        Raises ``BrokerUnreachable`` (outcome unknown, ids in ``.job_ids``) on timeout.
        """
        return self.enqueue_many(workflow, [payload], group=group, delay=delay, priority=priority, key=key,
                                 key_ttl=key_ttl, ids=None if id is None else [id])[0]

    def enqueue_many(self, workflow: Workflow | str, payloads: Iterable[Any], *, group: str | None = None,
                     delay: float | None = None, priority: int = 0, key: str | None = None,
                     key_ttl: float | None = None, ids: Iterable[str] | None = None) -> list[JobId]:
        """Enqueue many jobs in one round trip and one transaction (``ids``: one per payload, see ``enqueue``).
        Calls made at once from several threads leave as one ENQUEUE, each answered with its own
        ids (``client/combine.py``)."""
        items = self._r.job_items(workflow, payloads, group, delay, priority, key, key_ttl, ids)
        if not items:
            return []
        try:
            if not self._combiner.alone(items):
                reply = self._combiner.enqueue(items)
            else:  # sent alone, as the combiner would; the ids' text is made while the broker works
                made, meanwhile = self._r.early_ids(items)
                reply = self._conn.call(P.ENQUEUE, {"jobs": items}, self._r.timeout, meanwhile=meanwhile)
                return self._r.ids_from(reply, items, made)
        except BrokerUnreachable as exc:
            raise self._r.unknown_outcome(exc, items) from None
        return self._r.ids_from(reply, items)

    def run(self, workflow: Workflow | str, payload: Any = None, *, group: str | None = None,
            delay: float | None = None, priority: int = 0, key: str | None = None,
            key_ttl: float | None = None, id: str | None = None, timeout: float | None = None) -> Result:
        """Enqueue one job and wait until it is final, in one trip: the ENQUEUE and its WAIT leave
        in one write, and the broker stores the job and registers the wait in one pass.

        Arguments as for ``enqueue``; ``timeout``: seconds from the call until ``WaitTimeout``
        (default the client's), whose ``job_id`` names the job, which goes on. A held ``key``
        waits for the job that holds it. The enqueue raises as ``enqueue`` does.
        """
        items, limit, deadline = self._r.run_job(workflow, payload, group, delay, priority, key, key_ttl, id, timeout)
        made = items[0]["id"]
        with self._r.run_errors(items, limit):
            reply, final = self._conn.call_then_wait(P.ENQUEUE, {"jobs": items}, self._r.timeout, made, limit,
                                                     lambda r: _made(r, made))
        if final is None:  # a held key answered with another job: wait for that one
            return self.wait(self._r.ids_from(reply, items)[0], max(deadline - time.monotonic(), 0.0))
        return Result.from_record(final["job"])

    def cancel(self, job_id: str) -> CancelResult:
        """Cancel a job: pending or scheduled at once; a running one is told to stop."""
        body = self._call(P.CANCEL, {"id": id_from_str(job_id)})
        return CancelResult(bool(body["cancelled"]), body["state"], body["message"])

    def events(self, group: str | None = None, workflow: str | None = None,
               timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Lifecycle events as they happen (queued, started, completed, failed, retrying,
        dead_letter, cancelled). Stops after ``timeout`` seconds without an event, if given."""
        sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        apply_client_curve(sub, self._r.curve)
        connect(sub, self._r.events_endpoint(self._call(P.STATS, {})))
        prefix = b"" if group is None else f"{group}\0".encode() + (b"" if workflow is None else f"{workflow}\0".encode())
        sub.setsockopt(zmq.SUBSCRIBE, prefix)
        try:
            while True:
                if not sub.poll(None if timeout is None else int(timeout * 1000)):
                    return
                _, body = sub.recv_multipart()
                event = P.unpack(body)
                if workflow is None or event.get("workflow") == workflow:
                    yield event_of(event)
        finally:
            sub.close(0)

    def get(self, job_id: str) -> Result | None:
        """The job's current state, or None if the broker has no such job."""
        record = self._call(P.GET, {"ids": [id_from_str(job_id)]})["jobs"][0]
        return None if record is None else Result.from_record(record)

    def wait(self, job_id: str, timeout: float | None = None) -> Result:
        """Block until the job is final (pushed by the broker, never polled)."""
        limit = self._r.timeout if timeout is None else timeout
        try:
            return Result.from_record(self._call(P.WAIT, {"id": id_from_str(job_id)}, limit, is_wait=True)["job"])
        except WaitTimeout as exc:
            raise WaitTimeout(f"job {job_id} did not finish within {limit}s", str(job_id)) from exc

    def steps(self, job_id: str) -> list[StepInfo]:
        """The stored steps of a workflow run, in the order they finished."""
        body = self._call(P.STEPS, {"id": id_from_str(job_id)})
        return StepInfo.all_from(body["steps"])

    def history(self, job_id: str) -> list[HistoryEntry]:
        """Every logged transition of a job, oldest first (kept after the job itself expires).

        The broker reads the whole log for it, one read per connection at a time: while one of
        this client's is running (another thread's), this one waits its turn, up to the timeout."""
        deadline = time.monotonic() + self._r.timeout
        pause = 0.02
        while True:
            try:
                body = self._call(P.HISTORY, {"id": id_from_str(job_id)})
                return [HistoryEntry.from_row(row) for row in body["entries"]]
            except RemoteError as exc:
                if exc.code != P.E_BUSY or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(0.5, pause * 2)

    def storage(self) -> dict[str, Any]:
        """Sizes of the broker's state, log and snapshots (bytes), and whether it refuses enqueues."""
        return dict(self._call(P.STORAGE, {})["storage"])

    def cron(self) -> list[dict[str, Any]]:
        """Cron entries with their last and next fire times (Unix ms)."""
        return list(self._call(P.CRON, {})["entries"])

    def stats(self) -> Stats:
        """Per-group counters (cheap: the broker keeps them as jobs change)."""
        body = self._call(P.STATS, {})
        out = Stats(body["groups"])
        out.unrouted = body.get("unrouted", {})
        return out

    def dead_letters(self, group: str | None = None, limit: int = 1000) -> list[Result]:
        """Jobs that ran out of retries (or failed permanently), all groups unless ``group``."""
        body: dict[str, Any] = {"limit": limit}
        if group is not None:
            body["group"] = group
        return [Result.from_record(r) for r in self._call(P.DEAD, body)["jobs"]]

    def requeue(self, job_id: str) -> bool:
        """Put a dead job back in its queue with a fresh retry budget; False if it is not dead."""
        return bool(self._call(P.REQUEUE, {"ids": [id_from_str(job_id)]})["requeued"])

    def requeue_all(self, group: str | None = None) -> int:
        """Requeue every dead job (of ``group``); returns how many."""
        body: dict[str, Any] = {"all": True}
        if group is not None:
            body["group"] = group
        return len(self._call(P.REQUEUE, body)["requeued"])

    def jobs(self, state: str | None = None, group: str | None = None, limit: int = 100) -> list[Result]:
        """Active jobs (pending, scheduled, running), oldest first."""
        return [Result.from_record(r) for r in self._call(P.JOBS, _jobs_body(state, group, limit))["jobs"]]

    def workers(self, group: str | None = None) -> list[dict[str, Any]]:
        """Connected workers (of ``group``): ``name``, ``group``, ``host``, ``pid``, ``slots``, ``busy``,
        ``jobs`` (ids of the jobs it holds), ``workflows``, ``last_seen_s`` and, for a worker on the
        broker's host, ``rss_bytes``."""
        return _workers(self._call(P.WORKERS, _group_body(group)))


class AsyncClient:
    """The same API for asyncio code; concurrent calls are pipelined on one socket."""

    def __init__(self, endpoint: str | None = None, timeout: float = 10.0,
                 max_message_bytes: int = P.DEFAULT_MAX_MESSAGE_BYTES, *, key: str | None = None,
                 broker_key: str | None = None, config: str | None = None) -> None:
        """``key``/``broker_key``/``config``: as for ``Client``."""
        self._r = Requests(endpoint, timeout, max_message_bytes, key, broker_key, config)
        self.endpoint = self._r.endpoint
        self._conn = AsyncConnection(self.endpoint, self._r.curve)
        self._batcher = EnqueueBatcher(lambda body: self._send(P.ENQUEUE, body), max_message_bytes)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection."""
        await self._conn.close()

    async def _send(self, command: bytes, body: dict[str, Any], timeout: float | None = None,
                    is_wait: bool = False) -> dict[str, Any]:
        return await self._conn.call(command, body, self._r.timeout if timeout is None else timeout, is_wait)

    async def enqueue(self, workflow: Workflow | str, payload: Any = None, *, group: str | None = None,
                      delay: float | None = None, priority: int = 0, key: str | None = None,
                      key_ttl: float | None = None, id: str | None = None) -> JobId:
        """Enqueue one job; returns its id once the broker has committed it (see ``Client.enqueue``)."""
        ids = await self.enqueue_many(workflow, [payload], group=group, delay=delay, priority=priority, key=key,
                                      key_ttl=key_ttl, ids=None if id is None else [id])
        return ids[0]

    async def enqueue_many(self, workflow: Workflow | str, payloads: Iterable[Any], *, group: str | None = None,
                           delay: float | None = None, priority: int = 0, key: str | None = None,
                           key_ttl: float | None = None, ids: Iterable[str] | None = None) -> list[JobId]:
        """Enqueue many jobs in one round trip and one transaction. Calls made concurrently (in
        one turn of the event loop) leave as one ENQUEUE, each answered with its own ids
        (``client/coalesce.py``)."""
        items = self._r.job_items(workflow, payloads, group, delay, priority, key, key_ttl, ids)
        if not items:
            return []
        try:
            if not self._batcher.alone(items):
                reply = await self._batcher.enqueue(items)
            else:  # sent alone, as the batcher would; the ids' text is made while the broker works
                made, meanwhile = self._r.early_ids(items)
                reply = await self._conn.call(P.ENQUEUE, {"jobs": items}, self._r.timeout, meanwhile=meanwhile)
                return self._r.ids_from(reply, items, made)
        except BrokerUnreachable as exc:
            raise self._r.unknown_outcome(exc, items) from None
        return self._r.ids_from(reply, items)

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
            raise WaitTimeout(f"job {job_id} did not finish within {limit}s", str(job_id)) from exc
        return Result.from_record(body["job"])

    async def run(self, workflow: Workflow | str, payload: Any = None, *, group: str | None = None,
                  delay: float | None = None, priority: int = 0, key: str | None = None,
                  key_ttl: float | None = None, id: str | None = None, timeout: float | None = None) -> Result:
        """Enqueue one job and wait until it is final, the ENQUEUE and its WAIT sent together (see ``Client.run``)."""
        items, limit, deadline = self._r.run_job(workflow, payload, group, delay, priority, key, key_ttl, id, timeout)
        made = items[0]["id"]
        with self._r.run_errors(items, limit):
            reply, final = await self._conn.call_then_wait(P.ENQUEUE, {"jobs": items}, self._r.timeout, made, limit,
                                                           lambda r: _made(r, made))
        if final is None:
            return await self.wait(self._r.ids_from(reply, items)[0], max(deadline - time.monotonic(), 0.0))
        return Result.from_record(final["job"])

    async def steps(self, job_id: str) -> list[StepInfo]:
        """The stored steps of a workflow run."""
        return StepInfo.all_from((await self._send(P.STEPS, {"id": id_from_str(job_id)}))["steps"])

    async def history(self, job_id: str) -> list[HistoryEntry]:
        """Every logged transition of a job, oldest first (waits its turn like ``Client.history``)."""
        deadline = time.monotonic() + self._r.timeout
        pause = 0.02
        while True:
            try:
                body = await self._send(P.HISTORY, {"id": id_from_str(job_id)})
                return [HistoryEntry.from_row(row) for row in body["entries"]]
            except RemoteError as exc:
                if exc.code != P.E_BUSY or time.monotonic() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(0.5, pause * 2)

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

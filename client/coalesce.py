"""Concurrent ``AsyncClient`` enqueues made in one turn of the event loop leave as one ENQUEUE.

64 tasks each awaiting ``enqueue`` cost the broker 64 messages to decode, admit, reply to and
(in one pass) commit, and cost the client 64 sends and receives; as one ENQUEUE of 64 jobs
they take the broker's bulk path instead (BENCHMARKS.md, "AsyncClient, 64 in flight"). Each
caller still gets its own ids, and only once the broker has synced them: the merged reply is
cut back into one reply per caller.

ENQUEUE is all or nothing, so a refusal of the merged request (storage full, a saturated
group, an item the broker rejects) applied nothing; one caller's refusal must not become
another's, so each caller's jobs are then asked for again alone and get their own answer.
A broker that does not answer is everyone's answer: each caller raises its own
``BrokerUnreachable`` naming its own ids (the outcome is unknown; a retry with those ids is
safe, ids being the client's).
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from shoal.errors import BrokerUnreachable, ShoalError

# Jobs in one merged ENQUEUE, at most; a caller's own call of this many goes alone. Small
# enough that 64 tasks in flight make two staggered requests, so the client prepares one while
# the broker commits the other: 64 in flight, cap 16: 13.0k/s, 32: 15.6k/s, 64: 11.7k/s.
MAX_ITEMS = 32
REPLY_LISTS = ("ids", "existed", "deduplicated")  # per item in an ENQUEUE reply

Send = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def payload_bytes(items: list[dict[str, Any]]) -> int:
    return sum(len(item["payload"]) for item in items)


def goes_alone(count: int, size: int, max_bytes: int) -> bool:
    """Whether a call of ``count`` jobs and ``size`` payload bytes is sent on its own, never merged."""
    return count >= MAX_ITEMS or size >= max_bytes


def split_reply(reply: dict[str, Any], counts: list[int]) -> list[dict[str, Any]]:
    """A merged ENQUEUE's reply cut back into one reply per caller (``counts``: each caller's jobs)."""
    parts, start = [], 0
    for count in counts:
        parts.append({key: reply[key][start:start + count] for key in REPLY_LISTS if key in reply})
        start += count
    return parts
Waiting = tuple[list[dict[str, Any]], "asyncio.Future[dict[str, Any]]"]


class EnqueueBatcher:
    """Gathers the enqueues of one loop turn; ``send`` makes one ENQUEUE request."""

    def __init__(self, send: Send, max_message_bytes: int) -> None:
        self._send = send
        self._max_bytes = max_message_bytes // 2  # room left for the ids, keys and framing
        self._waiting: list[Waiting] = []
        self._items = 0
        self._bytes = 0
        self._tasks: set[asyncio.Task[None]] = set()  # held until done (the loop keeps weak refs only)

    def alone(self, items: list[dict[str, Any]]) -> bool:
        """Whether ``enqueue`` would send these on their own."""
        return goes_alone(len(items), payload_bytes(items), self._max_bytes)

    async def enqueue(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """The ENQUEUE reply for ``items`` (their part of it, when merged with others)."""
        size = payload_bytes(items)
        if goes_alone(len(items), size, self._max_bytes):
            return await self._send({"jobs": items})  # big enough on its own
        if self._items + len(items) > MAX_ITEMS or self._bytes + size > self._max_bytes:
            self._flush()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._flush)  # after every task made ready in this turn has had its say
        self._waiting.append((items, future))
        self._items += len(items)
        self._bytes += size
        return await future

    def _flush(self) -> None:
        batch, self._waiting, self._items, self._bytes = self._waiting, [], 0, 0
        if not batch:
            return
        task = asyncio.ensure_future(self._together(batch) if len(batch) > 1 else self._alone(*batch[0]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _alone(self, items: list[dict[str, Any]], future: "asyncio.Future[dict[str, Any]]") -> None:
        try:
            reply = await self._send({"jobs": items})
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, whose error it is
            _fail(future, exc)
            if not isinstance(exc, Exception):
                raise
            return
        if not future.done():
            future.set_result(reply)

    async def _together(self, batch: list[Waiting]) -> None:
        try:
            reply = await self._send({"jobs": [item for items, _ in batch for item in items]})
        except BrokerUnreachable as exc:
            for _, future in batch:
                _fail(future, exc)
            return
        except ShoalError:  # refused as a whole: nothing was stored; each asks alone
            await asyncio.gather(*(self._alone(items, future) for items, future in batch))
            return
        except BaseException as exc:  # noqa: BLE001 - a closed client, a cancelled loop: everyone's
            for _, future in batch:
                _fail(future, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), part in zip(batch, split_reply(reply, [len(items) for items, _ in batch])):
            if not future.done():
                future.set_result(part)


def _fail(future: "asyncio.Future[dict[str, Any]]", exc: BaseException) -> None:
    if future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(exc)

"""The async client's connection: one zmq.asyncio DEALER socket on the caller's event loop.

No thread: a request is sent from the calling task, a reader task on the same loop
matches replies to requests by ``rid`` and resolves their futures, and one timer per
request re-sends it or ends it at its deadline. Many tasks pipeline onto the socket,
so concurrent enqueues reach the broker together and share its group commits. The
rules (re-sends, matching, deadlines, WAIT) are ``connection.Request``'s.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import zmq
import zmq.asyncio

from .connection import Request, decode_reply


class _InFlight:
    __slots__ = ("req", "future", "timer")

    def __init__(self, req: Request, future: "asyncio.Future[dict[str, Any]]") -> None:
        self.req = req
        self.future = future
        self.timer: asyncio.TimerHandle | None = None


def _send(sock: zmq.asyncio.Socket, frames: list[bytes]) -> None:
    """Send now or not at all: a full queue (the broker is away) is left to the re-send timer."""
    done: "asyncio.Future[Any]" = sock.send_multipart(frames, flags=zmq.DONTWAIT)  # type: ignore[assignment]
    exc = done.exception()
    if exc is not None and not isinstance(exc, zmq.Again):
        raise exc


class AsyncConnection:
    """Requests to the broker from asyncio tasks, on the running loop's own socket."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.closed = False
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: "asyncio.Task[None] | None" = None
        self._pending: dict[int, _InFlight] = {}

    async def call(self, command: bytes, body: dict[str, Any], timeout_s: float,
                   is_wait: bool = False) -> dict[str, Any]:
        """Send a request and wait for its reply (or its error)."""
        sock, loop = self._socket()
        flight = _InFlight(Request(self.endpoint, command, body, timeout_s, is_wait), loop.create_future())
        self._pending[flight.req.rid] = flight
        try:
            _send(sock, flight.req.frames)
            self._arm(flight, loop)
            return await flight.future
        finally:
            self._pending.pop(flight.req.rid, None)
            if flight.timer is not None:
                flight.timer.cancel()

    def _socket(self) -> tuple[zmq.asyncio.Socket, asyncio.AbstractEventLoop]:
        if self.closed:
            raise RuntimeError("the client is closed")
        loop = asyncio.get_running_loop()
        if self._sock is None or self._loop is not loop:
            self._drop()  # first use, or used again from a new loop (asyncio.run twice)
            if self._ctx is None:
                self._ctx = zmq.asyncio.Context()
            self._sock = self._ctx.socket(zmq.DEALER)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.connect(self.endpoint)
            self._loop = loop
            self._reader = loop.create_task(self._read(self._sock))
        return self._sock, loop

    def _arm(self, flight: _InFlight, loop: asyncio.AbstractEventLoop) -> None:
        if flight.timer is not None:
            flight.timer.cancel()
        flight.timer = loop.call_later(max(0.0, flight.req.due() - time.monotonic()), self._on_timer, flight, loop)

    def _on_timer(self, flight: _InFlight, loop: asyncio.AbstractEventLoop) -> None:
        if flight.future.done():
            return
        req, now = flight.req, time.monotonic()
        if now >= req.deadline:
            flight.future.set_exception(req.expired())
            return
        if now >= req.resend_at and self._sock is not None:
            _send(self._sock, req.frames)  # same rid and job ids: safe to repeat
            req.resent(now)
        self._arm(flight, loop)

    async def _read(self, sock: zmq.asyncio.Socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            reply = decode_reply(await sock.recv_multipart())
            if reply is None:
                continue
            command, body = reply
            flight = self._find(command, body)
            if flight is None or flight.future.done():
                continue  # the answer to a request that already timed out, or a re-send's second answer
            outcome = flight.req.outcome(command, body, time.monotonic())
            if outcome is None:
                self._arm(flight, loop)  # asked to try again sooner
            elif isinstance(outcome, dict):
                flight.future.set_result(outcome)
            else:
                flight.future.set_exception(outcome)

    def _find(self, command: bytes, body: dict[str, Any]) -> _InFlight | None:
        rid = body.get("rid")
        if rid is not None:
            return self._pending.get(rid)
        for flight in self._pending.values():  # a refusal without rid: matched by size
            if flight.req.matches(body, command):
                return flight
        return None

    def _drop(self) -> None:
        """Forget the socket and fail what waits on it."""
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        for flight in self._pending.values():
            if not flight.future.done():
                with contextlib.suppress(RuntimeError):  # a future of a loop that has already closed
                    flight.future.set_exception(RuntimeError("the client was closed"))
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    async def close(self) -> None:
        """Close the socket; requests still waiting fail."""
        if self.closed:
            return
        self.closed = True
        reader = self._reader
        self._drop()
        if reader is not None and reader.get_loop() is asyncio.get_running_loop():
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

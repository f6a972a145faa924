"""The async client's connection: one DEALER socket watched by the caller's event loop.

No thread: a request is sent from the calling task; the loop watches the socket's file
descriptor (``add_reader``) and a callback matches replies to requests by ``rid`` and
resolves their futures; one timer per request re-sends it or ends it at its deadline.
Many tasks pipeline onto the socket, so concurrent enqueues reach the broker together
and share its group commits. The rules (re-sends, matching, deadlines, WAIT) are
``connection.Request``'s.

This is what ``zmq.asyncio`` does, without its per-call futures and flag arithmetic
(measured at about a third of the client's CPU per request). ZeroMQ's descriptor only
says "look at the socket"; a send can consume that signal for a reply that arrived
meanwhile, so every send schedules one look at the socket soon after.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import zmq

from shoal import protocol as P
from shoal.errors import UnknownJob
from shoal.links import send_now
from shoal.security import CurveKeys, apply_client_curve
from shoal.sockets import connect, recv_frames

from .connection import Request, decode_reply


class _InFlight:
    __slots__ = ("req", "future", "timer")

    def __init__(self, req: Request, future: "asyncio.Future[dict[str, Any]]") -> None:
        self.req = req
        self.future = future
        self.timer: asyncio.TimerHandle | None = None


class AsyncConnection:
    """Requests to the broker from asyncio tasks, on a socket the running loop watches."""

    def __init__(self, endpoint: str, curve: CurveKeys | None = None) -> None:
        self.endpoint = endpoint
        self.curve = curve
        self.closed = False
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._look_soon = False
        self._pending: dict[int, _InFlight] = {}

    async def call(self, command: bytes, body: dict[str, Any], timeout_s: float,
                   is_wait: bool = False, meanwhile: Callable[[], object] | None = None) -> dict[str, Any]:
        """Send a request and wait for its reply (or its error); ``meanwhile`` runs once the
        request is out, while the broker works on it."""
        loop = self._bind()
        flight = self._start(Request(self.endpoint, command, body, timeout_s, is_wait), loop)
        try:
            if meanwhile is not None:
                meanwhile()
            return await flight.future
        finally:
            self._end(flight)

    async def call_then_wait(self, command: bytes, body: dict[str, Any], timeout_s: float, job_id: bytes,
                             wait_s: float, made: Callable[[dict[str, Any]], bool],
                             meanwhile: Callable[[], object] | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A request and a WAIT on ``job_id`` sent together (see ``Connection.call_then_wait``)."""
        loop = self._bind()
        first = self._start(Request(self.endpoint, command, body, timeout_s), loop)
        wait: _InFlight | None = None
        try:
            wait = self._start(Request(self.endpoint, P.WAIT, {"id": job_id}, wait_s, is_wait=True), loop)
            if meanwhile is not None:
                meanwhile()
            reply = await first.future
            if not made(reply):
                return reply, None
            try:
                return reply, await wait.future
            except UnknownJob:
                return reply, None
        finally:
            self._end(first)
            if wait is not None:
                self._end(wait)

    def _start(self, req: Request, loop: asyncio.AbstractEventLoop) -> _InFlight:
        """Send ``req`` and watch for its reply and its deadline."""
        flight = _InFlight(req, loop.create_future())
        self._pending[req.rid] = flight
        try:
            self._send(req.frames)
            self._arm(flight, loop)
        except BaseException:
            self._end(flight)
            raise
        return flight

    def _end(self, flight: _InFlight) -> None:
        """Stop watching ``flight``; an outcome nobody awaited (a WAIT left behind) is taken, not logged."""
        self._pending.pop(flight.req.rid, None)
        if flight.timer is not None:
            flight.timer.cancel()
        if not flight.future.done():
            flight.future.cancel()
        elif not flight.future.cancelled():
            flight.future.exception()

    def _bind(self) -> asyncio.AbstractEventLoop:
        """The running loop, with the socket open and watched by it."""
        if self.closed:
            raise RuntimeError("the client is closed")
        loop = asyncio.get_running_loop()
        if self._sock is None or self._loop is not loop:
            self._drop()  # first use, or used again from a new loop (asyncio.run twice)
            if self._ctx is None:
                self._ctx = zmq.Context()
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            apply_client_curve(sock, self.curve)
            connect(sock, self.endpoint)
            self._sock, self._fd, self._loop = sock, int(sock.getsockopt(zmq.FD)), loop  # type: ignore[arg-type]
            loop.add_reader(self._fd, self._read)
        return loop

    def _send(self, frames: list[bytes]) -> None:
        assert self._sock is not None and self._loop is not None
        send_now(self._sock, frames)
        if not self._look_soon:  # the send may have taken the descriptor's signal for a reply
            self._look_soon = True
            self._loop.call_soon(self._read)

    def _arm(self, flight: _InFlight, loop: asyncio.AbstractEventLoop) -> None:
        if flight.timer is not None:
            flight.timer.cancel()
        flight.timer = loop.call_later(max(0.0, flight.req.due() - time.monotonic()), self._on_timer, flight, loop)

    def _on_timer(self, flight: _InFlight, loop: asyncio.AbstractEventLoop) -> None:
        if flight.future.done() or self._sock is None:
            return
        req, now = flight.req, time.monotonic()
        if now >= req.deadline:
            flight.future.set_exception(req.expired())
            return
        if now >= req.resend_at:
            self._send(req.frames)  # same rid and job ids: safe to repeat
            req.resent(now)
        self._arm(flight, loop)

    def _read(self) -> None:
        """Take every reply waiting on the socket (called by the loop when its descriptor fires)."""
        self._look_soon = False
        sock = self._sock
        while sock is not None:
            try:
                frames = recv_frames(sock)
            except zmq.Again:
                return
            reply = decode_reply(frames)
            if reply is not None:
                self._deliver(*reply)

    def _deliver(self, command: bytes, body: dict[str, Any]) -> None:
        flight = self._find(command, body)
        if flight is None or flight.future.done():
            return  # the answer to a request that already timed out, or a re-send's second answer
        outcome = flight.req.outcome(command, body, time.monotonic())
        if outcome is None:
            assert self._loop is not None
            self._arm(flight, self._loop)  # asked to try again sooner
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
        """Stop watching and close the socket; fail what waits on it."""
        for flight in self._pending.values():
            if not flight.future.done():
                with contextlib.suppress(RuntimeError):  # a future of a loop that has already closed
                    flight.future.set_exception(RuntimeError("the client was closed"))
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            self._sock.close(0)
            self._sock = None

    async def close(self) -> None:
        """Close the socket; requests still waiting fail."""
        if self.closed:
            return
        self.closed = True
        self._drop()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

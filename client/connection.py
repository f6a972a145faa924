"""The client's one socket, owned by one I/O thread.

Any thread (or asyncio task) submits a request and gets a ``concurrent.futures.Future``;
the I/O thread sends it, matches the reply by request id, and re-sends requests that
got no answer (job ids are made by the client, so a re-sent enqueue never makes a
second job). Many callers share the socket, so their requests reach the broker
together and share its group commits.
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import zmq

from shoal import protocol as P
from shoal.errors import BrokerUnreachable, GroupSaturated, GroupUnhealthy, PayloadError, RemoteError, StorageFull, UnknownJob, WaitTimeout

RESEND_FIRST_S = 1.0
RESEND_MAX_S = 4.0


@dataclass
class _Request:
    frames: list[bytes]
    future: "Future[dict[str, Any]]"
    deadline: float
    resend_at: float
    resend_s: float = RESEND_FIRST_S
    is_wait: bool = False
    timeout_s: float = 0.0
    sent: bool = field(default=False)


class Connection:
    """A DEALER socket to the broker with request ids, re-sends and deadlines."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._ctx = zmq.Context()
        self._rids = itertools.count(1)
        self._inbox: "queue.SimpleQueue[tuple[int, _Request] | None]" = queue.SimpleQueue()
        self._pending: dict[int, _Request] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="shoal-client-io", daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait()

    def request(self, command: bytes, body: dict[str, Any], timeout_s: float, is_wait: bool = False) -> "Future[dict[str, Any]]":
        """Send a request; the future resolves with the reply body or an error."""
        if self._closed:
            raise RuntimeError("the client is closed")
        rid = next(self._rids)
        body["rid"] = rid
        frames = P.encode(command, body)
        now = time.monotonic()
        fut: "Future[dict[str, Any]]" = Future()
        self._inbox.put((rid, _Request(frames, fut, now + timeout_s, now + RESEND_FIRST_S,
                                       is_wait=is_wait, timeout_s=timeout_s)))
        self._wake()
        return fut

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        """Stop the I/O thread; requests still pending fail."""
        if self._closed:
            return
        self._closed = True
        self._inbox.put(None)
        self._wake()
        self._thread.join(5)

    # --- the I/O thread --------------------------------------------------------------
    def _loop(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        self._ready.set()
        try:
            while True:
                timeout_ms = self._next_timer_ms()
                events = dict(poller.poll(timeout_ms))
                if self._wake_r in events:
                    os.read(self._wake_r, 65536)
                if not self._take_new(sock):
                    return
                if sock in events:
                    self._read_replies(sock)
                self._timers(sock)
        finally:
            for req in self._pending.values():
                if not req.future.done():
                    req.future.set_exception(RuntimeError("the client was closed"))
            sock.close(0)
            self._ctx.term()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _take_new(self, sock: zmq.Socket) -> bool:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return True
            if item is None:
                return False
            rid, req = item
            self._pending[rid] = req
            sock.send_multipart(req.frames)

    def _read_replies(self, sock: zmq.Socket) -> None:
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                command, body = P.decode(frames)
            except P.ProtocolError:
                continue
            rid = body.get("rid")
            if rid is None and command == P.ERROR and isinstance(body.get("size"), int):
                rid = self._match_by_size(body["size"])  # refused before its rid could be read
            req = self._pending.pop(rid, None)  # type: ignore[arg-type]
            if req is None or req.future.done():
                continue
            if command == P.REPLY:
                req.future.set_result(body)
            else:
                req.future.set_exception(_remote_error(body))

    def _match_by_size(self, size: int) -> int | None:
        for rid, req in self._pending.items():
            if len(req.frames[2]) == size:
                return rid
        return None

    def _next_timer_ms(self) -> int:
        if not self._pending:
            return 1000
        soonest = min(min(r.deadline, r.resend_at) for r in self._pending.values())
        return max(0, min(1000, int((soonest - time.monotonic()) * 1000) + 1))

    def _timers(self, sock: zmq.Socket) -> None:
        now = time.monotonic()
        for rid, req in list(self._pending.items()):
            if now >= req.deadline:
                del self._pending[rid]
                if req.is_wait:
                    req.future.set_exception(WaitTimeout(f"the job did not finish within {req.timeout_s}s"))
                else:
                    req.future.set_exception(BrokerUnreachable(
                        f"no answer from the broker at {self.endpoint} within {req.timeout_s}s"))
            elif now >= req.resend_at:
                sock.send_multipart(req.frames)  # same rid and job ids: safe to repeat
                req.resend_s = min(req.resend_s * 2, RESEND_MAX_S)
                req.resend_at = now + req.resend_s


def _remote_error(body: dict[str, Any]) -> Exception:
    code, message = str(body.get("code")), str(body.get("message"))
    if code == P.E_UNKNOWN_JOB:
        return UnknownJob(message)
    if code == P.E_SATURATED:
        return GroupSaturated(message, float(body.get("retry_after_s") or 1.0))
    if code == P.E_GROUP_UNHEALTHY:
        return GroupUnhealthy(message)
    if code == P.E_STORAGE:
        return StorageFull(message)
    if code == P.E_TOO_LARGE:
        return PayloadError(message)
    return RemoteError(code, message)

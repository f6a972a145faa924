"""The client's sockets: one DEALER per calling thread, used only by that thread.

A request is sent and its reply received on the caller's own thread: no hand-off to an
I/O thread, no futures, no wake-up pipe. pyzmq sockets are not thread-safe (the context
is), so each thread gets its own socket, made on its first request and closed by
``close()``. Threads calling at once still reach the broker together (it drains its
socket each pass), so their enqueues share group commits.

Without CURVE keys the thread's socket is not libzmq's: ``shoal.zmtp`` speaks ZMTP on a plain
socket, so the caller's thread writes the request to the kernel and reads the reply from it,
and libzmq's I/O thread is not woken twice a call (a loopback round trip to a spinning ROUTER
of 51 µs instead of 90–97 on the benchmark VM). With keys it is a libzmq DEALER with CURVE.

``Request`` holds what both the sync and the async connection promise: unanswered
requests are re-sent with backoff (job ids are made by the client, so a re-sent enqueue
never makes a second job), replies are matched by ``rid`` (a ``too_large`` refusal, sent
before the broker could read the rid, by the size of the body), a WAIT's reply is pushed
when the job is final, and a deadline ends the request with ``BrokerUnreachable`` (or
``WaitTimeout`` for a WAIT).
"""
from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import zmq

from shoal import protocol as P
from shoal.errors import (
    BrokerUnreachable, Forbidden, GroupSaturated, GroupUnhealthy, PayloadError, RemoteError, StorageFull, TooManyWaits,
    UnknownJob, WaitTimeout,
)
from shoal.links import Link, open_link, plain
from shoal.security import CurveKeys

RESEND_FIRST_S = 1.0
RESEND_MAX_S = 4.0
# A WAIT the broker could not register because its commit failed: ask again soon, quietly.
STORAGE_RETRY_FIRST_S = 0.05
STORAGE_RETRY_MAX_S = 1.0
# A call blocked in poll looks at ``closed`` this often, so close() from another thread ends it.
CLOSE_CHECK_S = 0.2

_T = TypeVar("_T")
_rids = itertools.count(1)  # thread-safe under the GIL; unique per process, so per socket too


class Request:
    """One request in flight: its frames, its deadline and when to re-send it."""

    __slots__ = ("rid", "frames", "endpoint", "timeout_s", "is_wait", "deadline", "resend_at", "resend_s",
                 "storage_s")

    def __init__(self, endpoint: str, command: bytes, body: dict[str, Any], timeout_s: float,
                 is_wait: bool = False) -> None:
        self.rid = next(_rids)
        body["rid"] = self.rid
        self.frames = P.encode(command, body)
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.is_wait = is_wait
        now = time.monotonic()
        self.deadline = now + timeout_s
        self.resend_s = RESEND_FIRST_S
        self.resend_at = now + RESEND_FIRST_S
        self.storage_s = STORAGE_RETRY_FIRST_S

    def due(self) -> float:
        """When something must happen next (a re-send or the deadline), on ``time.monotonic()``."""
        return min(self.deadline, self.resend_at)

    def matches(self, body: dict[str, Any], command: bytes) -> bool:
        """Whether a reply is this request's (a ``too_large`` refusal carries no rid, only the size)."""
        rid = body.get("rid")
        if rid is None and command == P.ERROR and isinstance(body.get("size"), int):
            return body["size"] == len(self.frames[2])
        return rid == self.rid

    def outcome(self, command: bytes, body: dict[str, Any], now: float) -> dict[str, Any] | Exception | None:
        """The reply body, the error to raise, or None to keep waiting (and re-send sooner)."""
        if command == P.REPLY:
            return body
        if self.is_wait and body.get("code") == P.E_STORAGE:
            # The broker could not commit just now; the job is unharmed and the wait goes on.
            self.resend_at = now + self.storage_s
            self.storage_s = min(self.storage_s * 2, STORAGE_RETRY_MAX_S)
            return None
        return remote_error(body)

    def resent(self, now: float) -> None:
        """Note a re-send: the next one comes after twice the wait, up to ``RESEND_MAX_S``."""
        self.resend_s = min(self.resend_s * 2, RESEND_MAX_S)
        self.resend_at = now + self.resend_s

    def expired(self) -> Exception:
        """The error for a request whose deadline passed."""
        if self.is_wait:
            return WaitTimeout(f"the job did not finish within {self.timeout_s}s")
        return BrokerUnreachable(f"no answer from the broker at {self.endpoint} within {self.timeout_s}s")


def decode_reply(frames: list[bytes]) -> tuple[bytes, dict[str, Any]] | None:
    """A reply's command and body; None for anything malformed (the broker never sends that)."""
    try:
        return P.decode(frames)
    except P.ProtocolError:
        return None


class _ThreadSocket:
    """A thread's socket; ``lock`` is held while the thread uses it, so close() knows when it may."""

    __slots__ = ("thread", "sock", "lock")

    def __init__(self, sock: Link) -> None:
        self.thread = threading.current_thread()
        self.sock: Link | None = sock
        self.lock = threading.Lock()


class Connection:
    """Requests to the broker, on a socket per calling thread, with re-sends and deadlines."""

    def __init__(self, endpoint: str, curve: CurveKeys | None = None) -> None:
        self.endpoint = endpoint
        self.curve = curve
        # ZMTP on the caller's thread unless the socket needs CURVE or the endpoint is libzmq-only syntax
        self._ctx: zmq.Context | None = None if plain(endpoint, curve) else zmq.Context()
        self._local = threading.local()
        self._sockets: list[_ThreadSocket] = []
        self._lock = threading.Lock()
        self._open_count = 0
        self.closed = False

    def call(self, command: bytes, body: dict[str, Any], timeout_s: float, is_wait: bool = False,
             meanwhile: Callable[[], object] | None = None) -> dict[str, Any]:
        """Send a request on this thread's socket and block until its reply (or raise);
        ``meanwhile`` runs once the request is out, while the broker works on it."""
        req = Request(self.endpoint, command, body, timeout_s, is_wait)
        return self._on_thread(lambda link: self._exchange(link, req, meanwhile))

    def call_then_wait(self, command: bytes, body: dict[str, Any], timeout_s: float, job_id: bytes, wait_s: float,
                       made: Callable[[dict[str, Any]], bool],
                       meanwhile: Callable[[], object] | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A request and a WAIT on ``job_id`` in one write, so the broker registers the wait in
        the pass that handles the request: the request's reply, then the WAIT's (the job's final
        record). The second is None when ``made(reply)`` says the request did not make that job
        (a held key answered with another) or the broker did not know it: wait for it anew.
        The WAIT's deadline is ``wait_s`` from now; a WAIT that went missing is re-sent as any is."""
        req = Request(self.endpoint, command, body, timeout_s)
        wait = Request(self.endpoint, P.WAIT, {"id": job_id}, wait_s, is_wait=True)

        def both(link: Link) -> tuple[dict[str, Any], dict[str, Any] | None]:
            link.send_many([req.frames, wait.frames], min(req.deadline - time.monotonic(), RESEND_FIRST_S))
            reply = self._exchange(link, req, meanwhile, sent=True)
            if not made(reply):
                return reply, None  # the WAIT's answer (no such job) is dropped as a stale reply
            try:
                return reply, self._exchange(link, wait, sent=True)
            except UnknownJob:
                return reply, None
        return self._on_thread(both)

    def _on_thread(self, exchange: Callable[[Link], _T]) -> _T:
        """Run ``exchange`` on this thread's socket, which it holds meanwhile."""
        mine: _ThreadSocket | None = getattr(self._local, "socket", None)
        if mine is None:
            mine = self._open()
        with mine.lock:
            try:
                if mine.sock is None or self.closed:
                    raise RuntimeError("the client is closed")
                return exchange(mine.sock)
            finally:
                if self.closed:
                    self._close_one(mine)

    def _exchange(self, link: Link, req: Request, meanwhile: Callable[[], object] | None = None,
                  sent: bool = False) -> dict[str, Any]:
        if not sent:
            link.send(req.frames, min(req.deadline - time.monotonic(), RESEND_FIRST_S))
        if meanwhile is not None:
            meanwhile()
        while True:
            now = time.monotonic()
            wait_s = min(req.due() - now, CLOSE_CHECK_S)
            if wait_s > 0 and link.wait(wait_s):
                outcome = self._read(link, req)
                if isinstance(outcome, dict):
                    return outcome
                if outcome is not None:
                    raise outcome
                continue
            if self.closed:
                raise RuntimeError("the client was closed")
            now = time.monotonic()
            if now >= req.deadline:
                error = req.expired()
                if link.refused and isinstance(error, BrokerUnreachable):
                    error = BrokerUnreachable(f"{error}: {link.refused}")
                raise error
            if now >= req.resend_at:
                link.send(req.frames, min(req.deadline - now, RESEND_FIRST_S))  # same rid and job ids: safe to repeat
                req.resent(now)

    @staticmethod
    def _read(link: Link, req: Request) -> dict[str, Any] | Exception | None:
        """Read what has arrived; replies to earlier requests that timed out are dropped."""
        while (frames := link.recv()) is not None:
            reply = decode_reply(frames)
            if reply is not None and req.matches(reply[1], reply[0]):
                outcome = req.outcome(reply[0], reply[1], time.monotonic())
                if outcome is not None:
                    return outcome
        return None

    def _open(self) -> _ThreadSocket:
        with self._lock:
            if self.closed:
                raise RuntimeError("the client is closed")
            self._reap()
            link = open_link(self._ctx, self.endpoint, self.curve)  # a ZMTP link connects on its first send
            mine = _ThreadSocket(link)
            self._sockets.append(mine)
            self._open_count += 1
        self._local.socket = mine
        return mine

    def _reap(self) -> None:
        """Close the sockets of threads that have ended (a thread pool's churn must not pile them up)."""
        for entry in [e for e in self._sockets if not e.thread.is_alive()]:
            self._sockets.remove(entry)
            self._close_socket(entry)

    def _close_socket(self, entry: _ThreadSocket) -> None:
        """Close one socket (the caller holds ``_lock``); the last one closed ends the context."""
        if entry.sock is None:
            return
        entry.sock.close()
        entry.sock = None
        self._open_count -= 1
        if self.closed and self._open_count == 0 and self._ctx is not None:
            self._ctx.term()

    def _close_one(self, entry: _ThreadSocket) -> None:
        with self._lock:
            self._close_socket(entry)

    def close(self) -> None:
        """Close every socket; a call still blocked on another thread fails within ``CLOSE_CHECK_S``."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            for entry in self._sockets:
                if entry.lock.acquire(blocking=False):  # idle: its thread is not inside a call
                    try:
                        self._close_socket(entry)
                    finally:
                        entry.lock.release()
            if self._open_count == 0 and self._ctx is not None:
                self._ctx.term()


def remote_error(body: dict[str, Any]) -> Exception:
    """The exception for an ERROR reply, by its code."""
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
    if code == P.E_TOO_MANY_WAITS:
        return TooManyWaits(message)
    if code == P.E_FORBIDDEN:
        return Forbidden(message)
    return RemoteError(code, message)

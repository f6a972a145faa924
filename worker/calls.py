"""Requests from handler threads to the broker (step results), matched to replies by request id.

A handler thread queues a request and waits on a future; the worker's I/O thread sends it,
re-sends it while unanswered (the broker stores a step once, so repeating is safe), and
resolves the future when the REPLY or ERROR with its ``rid`` comes back.
"""
from __future__ import annotations

import itertools
import queue
from concurrent.futures import Future
from typing import Any, Callable

from shoal import protocol as P
from shoal.errors import RemoteError

CALL_RESEND_S = 2.0


class Calls:
    """Open requests of one worker; ``put`` from any thread, the rest from the I/O thread."""

    def __init__(self) -> None:
        self._new: "queue.SimpleQueue[tuple[bytes, dict[str, Any], Future[dict[str, Any]]]]" = queue.SimpleQueue()
        self._open: dict[int, tuple[list[bytes], Future[dict[str, Any]], float]] = {}
        self._rids = itertools.count(1)

    def put(self, command: bytes, body: dict[str, Any]) -> "Future[dict[str, Any]]":
        """Queue a request; the future resolves with the broker's reply body."""
        fut: "Future[dict[str, Any]]" = Future()
        self._new.put((command, body, fut))
        return fut

    def send_due(self, now: float, send: Callable[[list[bytes]], None]) -> None:
        """Send new requests, and again those unanswered for ``CALL_RESEND_S``."""
        if not self._open and self._new.empty():
            return  # no step is waiting on the broker (every pass of a plain job's loop)
        while True:
            try:
                command, body, fut = self._new.get_nowait()
            except queue.Empty:
                break
            rid = next(self._rids)
            body["rid"] = rid
            self._open[rid] = (P.encode(command, body), fut, now)
            send(self._open[rid][0])
        for rid, (frames, fut, sent) in list(self._open.items()):
            if now - sent >= CALL_RESEND_S:
                self._open[rid] = (frames, fut, now)
                send(frames)

    def answer(self, command: bytes, body: dict[str, Any]) -> None:
        """A REPLY or ERROR carrying a ``rid``: resolve its request (a repeat answer is ignored)."""
        entry = self._open.pop(body.get("rid"), None)  # type: ignore[arg-type]
        if entry is None or entry[1].done():
            return
        if command == P.REPLY:
            entry[1].set_result(body)
        else:
            entry[1].set_exception(RemoteError(str(body.get("code")), str(body.get("message"))))

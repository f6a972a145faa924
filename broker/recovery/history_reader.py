"""HISTORY answered off the broker's loop (``shoal job why ID``).

The log has no per-job index, so one job's history is a scan of the whole log (~0.6 s per
million entries). Run in the loop, that scan held up every enqueue behind it. Here a
thread of its own does it: at nice 19, in a read transaction of its own
(``Store.background_read``, which gives way when the map must grow), letting go of the
GIL every few thousand entries; the finished reply reaches the loop over an inproc socket
and the loop sends it. A request is handed over only after the commit of the pass that
received it, so the scan sees every entry decided up to then.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time

import zmq

from shoal import protocol as P
from shoal.ids import id_to_str

from .history import history_rows
from ..storage.store import Store

log = logging.getLogger("shoal.broker")
MAX_HISTORY = 10_000  # rows in one reply; the oldest beyond it are counted, not sent
SCAN_REST = 2.0  # after a scan of t seconds the reader rests 2t (at most 1 s)


def history_reply(rid: int, job_id: bytes, entries: list[tuple[int, list]], skipped: int) -> list[bytes]:
    """The REPLY (or unknown-job ERROR) frames for one job's log entries, oldest first."""
    if not entries:
        return P.encode(P.ERROR, {"rid": rid, "code": P.E_UNKNOWN_JOB, "message":
                                  f"no log entries for job {id_to_str(job_id)} (never enqueued, or its log was compacted)"})
    skipped += max(0, len(entries) - MAX_HISTORY)
    return P.encode(P.REPLY, {"rid": rid, "entries": history_rows(job_id, entries[-MAX_HISTORY:]),
                              "skipped": skipped})


class HistoryReader:
    """One thread answering HISTORY requests; the loop polls ``replies`` and forwards what comes."""

    def __init__(self, store: Store, ctx: zmq.Context) -> None:  # type: ignore[type-arg]
        self.store = store
        self._ctx = ctx
        self.endpoint = f"inproc://shoal-history-{id(self):x}"
        self.replies = ctx.socket(zmq.PULL)
        self.replies.setsockopt(zmq.LINGER, 0)
        self.replies.bind(self.endpoint)
        self._requests: queue.SimpleQueue[tuple[bytes, int, bytes] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="shoal-history", daemon=True)
        self._thread.start()

    def submit(self, identity: bytes, rid: int, job_id: bytes) -> None:
        """Answer later (call after the commit of the pass that received the request)."""
        self._requests.put((identity, rid, job_id))

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join(timeout=2.0)
        self.replies.close(0)

    def _run(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # per thread on Linux
        except (OSError, AttributeError):
            pass
        out = self._ctx.socket(zmq.PUSH)
        out.setsockopt(zmq.LINGER, 0)
        out.connect(self.endpoint)
        try:
            while (request := self._requests.get()) is not None:
                identity, rid, job_id = request
                started = time.monotonic()
                try:
                    entries, skipped = self.store.log_of(job_id, MAX_HISTORY)
                    frames = history_reply(rid, job_id, entries, skipped)
                except Exception as exc:  # noqa: BLE001 - the client gets the error, the broker goes on
                    log.exception("history of job %s failed", id_to_str(job_id))
                    frames = P.encode(P.ERROR, {"rid": rid, "code": P.E_INTERNAL,
                                                "message": f"reading the log failed: {exc}"})
                out.send_multipart([identity, *frames])
                # At most a third of the time scanning: the scan holds the GIL the loop needs, and
                # peers asking again and again must not take the loop's share (scripts/fuzz.py).
                time.sleep(min(1.0, SCAN_REST * (time.monotonic() - started)))
        finally:
            out.close(0)

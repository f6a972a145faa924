"""HISTORY requests waiting for the reader thread (``shoal job why``), and who has one running.

A scan reads the whole log: one per peer at a time, a few in all, so no peer can keep the
reader (and the GIL it shares with the loop) busy by asking again and again. The shell
takes ``wanted`` after each commit and hands it to the reader, so a scan sees every entry
decided up to then; ``answered`` is its word that one finished.
"""
from __future__ import annotations

from . import undo as U

MAX_HISTORY_READS = 16  # scans queued or running at once, all peers together


class HistoryRequests:
    """This pass's HISTORY requests and the scans still running per peer."""

    def __init__(self, undo: U.Undo) -> None:
        self.undo = undo
        self.wanted: list[tuple[bytes, int, bytes]] = []   # (identity, rid, job id), this pass
        self.reading: dict[bytes, int] = {}                 # peer -> scans of its queued or running (at most 1)

    def busy(self, identity: bytes) -> str | None:
        """Why this peer's request must wait, or None."""
        if identity in self.reading:
            return "a history read for this connection is still running; ask again when it has answered"
        if sum(self.reading.values()) >= MAX_HISTORY_READS:
            return f"{MAX_HISTORY_READS} history reads are queued; try again in a moment"
        return None

    def want(self, identity: bytes, rid: int, job_id: bytes) -> None:
        U.put(self.undo, self.reading, identity, 1)
        self.wanted.append((identity, rid, job_id))
        self.undo.append((self.wanted.pop,))

    def answered(self, identity: bytes) -> None:
        """The reader thread answered one of this peer's requests."""
        left = self.reading.pop(identity, 0) - 1
        if left > 0:
            self.reading[identity] = left

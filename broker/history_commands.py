"""HISTORY: one job's whole history, read from the log (``shoal job why ID``).

The log has no per-job index yet, so this is a scan of the whole log (a byte search
skips other jobs' entries without decoding them). It runs off the loop: the request is
set aside here, and the server hands it to its reader thread (history_reader.py) after
this pass commits, so the scan sees every entry decided up to then.
History outlives the job: entries stay after the record expires, until compaction.
"""
from __future__ import annotations

from typing import Any, Callable

from shoal import protocol as P
from shoal.protocol import field

from .client_commands import ClientCommands


class HistoryCommands(ClientCommands):
    """The HISTORY command."""

    MAX_HISTORY_READS = 16  # scans queued or running at once, all peers together

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.history_wanted: list[tuple[bytes, int, bytes]] = []  # (identity, rid, job id), this pass
        self.history_reading: dict[bytes, int] = {}  # peer -> scans of its queued or running (at most 1)

    def history_answered(self, identity: bytes) -> None:
        """The reader thread answered one of this peer's HISTORY requests."""
        left = self.history_reading.pop(identity, 0) - 1
        if left > 0:
            self.history_reading[identity] = left

    def handlers(self) -> dict[bytes, Callable[[bytes, dict[str, Any]], None]]:
        table = super().handlers()
        table[P.HISTORY] = self._on_history
        return table

    def _on_history(self, identity: bytes, body: dict[str, Any]) -> None:
        rid, job_id = field(body, "rid", int), P.job_id_field(body)
        # A scan reads the whole log: one per peer at a time, a few in all, so no peer can keep
        # the reader (and the GIL it shares with the loop) busy by asking again and again.
        if identity in self.history_reading:
            self.error(identity, rid, P.E_BUSY, "a history read for this connection is still running; "
                       "ask again when it has answered")
            return
        if sum(self.history_reading.values()) >= self.MAX_HISTORY_READS:
            self.error(identity, rid, P.E_BUSY, f"{self.MAX_HISTORY_READS} history reads are queued; "
                       "try again in a moment")
            return
        self.history_reading[identity] = 1
        self.history_wanted.append((identity, rid, job_id))

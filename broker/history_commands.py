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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.history_wanted: list[tuple[bytes, int, bytes]] = []  # (identity, rid, job id), this pass

    def handlers(self) -> dict[bytes, Callable[[bytes, dict[str, Any]], None]]:
        table = super().handlers()
        table[P.HISTORY] = self._on_history
        return table

    def _on_history(self, identity: bytes, body: dict[str, Any]) -> None:
        self.history_wanted.append((identity, field(body, "rid", int), P.job_id_field(body)))

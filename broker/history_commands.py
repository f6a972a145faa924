"""HISTORY: one job's whole history, read from the log (``shoal job why ID``).

The log has no per-job index yet, so this is a scan of the whole log (a byte search
skips other jobs' entries without decoding them). Under the server it runs off the loop
(history_reader.py): the request is set aside here and handed to the reader thread after
this pass commits. Without one (a bare Broker in tests) it is answered in place.
History outlives the job: entries stay after the record expires, until compaction.
"""
from __future__ import annotations

from typing import Any, Callable

from shoal import protocol as P
from shoal.protocol import field

from .client_commands import ClientCommands
from .core import Outgoing
from .history_reader import MAX_HISTORY, history_reply


class HistoryCommands(ClientCommands):
    """The HISTORY command."""

    history_offloaded = False  # set by the server: requests go to its HistoryReader after the commit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.history_wanted: list[tuple[bytes, int, bytes]] = []  # (identity, rid, job id), this pass

    def handlers(self) -> dict[bytes, Callable[[bytes, dict[str, Any]], None]]:
        table = super().handlers()
        table[P.HISTORY] = self._on_history
        return table

    def _on_history(self, identity: bytes, body: dict[str, Any]) -> None:
        rid = field(body, "rid", int)
        job_id = P.job_id_field(body)
        if self.history_offloaded:
            self.history_wanted.append((identity, rid, job_id))
            return
        entries, skipped = self.store.log_of(job_id, MAX_HISTORY)
        # decided in this pass and committed before this reply goes out: already part of the history
        seq, now_ms = self.store.next_seq, self.clock.wall_ms()
        for i, (op, owner, changes) in enumerate(self.batch.log):
            if owner == job_id:
                entries.append((seq + i, [now_ms, op, owner, changes]))
        self.outbox.append(Outgoing(identity, history_reply(rid, job_id, entries, skipped)))

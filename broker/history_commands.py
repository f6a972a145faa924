"""HISTORY: one job's whole history, read from the log (``shoal job why ID``).

The log has no per-job index yet, so this is a scan of the whole log (a byte search
skips other jobs' entries without decoding them) and it runs in the broker's loop:
cheap for logs of thousands of entries, noticeable at millions. A per-job index
(job id + seq -> b"", written with each entry) would make it a range read.
History outlives the job: entries stay after the record expires, until compaction.
"""
from __future__ import annotations

from typing import Any, Callable

from shoal import protocol as P
from shoal.ids import id_to_str
from shoal.protocol import field

from .client_commands import ClientCommands
from .history import history_rows

MAX_HISTORY = 10_000  # rows in one reply; the oldest beyond it are counted, not sent


class HistoryCommands(ClientCommands):
    """The HISTORY command."""

    def handlers(self) -> dict[bytes, Callable[[bytes, dict[str, Any]], None]]:
        table = super().handlers()
        table[P.HISTORY] = self._on_history
        return table

    def _on_history(self, identity: bytes, body: dict[str, Any]) -> None:
        rid = field(body, "rid", int)
        job_id = P.job_id_field(body)
        entries, skipped = self.store.log_of(job_id, MAX_HISTORY)
        # decided in this pass and committed before this reply goes out: already part of the history
        seq, now_ms = self.store.next_seq, self.clock.wall_ms()
        for i, (op, owner, changes) in enumerate(self.batch.log):
            if owner == job_id:
                entries.append((seq + i, [now_ms, op, owner, changes]))
        if not entries:
            self.error(identity, rid, P.E_UNKNOWN_JOB,
                       f"no log entries for job {id_to_str(job_id)} (never enqueued, or its log was compacted)")
            return
        skipped += max(0, len(entries) - MAX_HISTORY)
        self.reply(identity, rid, entries=history_rows(job_id, entries[-MAX_HISTORY:]), skipped=skipped)

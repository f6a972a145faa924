"""The storage the broker core needs: what ``Store`` (LMDB) and ``MemoryStore`` both honour.

The core reads through these methods and writes only by ``commit``-ing a ``Batch`` (one
transaction per pass of the loop). tests/test_storage_contract.py runs one suite against both
stores, so a rule the core relies on holds on each (huey's ``StorageTests`` is the model).
"""
from __future__ import annotations

from typing import Any, Iterator, Protocol

from .batch import Batch


class CoreStore(Protocol):
    """Reads and the one write (``commit``) of the broker core."""

    path: str              # where it lives (shown in messages)
    next_seq: int          # the seq the next log entry gets
    max_bytes: int         # the configured cap (0: none but the disk)

    def commit(self, batch: Batch, wall_ms: int) -> None:
        """Write the whole batch (state and its log entries) or nothing; raise ``StorageFull`` when out of room."""

    def get_job(self, job_id: bytes) -> dict[str, Any] | None:
        """The stored record of one job, or None."""

    def has_jobs(self, job_ids: list[bytes]) -> set[bytes]:
        """Which of these ids are stored."""

    def iter_jobs(self) -> Iterator[dict[str, Any]]:
        """Every stored job record, in id order."""

    def steps_of(self, job_id: bytes) -> dict[str, dict[str, Any]]:
        """Every stored step of one job, by name."""

    def routes(self) -> dict[str, dict[str, Any]]:
        """The routing table learned from workers' HELLOs."""

    def counters(self) -> dict[str, dict[str, int]]:
        """Cumulative per-group counters."""

    def expired(self, now_ms: int, limit: int = 1000) -> list[tuple[int, bytes]]:
        """Finished jobs whose retention ended at ``now_ms``, oldest first, at most ``limit``."""

    def cron_last_fired(self) -> dict[str, int]:
        """Each cron entry's last fired tick (ms)."""

    def iter_log(self, start_seq: int = 1) -> Iterator[tuple[int, list[Any]]]:
        """Log entries from ``start_seq`` on: (seq, [wall_ms, op, id, changes])."""

    def log_first_seq(self) -> int:
        """The oldest seq still in the log (0 when it is empty)."""

    def last_seq(self) -> int:
        """The newest seq written (the trim point when the log is empty)."""

    def used_bytes(self) -> int:
        """Bytes the stored state takes now."""

    def disk_room(self, used_bytes: int) -> int:
        """Bytes the store can still grow by."""

    def sizes(self) -> dict[str, Any]:
        """What ``shoal storage`` shows."""

    def close(self) -> None:
        """Release the store."""

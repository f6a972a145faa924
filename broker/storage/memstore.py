"""The storage contract in memory: for the socket-free core in tests and ``shoal.testing``.

Records are kept msgpack-packed, as LMDB keeps them, so a caller that changes a dict after
committing it changes nothing stored, and what cannot be packed fails the commit here too.
Nothing is durable: a "restart" is a new broker over the same ``MemoryStore`` object.
"""
from __future__ import annotations

import bisect
from typing import Any, Iterator

from shoal.jobs import as_record, as_row
from shoal.errors import StorageFull
from shoal.protocol import pack, unpack

from .batch import Batch

_NO_LIMIT = 1 << 62


def _load(raw: bytes) -> Any:
    return unpack(raw, max_bytes=_NO_LIMIT)


class MemoryStore:
    """Tables as sorted dicts of packed bytes, with the same rules as ``Store``."""

    def __init__(self, path: str = "<memory>", max_bytes: int = 0) -> None:
        self.path = path
        self.max_bytes = max_bytes       # 0: no cap; past it a commit raises StorageFull
        self.next_seq = 1
        self._jobs: dict[bytes, bytes] = {}
        self._log: dict[int, bytes] = {}
        self._expiry: list[tuple[int, bytes]] = []  # sorted
        self._steps: dict[bytes, dict[str, bytes]] = {}
        self._routes: dict[str, bytes] = {}
        self._counters: dict[str, bytes] = {}
        self._cron: dict[str, int] = {}
        self._log_base = 0
        self._bytes = 0

    # --- the one write ------------------------------------------------------------------
    def commit(self, batch: Batch, wall_ms: int) -> None:
        """Apply the whole batch or nothing (everything is packed before anything changes)."""
        if not batch:
            return
        jobs = {job_id: None if record is None else pack(as_row(record)) for job_id, record in batch.jobs.items()}
        log = [pack([wall_ms, op, job_id, changes]) for op, job_id, changes in batch.log]
        steps = [(job_id, name, pack(step)) for (job_id, name), step in batch.steps.items()]
        added = sum(len(r) for r in jobs.values() if r) + sum(map(len, log)) + sum(len(s[2]) for s in steps)
        if self.max_bytes and self._bytes + added > self.max_bytes:
            raise StorageFull(f"the memory store is at its cap of {self.max_bytes} bytes")
        self._bytes += added
        for job_id, raw in jobs.items():
            if raw is None:
                self._jobs.pop(job_id, None)
            else:
                self._jobs[job_id] = raw
        for raw in log:
            self._log[self.next_seq] = raw
            self.next_seq += 1
        for key in batch.expiry_del:
            i = bisect.bisect_left(self._expiry, key)
            if i < len(self._expiry) and self._expiry[i] == key:
                del self._expiry[i]
        for key in batch.expiry_add:
            bisect.insort(self._expiry, key)
        for job_id in batch.drop_steps:
            self._steps.pop(job_id, None)
        for job_id, name, raw in steps:
            self._steps.setdefault(job_id, {})[name] = raw
        self._routes.update((name, pack(route)) for name, route in batch.routes.items())
        self._counters.update((group, pack(counts)) for group, counts in batch.counters.items())
        self._cron.update(batch.cron)
        if batch.trim_log_to:
            for seq in [s for s in self._log if s <= batch.trim_log_to]:
                del self._log[seq]
            self._log_base = max(self._log_base, batch.trim_log_to)

    # --- reads ----------------------------------------------------------------------------
    def get_job(self, job_id: bytes) -> dict[str, Any] | None:
        raw = self._jobs.get(job_id)
        return None if raw is None else as_record(_load(raw))

    def has_jobs(self, job_ids: list[bytes]) -> set[bytes]:
        return {j for j in job_ids if j in self._jobs}

    def iter_jobs(self) -> Iterator[dict[str, Any]]:
        for job_id in sorted(self._jobs):
            yield as_record(_load(self._jobs[job_id]))

    def steps_of(self, job_id: bytes) -> dict[str, dict[str, Any]]:
        return {name: _load(raw) for name, raw in sorted(self._steps.get(job_id, {}).items())}

    def routes(self) -> dict[str, dict[str, Any]]:
        return {name: _load(raw) for name, raw in self._routes.items()}

    def counters(self) -> dict[str, dict[str, int]]:
        return {group: _load(raw) for group, raw in self._counters.items()}

    def expired(self, now_ms: int, limit: int = 1000) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        for expire_ms, job_id in self._expiry:
            if expire_ms > now_ms or len(out) >= limit:
                break
            out.append((expire_ms, job_id))
        return out

    def cron_last_fired(self) -> dict[str, int]:
        return dict(self._cron)

    def iter_log(self, start_seq: int = 1) -> Iterator[tuple[int, list[Any]]]:
        for seq in sorted(s for s in self._log if s >= start_seq):
            yield seq, _load(self._log[seq])

    def log_first_seq(self) -> int:
        return min(self._log, default=0)

    def last_seq(self) -> int:
        return max(self._log, default=self._log_base)

    def used_bytes(self) -> int:
        return sum(map(len, self._jobs.values())) + sum(map(len, self._log.values()))

    def disk_room(self, used_bytes: int) -> int:
        return (self.max_bytes - used_bytes) if self.max_bytes else _NO_LIMIT

    def sizes(self) -> dict[str, Any]:
        return {"path": self.path, "used_bytes": self.used_bytes(), "map_bytes": 0, "max_bytes": self.max_bytes,
                "file_bytes": 0, "log_first_seq": self.log_first_seq(), "log_last_seq": self.last_seq(),
                "entries": {"jobs": len(self._jobs), "log": len(self._log), "expiry": len(self._expiry),
                            "steps": sum(map(len, self._steps.values())), "routes": len(self._routes),
                            "counters": len(self._counters)}, "snapshots": []}

    def close(self) -> None:
        """Nothing to release."""

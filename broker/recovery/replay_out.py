"""``broker replay --out``: how NEWDIR receives the rebuilt state (replay.py drives it).

Final jobs go to NEWDIR as they are frozen (``NewDirJobs``), so replay holds only their
ids; what is still moving, and the other tables, follow at the end (``the_rest``).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from .rebuild import State, pack_record
from ..storage.store import Batch, Store


class NewDirJobs:
    """Where ``--out`` keeps final jobs (``rebuild.FinalJobs``): in NEWDIR itself, written as
    they are frozen, ``per_commit`` to a transaction. ``Store.commit`` packs each record
    once and nothing decodes it again; only the ids stay in memory. A job thawed later (a
    requeue) is read back and deleted from NEWDIR."""

    def __init__(self, target: Store, per_commit: int) -> None:
        self.target, self.per_commit = target, per_commit
        self._batch = Batch()
        self._ids: set[bytes] = set()

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> Iterable[bytes]:
        """Every job id held, in no particular order."""
        return self._ids

    def add(self, job_id: bytes, record: dict[str, Any], raw: bytes | None) -> None:
        """Write a final job (with the next commit); ``raw`` is not needed: the store packs it."""
        self._ids.add(job_id)
        self._batch.jobs[job_id] = record
        if len(self._batch.jobs) >= self.per_commit:
            self.flush()

    def get(self, job_id: bytes) -> dict[str, Any] | None:
        """A copy of the job's record, or None."""
        if job_id not in self._ids:
            return None
        record = self._batch.jobs.get(job_id)
        return dict(record) if record is not None else self.target.get_job(job_id)

    def packed(self, job_id: bytes) -> bytes:
        """The job's record packed as the store keeps it; ``KeyError`` if it is not held."""
        record = self.get(job_id)
        if record is None:
            raise KeyError(job_id)
        return pack_record(record)

    def take(self, job_id: bytes) -> dict[str, Any]:
        """The job's record, deleted from NEWDIR (with the next commit); ``KeyError`` if not held."""
        record = self.get(job_id)
        if record is None:
            raise KeyError(job_id)
        self.discard(job_id)
        return record

    def discard(self, job_id: bytes) -> None:
        """Delete the job from NEWDIR (with the next commit), if it is held."""
        if job_id in self._ids:
            self._ids.remove(job_id)
            self._batch.jobs[job_id] = None

    def flush(self) -> None:
        """Commit what is pending."""
        self.target.commit(self._batch, wall_ms=0)  # no log entries in it: wall_ms is unused
        self._batch = Batch()


def the_rest(state: State, per_batch: int) -> Iterator[Batch]:
    """What NEWDIR still needs once the final jobs are in it: the jobs still moving,
    ``per_batch`` to a batch, and the other tables with the last."""
    batch = Batch()
    for job_id, record in state.unfinished():
        batch.jobs[job_id] = record
        if len(batch.jobs) >= per_batch:
            yield batch
            batch = Batch()
    batch.routes, batch.counters, batch.cron = state.routes, state.counters, state.cron
    batch.steps = {(job_id, name): record for job_id, named in state.steps.items() for name, record in named.items()}
    batch.expiry_add = sorted(state.expiry())
    yield batch

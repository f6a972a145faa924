"""In-memory indexes over the active jobs; rebuilt from the jobs table at start."""
from __future__ import annotations

import heapq
import itertools


class ReadyQueue:
    """The pending jobs of one group: higher priority first, then first in, first out.

    A job handed back (lease lost, worker drained) goes to the front: its order key is
    taken from a counter that runs below every arrival sequence.
    """

    __slots__ = ("_heap", "_front", "_live")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, bytes]] = []
        self._front = itertools.count(-1, -1)
        self._live: dict[bytes, tuple[int, int]] = {}  # id -> its current heap key; older entries are stale

    def push(self, job_id: bytes, seq: int, priority: int = 0) -> tuple[int, int] | None:
        """Queue behind the jobs of the same priority; returns the job's place before (for ``restore``)."""
        live = self._live
        old = live.get(job_id)
        heapq.heappush(self._heap, (-priority, seq, job_id))
        live[job_id] = (-priority, seq)
        return old

    def push_front(self, job_id: bytes, priority: int = 0) -> tuple[int, int] | None:
        """Queue ahead of every job of the same priority; returns the job's place before."""
        old = self._live.get(job_id)
        self._push(job_id, (-priority, next(self._front)))
        return old

    def _push(self, job_id: bytes, key: tuple[int, int]) -> None:
        heapq.heappush(self._heap, (key[0], key[1], job_id))
        self._live[job_id] = key

    def _current(self, entry: tuple[int, int, bytes]) -> bool:
        return self._live.get(entry[2]) == (entry[0], entry[1])

    def pop(self) -> bytes | None:
        """The next job id, or None when empty."""
        while self._heap:
            entry = heapq.heappop(self._heap)
            if self._current(entry):
                del self._live[entry[2]]
                return entry[2]
        return None

    def peek(self) -> bytes | None:
        """The next job id without taking it."""
        while self._heap:
            if self._current(self._heap[0]):
                return self._heap[0][2]
            heapq.heappop(self._heap)
        return None

    def remove(self, job_id: bytes) -> bool:
        """Drop a job (cancel); its heap entry goes stale and is skipped later."""
        return self._live.pop(job_id, None) is not None

    def key_of(self, job_id: bytes) -> tuple[int, int] | None:
        """The job's place in the queue now (None: not queued), for ``restore``."""
        return self._live.get(job_id)

    def restore(self, job_id: bytes, key: tuple[int, int] | None) -> None:
        """Put the job back where ``key_of`` said it was (undo of a push or a remove)."""
        if key is None:
            self._live.pop(job_id, None)
        else:
            self._push(job_id, key)  # a duplicate heap entry of a live key is skipped once popped

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, job_id: bytes) -> bool:
        return job_id in self._live


class Schedule:
    """Jobs waiting for a deadline (delay=, retry backoff, durable sleep), soonest first.

    Deadlines are on the monotonic clock (seconds), so a step of the wall clock neither
    fires a delayed job early nor holds it: the stored due time (wall ms) is turned into
    a deadline once, when the job is scheduled or loaded at start.
    """

    __slots__ = ("_heap", "_live")

    def __init__(self) -> None:
        self._heap: list[tuple[float, bytes]] = []
        self._live: dict[bytes, float] = {}

    def add(self, job_id: bytes, deadline: float) -> None:
        """Wake this job at ``deadline`` (monotonic seconds)."""
        heapq.heappush(self._heap, (deadline, job_id))
        self._live[job_id] = deadline

    def remove(self, job_id: bytes) -> bool:
        """Forget a job (cancel)."""
        return self._live.pop(job_id, None) is not None

    def deadline_of(self, job_id: bytes) -> float | None:
        """The job's deadline now (None: not scheduled), for ``restore``."""
        return self._live.get(job_id)

    def restore(self, job_id: bytes, deadline: float | None) -> None:
        """Put the job's deadline back to what ``deadline_of`` said (undo of an add or a remove)."""
        if deadline is None:
            self._live.pop(job_id, None)
        else:
            self.add(job_id, deadline)

    def next_deadline(self) -> float | None:
        """When the soonest job is due (monotonic seconds), or None."""
        while self._heap:
            deadline, job_id = self._heap[0]
            if self._live.get(job_id) == deadline:
                return deadline
            heapq.heappop(self._heap)
        return None

    def pop_due(self, now: float) -> list[bytes]:
        """Every job due at monotonic ``now``, soonest first."""
        out: list[bytes] = []
        while self._heap and self._heap[0][0] <= now:
            deadline, job_id = heapq.heappop(self._heap)
            if self._live.get(job_id) == deadline:
                del self._live[job_id]
                out.append(job_id)
        return out

    def __len__(self) -> int:
        return len(self._live)

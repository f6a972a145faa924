"""taskito on SQLite, as it ships (its own file under this system's directory), thread workers.
Its ``result()`` polls; the poll starts at 1 ms here instead of 50 ms, so its round trip is
not its default back-off."""
from __future__ import annotations

from typing import Any

from taskito import Queue
from taskito.result import JobResult

from sys_base import BIN, CONCURRENCY, DIR, TIMEOUT_S, Base

queue = Queue(db_path=str(DIR / "taskito.db"), workers=CONCURRENCY)


@queue.task()
def noop(i: int) -> None:
    """The no-op task."""
    return None


class Adapter(Base):
    has_bulk = True

    def worker_args(self) -> list[str]:
        return [str(BIN / "taskito"), "worker", "--app", "sys_taskito:queue"]

    def enqueue(self, i: int) -> JobResult:
        return noop.delay(i)

    def enqueue_bulk(self, items: list[int]) -> list[Any]:
        return queue.enqueue_many(noop.name, [(i,) for i in items])

    def wait(self, handle: JobResult) -> None:
        handle.result(timeout=TIMEOUT_S, poll_interval=0.001, max_poll_interval=0.001)

    def reset(self) -> None:
        queue.purge("default")

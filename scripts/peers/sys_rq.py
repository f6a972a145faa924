"""RQ on Redis, as shipped: its default worker forks a child for each job, one at a time.
The task is ``rq_noop.noop`` (a module of its own: the child imports it for every job)."""
from __future__ import annotations

from typing import Any, Sequence

from redis import Redis
from rq import Queue
from rq.job import Job
from rq.results import Result

from rq_noop import noop
from sys_base import BIN, BROKER_URL, TIMEOUT_S, Base
from workload import poll_until

QUEUE = "peers"


class Adapter(Base):
    has_bulk = True

    def __init__(self) -> None:
        super().__init__()
        self.conn = Redis.from_url(BROKER_URL)
        self.queue = Queue(QUEUE, connection=self.conn)
        self.finished_base = 0

    def worker_args(self) -> list[str]:
        return [str(BIN / "rq"), "worker", "--url", BROKER_URL, "--logging_level", "WARNING", QUEUE]

    def enqueue(self, i: int) -> Job:
        return self.queue.enqueue(noop, i)

    def enqueue_bulk(self, items: list[int]) -> list[Any]:
        return self.queue.enqueue_many([Queue.prepare_data(noop, (i,)) for i in items])

    def wait(self, handle: Job) -> None:
        result = handle.latest_result(timeout=TIMEOUT_S)  # blocks on the job's result stream
        if result is None or result.type != Result.Type.SUCCESSFUL:
            raise RuntimeError(f"rq job {handle.id}: {result and result.type}")

    def after_probe(self) -> None:
        self.finished_base = self.queue.finished_job_registry.count

    def wait_all(self, handles: Sequence[Any]) -> None:
        target = self.finished_base + len(handles)
        poll_until(lambda: self.queue.finished_job_registry.count >= target, "rq jobs to finish")

    def reset(self) -> None:
        self.queue.empty()

    def close(self) -> None:
        super().close()
        self.conn.close()

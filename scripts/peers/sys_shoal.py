"""Shoal, as ``scripts/bench.py`` runs it: a broker on a fresh LMDB directory for every phase
(under ``$SHOAL_BENCH_TMP``), one worker process loading ``scripts/bench_app.py``."""
from __future__ import annotations

import signal
from typing import Any, Sequence

from bench import Cluster, wait_final, wait_until
from sys_base import CONCURRENCY, Base


class Adapter(Base):
    has_bulk = True

    def __init__(self) -> None:
        super().__init__()
        self.cluster: Cluster | None = None
        self.phase = 0
        self.reset()

    def reset(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
        self.phase += 1
        self.cluster = Cluster(f"peers-{self.phase}")
        self.cluster.start_broker()
        self.client = self.cluster.client()

    def as_client(self) -> Any:
        return self.client  # bench.py's loops on Shoal's own Client, exactly as bench.py runs them

    def start_worker(self) -> None:
        assert self.cluster is not None
        self.cluster.start_worker("bench", CONCURRENCY)

    def stop_worker(self) -> None:
        if self.cluster is not None:
            for worker in self.cluster.workers:
                worker.stop(signal.SIGTERM)
            self.cluster.workers.clear()

    def enqueue(self, i: int) -> str:
        return self.client.enqueue("noop", {"i": i}, group="bench")

    def enqueue_bulk(self, items: list[int]) -> list[Any]:
        return self.client.enqueue_many("noop", [{"i": i} for i in items], group="bench")

    def wait(self, handle: str) -> None:
        wait_final(self.client, handle)

    def wait_all(self, handles: Sequence[Any]) -> None:
        """The last job's wait, then the group's completed count (as ``bench.py``'s end to end)."""
        self.wait(handles[-1])
        wait_until(lambda: self.client.stats()["bench"]["completed"] >= len(handles), 120, "all jobs", 0.001)

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

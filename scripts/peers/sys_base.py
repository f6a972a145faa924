"""What every peer adapter shares: its settings from the environment and its one worker process.

A system's module (``sys_celery.py``, ...) is imported twice: by the client process, which
builds its ``Adapter``, and by the worker process the adapter starts (through the system's
own CLI where it has one), which finds its app and tasks in the same module. Both read the
servers' addresses from the environment that ``client.py`` sets:

- ``PEERS_BROKER_URL``: the queue's server (Redis, RabbitMQ or PostgreSQL);
- ``PEERS_RESULT_URL``: where results are kept, when that is another server (Redis);
- ``PEERS_DIR``: a directory of this system's own (taskito's SQLite file, worker logs);
- ``PEERS_CONCURRENCY``: the worker's threads (or slots).
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from servers import log_tail, spawn, stop_group
from workload import BenchClient, wait_each

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent  # the peers venv's console scripts (celery, rq, dramatiq, ...)
TIMEOUT_S = 60  # one job's wait; a worker that died shows as this timeout, with its log in the error


def setting(name: str, default: str = "") -> str:
    return os.environ.get(f"PEERS_{name}", default)


BROKER_URL = setting("BROKER_URL")
RESULT_URL = setting("RESULT_URL", BROKER_URL)
CONCURRENCY = int(setting("CONCURRENCY", "8"))
DIR = Path(setting("DIR", "/tmp"))


class Base:
    """An adapter's worker handling and defaults; a subclass sets ``worker_args`` and the job calls."""

    has_bulk = False

    def __init__(self) -> None:
        self.worker: Any = None
        self.worker_log = DIR / "worker.log"

    def worker_args(self) -> list[str]:
        raise NotImplementedError

    def as_client(self) -> BenchClient:
        return BenchClient(self)

    def start_worker(self) -> None:
        """Start the worker, then run one job through it: it takes jobs once that job has run."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        with open(self.worker_log, "ab") as fh:
            fh.write(f"--- {' '.join(self.worker_args())}\n".encode())
        self.worker = spawn(self.worker_args(), self.worker_log, env=env, cwd=DIR)
        probe = self.enqueue(-1)
        done = threading.Event()
        failure: list[BaseException] = []

        def wait_probe() -> None:
            try:
                self.wait(probe)
            except BaseException as exc:  # reported below with the worker's log
                failure.append(exc)
            done.set()

        threading.Thread(target=wait_probe, daemon=True).start()
        while not done.wait(0.1):
            if self.worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.worker.returncode}: {self.worker_tail()}")
        if failure:
            raise RuntimeError(f"the worker did not run a probe job ({failure[0]!r}): {self.worker_tail()}")
        self.after_probe()

    def after_probe(self) -> None:
        """Hook: a counter-based ``wait_all`` takes its base here."""

    def worker_tail(self) -> str:
        return log_tail(self.worker_log, 6)

    def stop_worker(self) -> None:
        if self.worker is not None:
            stop_group(self.worker)
            self.worker = None

    def enqueue(self, i: int) -> Any:
        raise NotImplementedError

    def enqueue_bulk(self, items: list[int]) -> list[Any]:
        raise NotImplementedError(f"{type(self).__name__} has no bulk enqueue")

    def wait(self, handle: Any) -> None:
        raise NotImplementedError

    def wait_all(self, handles: Sequence[Any]) -> None:
        wait_each(self, handles)

    def reset(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop_worker()

"""pgqueuer on PostgreSQL (fsync on, its tables logged: durable as installed). The client
enqueues through pgqueuer's synchronous driver on one psycopg connection (its only sync
path); it waits with pgqueuer's CompletionWatcher (LISTEN/NOTIFY) on an asyncpg connection
and an event loop in a thread of its own, its debounce cut from 50 ms to 1 ms so the round
trip is not the debounce. The worker uses asyncpg too: pgqueuer's psycopg driver reads
notifications in 1 s slices that hold the connection, so a query on it can wait that long.
As shipped, pgqueuer's worker buffers completions and writes them every 0.1 s: its round trip
is that buffer, not PostgreSQL."""
from __future__ import annotations

import asyncio
import sys
import threading
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, AsyncIterator, Sequence

import asyncpg
import psycopg
from pgqueuer import PgQueuer
from pgqueuer.adapters.drivers.asyncpg import AsyncpgDriver
from pgqueuer.adapters.drivers.psycopg import SyncPsycopgDriver
from pgqueuer.adapters.persistence.queries import Queries, SyncQueries
from pgqueuer.core.completion import CompletionWatcher
from pgqueuer.models import Job

from sys_base import BROKER_URL, TIMEOUT_S, Base
from workload import poll_until


@asynccontextmanager
async def create_pgqueuer() -> AsyncIterator[PgQueuer]:
    """The worker's factory, as ``pgq run sys_pgqueuer:create_pgqueuer`` takes one."""
    conn = await asyncpg.connect(BROKER_URL)
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        return None

    try:
        yield pgq
    finally:
        await conn.close()


class Adapter(Base):
    has_bulk = True

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True, name="pgqueuer-waits").start()
        self.call(self._open_watcher())
        self.conn = psycopg.connect(BROKER_URL, autocommit=True)
        self.queries = SyncQueries(SyncPsycopgDriver(self.conn))

    def call(self, coro: Any, timeout_s: float = TIMEOUT_S) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    async def _open_watcher(self) -> None:
        self.aconn = await asyncpg.connect(BROKER_URL)
        driver = AsyncpgDriver(self.aconn)
        queries = Queries(driver)
        if not await queries.schema_is_installed():
            await queries.install()
        self.watcher = CompletionWatcher(driver, queries=queries, debounce=timedelta(milliseconds=1))
        await self.watcher.__aenter__()

    def worker_args(self) -> list[str]:
        # pgqueuer's own ``supervisor.run``, with ``pgq run``'s defaults: that CLI fails to parse
        # its --log-level with the typer pip brings (AttributeError: 'str' has no 'name')
        return [sys.executable, "-c", "import asyncio, sys_pgqueuer as m; "
                "from pgqueuer.adapters.cli import supervisor; asyncio.run(supervisor.run(m.create_pgqueuer))"]

    def enqueue(self, i: int) -> Any:
        return self.queries.enqueue("noop", str(i).encode())[0]

    def enqueue_bulk(self, items: list[int]) -> list[Any]:
        return self.queries.enqueue(["noop"] * len(items), [str(i).encode() for i in items], [0] * len(items))

    def wait(self, handle: Any) -> None:
        status = self.call(self._wait(handle))
        if status != "successful":
            raise RuntimeError(f"pgqueuer job {handle}: {status}")

    async def _wait(self, handle: Any) -> str:
        return str(await self.watcher.wait_for(handle))  # wait_for wants the loop's thread

    def wait_all(self, handles: Sequence[Any]) -> None:
        poll_until(lambda: sum(s.count for s in self.queries.queue_size()) == 0, "pgqueuer's queue to drain")

    def reset(self) -> None:
        self.conn.execute("delete from pgqueuer")

    def close(self) -> None:
        super().close()
        self.call(self.watcher.__aexit__(None, None, None))
        self.call(self.aconn.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.conn.close()

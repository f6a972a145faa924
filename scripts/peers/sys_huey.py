"""Huey on Redis, thread workers; ``notify_result`` so a waiting caller blocks on BLPOP
instead of polling with back-off, and ``store_none`` so a no-op's result exists."""
from __future__ import annotations

from huey import RedisHuey
from huey.api import Result

from sys_base import BIN, BROKER_URL, CONCURRENCY, TIMEOUT_S, Base

huey = RedisHuey("peers", url=BROKER_URL or "redis://127.0.0.1:1", store_none=True, notify_result=True)


@huey.task()
def noop(i: int) -> None:
    """The no-op task."""
    return None


class Adapter(Base):
    def worker_args(self) -> list[str]:
        return [str(BIN / "huey_consumer"), "sys_huey.huey", "--workers", str(CONCURRENCY), "--worker-type", "thread",
                "--quiet"]

    def enqueue(self, i: int) -> Result:
        return noop(i)

    def wait(self, handle: Result) -> None:
        handle.get(blocking=True, timeout=TIMEOUT_S)

    def reset(self) -> None:
        huey.flush()

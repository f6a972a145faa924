"""Celery: on Redis (results in the same Redis), or on RabbitMQ made durable (durable queue,
persistent messages, publisher confirms; results in the durable Redis). Thread pool worker."""
from __future__ import annotations

from typing import Any, Sequence

from celery import Celery
from celery.result import AsyncResult, ResultSet

from sys_base import BIN, BROKER_URL, CONCURRENCY, RESULT_URL, TIMEOUT_S, Base

app = Celery("sys_celery", broker=BROKER_URL or "memory://", backend=RESULT_URL or None)
app.conf.broker_connection_retry_on_startup = True
if BROKER_URL.startswith("amqp"):
    app.conf.task_default_delivery_mode = "persistent"  # Celery's default, said out loud
    app.conf.broker_transport_options = {"confirm_publish": True}


@app.task(name="noop")
def noop(i: int) -> None:
    """The no-op task."""
    return None


class Adapter(Base):
    def worker_args(self) -> list[str]:
        return [str(BIN / "celery"), "-A", "sys_celery", "worker", "--pool", "threads",
                "--concurrency", str(CONCURRENCY), "--loglevel", "WARNING"]

    def enqueue(self, i: int) -> AsyncResult:
        return noop.delay(i)

    def wait(self, handle: AsyncResult) -> None:
        handle.get(timeout=TIMEOUT_S)

    def wait_all(self, handles: Sequence[Any]) -> None:
        ResultSet(list(handles)).join_native(timeout=300)

    def reset(self) -> None:
        app.control.purge()

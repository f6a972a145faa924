"""Dramatiq on Redis, or on RabbitMQ made durable (its queues are durable and its messages
persistent by default; ``confirm_delivery`` adds publisher confirms). Results in Redis."""
from __future__ import annotations

import dramatiq
from dramatiq import Message
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from sys_base import BIN, BROKER_URL, CONCURRENCY, RESULT_URL, TIMEOUT_S, Base

if BROKER_URL.startswith("amqp"):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker: dramatiq.Broker = RabbitmqBroker(url=BROKER_URL, confirm_delivery=True)
else:
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=BROKER_URL or "redis://127.0.0.1:1")
broker.add_middleware(Results(backend=RedisBackend(url=RESULT_URL or "redis://127.0.0.1:1")))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, max_retries=0)
def noop(i: int) -> None:
    """The no-op task."""
    return None


class Adapter(Base):
    def worker_args(self) -> list[str]:
        return [str(BIN / "dramatiq"), "sys_dramatiq", "--processes", "1", "--threads", str(CONCURRENCY)]

    def enqueue(self, i: int) -> Message:
        return noop.send(i)

    def wait(self, handle: Message) -> None:
        handle.get_result(block=True, timeout=TIMEOUT_S * 1000)

    def reset(self) -> None:
        broker.flush_all()

"""``shoal job why`` (HISTORY) is answered by a thread of its own, off the broker's loop."""
from __future__ import annotations

import asyncio

import pytest

from conftest import Cluster
from shoal import AsyncClient
from shoal.errors import UnknownJob
from shoal.ids import new_job_id, id_to_str

pytestmark = pytest.mark.timeout(120)


def test_enqueues_are_answered_while_a_long_history_scan_runs(cluster: Cluster) -> None:
    client = cluster.client(timeout=60)
    first = client.enqueue("noop", {"n": -1}, group="default")
    for _ in range(100):  # 100,000 log entries for the scan to read (~0.1 s or more)
        client.enqueue_many("noop", [{"n": n} for n in range(1000)], group="default")

    async def race() -> list[str]:
        order: list[str] = []
        async with AsyncClient(cluster.endpoint, timeout=60) as aclient:
            async def why() -> None:
                rows = await aclient.history(first)
                assert [row.op for row in rows] == ["enqueue"]
                order.append("history")

            async def enqueue() -> None:
                await asyncio.sleep(0)  # sent after the HISTORY request
                await aclient.enqueue("noop", {"n": "late"}, group="default")
                order.append("enqueue")

            await asyncio.gather(why(), enqueue())
        return order

    # In the loop, the scan answered first and held the enqueue behind it; off the loop the
    # enqueue's commit and ack (about a millisecond) come long before the scan's end.
    assert asyncio.run(race()) == ["enqueue", "history"]


def test_the_reader_answers_unknown_jobs_and_sees_an_enqueue_just_acknowledged(cluster: Cluster) -> None:
    client = cluster.client()
    with pytest.raises(UnknownJob, match="no log entries"):
        client.history(id_to_str(new_job_id()))

    async def together() -> list[str]:
        async with AsyncClient(cluster.endpoint) as aclient:
            job = await aclient.enqueue("noop", {}, group="default")
            rows = await aclient.history(job)
            return [row.op for row in rows]

    assert asyncio.run(together()) == ["enqueue"]  # handed over after that commit

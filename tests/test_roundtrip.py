"""Jobs flow through a real broker and real workers, each to its own group."""
from __future__ import annotations

import asyncio

from shoal import AsyncClient

from conftest import Cluster


def test_thousand_jobs_across_two_groups_all_correct_and_never_on_the_wrong_group(cluster: Cluster) -> None:
    cluster.start_worker("email", 8)
    cluster.start_worker("media", 8)
    client = cluster.client()
    email_ids = client.enqueue_many("echo", [{"n": i} for i in range(500)], group="email")
    media_ids = client.enqueue_many("media-echo", [{"n": i} for i in range(500)], group="media")
    for group, ids in (("email", email_ids), ("media", media_ids)):
        for n, job_id in enumerate(ids):
            result = client.wait(job_id, timeout=30)
            assert result.status == "completed", result
            assert result.value["payload"] == {"n": n}
            assert result.value["group"] == group
            assert result.group == group
    stats = client.stats()
    assert stats["email"]["completed"] == 500
    assert stats["media"]["completed"] == 500


def test_bare_name_follows_the_route_learned_from_hello(cluster: Cluster) -> None:
    cluster.start_worker("media", 2)
    client = cluster.client()
    result = client.wait(client.enqueue("media-echo", {"x": 1}), timeout=20)
    assert result.status == "completed"
    assert result.group == "media"


def test_unknown_name_waits_unrouted_until_a_worker_announces_it(cluster: Cluster) -> None:
    client = cluster.client()
    job_id = client.enqueue("echo", {"late": True})
    stats = client.stats()
    assert stats.unrouted == {"echo": 1}
    assert client.get(job_id).status == "pending"
    cluster.start_worker("email", 2)
    result = client.wait(job_id, timeout=20)
    assert result.status == "completed" and result.group == "email"
    assert client.stats().unrouted == {}


def test_enqueue_with_the_workflow_object_carries_its_group(cluster: Cluster) -> None:
    import testapp

    cluster.start_worker("email", 2)
    client = cluster.client()
    result = client.wait(client.enqueue(testapp.echo, {"obj": 1}), timeout=20)
    assert result.value["group"] == "email"


def test_async_handler_and_async_client_pipeline_on_one_socket(cluster: Cluster) -> None:
    cluster.start_worker("email", 20)

    async def main() -> list:
        async with AsyncClient(cluster.endpoint) as client:
            ids = await asyncio.gather(*(client.enqueue("async-echo", {"i": i, "s": 0.05}, group="email")
                                         for i in range(100)))
            return await asyncio.gather(*(client.wait(i, timeout=30) for i in ids))

    results = asyncio.run(main())
    assert [r.value["payload"]["i"] for r in results] == list(range(100))
    assert all(r.value["async"] for r in results)


def test_delayed_job_is_scheduled_then_runs(cluster: Cluster) -> None:
    cluster.start_worker("email", 2)
    client = cluster.client()
    job_id = client.enqueue("echo", {"d": 1}, group="email", delay=0.5)
    assert client.get(job_id).status == "scheduled"
    result = client.wait(job_id, timeout=20)
    assert result.status == "completed"
    assert result.started_ms - result.created_ms >= 450

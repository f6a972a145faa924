"""``Client.run`` and ``AsyncClient.run``: enqueue one job and wait for it in one trip.

On a real broker and worker: the final result, a held key's job, a timeout that names the job,
a broker SIGKILLed and restarted while the job runs.
On a scripted ROUTER (as ``test_client_connection``): the WAIT leaves with the ENQUEUE, before
any answer; a refused enqueue raises and its WAIT's stray answer is not taken for the next
request; a held key's other job is waited for anew.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from shoal import AsyncClient, StorageFull, WaitTimeout
from shoal import protocol as P
from shoal.ids import id_to_str, new_job_id

from conftest import Cluster, lines, wait_for
from test_client_connection import JOB, FakeBroker, broker, pool, start  # noqa: F401  (fixtures)


# --- a real broker and worker ------------------------------------------------------------------------
def test_run_returns_the_final_result_from_a_client_and_an_async_client(cluster: Cluster,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cluster.start_worker("email", 4)
    client = cluster.client()

    def second_wait(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the WAIT written with the ENQUEUE was not answered; run waited again")
    monkeypatch.setattr(client, "wait", second_wait)  # the broker registered the first WAIT in its pass
    result = client.run("echo", {"n": 1}, group="email")
    monkeypatch.undo()
    assert result.status == "completed" and result.value["payload"] == {"n": 1} and result.attempts == 1
    assert client.get(result.id).status == "completed"

    async def many() -> list[Any]:
        async with AsyncClient(cluster.endpoint) as ac:
            monkeypatch.setattr(ac, "wait", second_wait)
            return await asyncio.gather(*(ac.run("echo", {"n": i}, group="email") for i in range(20)))
    results = asyncio.run(many())
    assert [r.value["payload"]["n"] for r in results] == list(range(20))
    assert len({r.id for r in results}) == 20
    assert client.stats()["email"]["completed"] == 21


def test_run_times_out_naming_the_job_which_goes_on_and_a_held_key_names_its_holder(cluster: Cluster) -> None:
    cluster.start_worker("media", 2)
    client = cluster.client()
    holder = client.enqueue("block", {"i": 1}, group="media", key="k", key_ttl=60)
    with pytest.raises(WaitTimeout) as late:
        client.run("block", {"i": 2}, group="media", timeout=0.3)
    assert late.value.job_id is not None and late.value.job_id in str(late.value)
    with pytest.raises(WaitTimeout) as held:
        client.run("block", {"i": 3}, group="media", key="k", timeout=0.3)
    assert held.value.job_id == holder  # the key's job, not a new one
    wait_for(lambda: client.get(late.value.job_id).status == "running", what="the timed-out job to run")
    (cluster.tmp / "release").touch()
    assert client.wait(late.value.job_id, timeout=20).value == 2
    again = client.run("block", {"i": 4}, group="media", key="k")  # the key is held 60 s after the end
    assert (again.id, again.status, again.value) == (holder, "completed", 1)
    assert client.stats()["media"]["completed"] == 2


def test_run_rides_out_a_broker_sigkilled_while_its_job_runs(cluster: Cluster) -> None:
    cluster.start_worker("media", 2)
    client = cluster.client()
    with ThreadPoolExecutor(1) as one:
        pending = one.submit(client.run, "block", {"i": 1}, group="media", timeout=60)
        wait_for(lambda: "start 1" in lines(cluster.tmp / "block.log"), what="the job to start")
        cluster.broker.kill()  # the WAIT registered with the job is gone with it
        cluster.start_broker()
        (cluster.tmp / "release").touch()
        result = pending.result(timeout=60)  # the client's re-sent WAIT reaches the new broker
    assert (result.status, result.value, result.attempts) == ("completed", 1, 1)
    assert lines(cluster.tmp / "block.log") == ["start 1", "end 1"]  # it ran once


# --- a scripted ROUTER ---------------------------------------------------------------------------------
def _job(job_id: bytes) -> dict[str, Any]:
    return {**JOB, "id": job_id}


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_wait_leaves_with_the_enqueue_before_any_answer(broker: FakeBroker, start: Any, kind: str) -> None:
    pending = start(kind, lambda client: client.run("echo", {"n": 1}, timeout=20))
    identity, command, enqueue = broker.receive()
    assert command == P.ENQUEUE
    _, command, wait = broker.receive()  # nothing answered yet
    made = enqueue["jobs"][0]["id"]
    assert command == P.WAIT and wait["id"] == made
    broker.answer(identity, P.REPLY, {"rid": enqueue["rid"], "ids": [made], "deduplicated": [False]})
    broker.answer(identity, P.REPLY, {"rid": wait["rid"], "job": _job(made)})
    result = pending.result(timeout=10)
    assert (result.id, result.status, result.value) == (id_to_str(made), "completed", 7)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_refused_enqueue_raises_and_its_waits_answer_is_not_taken_for_the_next_request(
        broker: FakeBroker, start: Any, kind: str) -> None:
    other = new_job_id()

    def sync(client: Any) -> Any:
        with pytest.raises(StorageFull):
            client.run("echo", 1, timeout=20)
        return client.wait(id_to_str(other), 20)  # the same thread, so the same socket

    async def in_loop(client: Any) -> Any:
        with pytest.raises(StorageFull):
            await client.run("echo", 1, timeout=20)
        return await client.wait(id_to_str(other), 20)

    pending = start(kind, sync if kind == "sync" else in_loop)
    identity, _, enqueue = broker.receive()
    _, _, wait = broker.receive()
    broker.answer(identity, P.ERROR, {"rid": enqueue["rid"], "code": P.E_STORAGE, "message": "disk full"})
    broker.answer(identity, P.ERROR, {"rid": wait["rid"], "code": P.E_UNKNOWN_JOB, "message": "no such job"})
    identity, command, next_wait = broker.receive()
    assert command == P.WAIT and next_wait["id"] == other
    broker.answer(identity, P.REPLY, {"rid": next_wait["rid"], "job": _job(other)})
    assert pending.result(timeout=10).id == id_to_str(other)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_held_key_answered_with_another_job_is_waited_for_anew(broker: FakeBroker, start: Any, kind: str) -> None:
    holder = new_job_id()
    pending = start(kind, lambda client: client.run("echo", 1, key="k", timeout=20))
    identity, _, enqueue = broker.receive()
    _, _, wait = broker.receive()
    broker.answer(identity, P.REPLY, {"rid": enqueue["rid"], "ids": [holder], "deduplicated": [True]})
    broker.answer(identity, P.ERROR, {"rid": wait["rid"], "code": P.E_UNKNOWN_JOB, "message": "no such job"})
    identity, command, again = broker.receive()
    assert command == P.WAIT and again["id"] == holder
    broker.answer(identity, P.REPLY, {"rid": again["rid"], "job": _job(holder)})
    assert pending.result(timeout=10).id == id_to_str(holder)

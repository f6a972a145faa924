"""The client's side of the protocol, on the caller's thread (``Client``) and on the event loop
(``AsyncClient``): re-sends, replies matched by rid (or by size), waits that ride out a broker's
storage trouble, one socket per thread, close() from another thread.

The broker here is a bare ROUTER socket the test scripts (what a real broker does is tested
end to end elsewhere); one real-broker test checks that many threads share one client.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import pytest
import zmq

from shoal import AsyncClient, Client, StorageFull
from shoal import protocol as P
from shoal.errors import TooManyWaits
from shoal.ids import id_to_str, new_job_id

from conftest import Cluster

JOB = {"id": b"\x01" * 16, "state": "completed", "value": P.pack(7), "attempts": 1}


class FakeBroker:
    """A ROUTER the test drives by hand: receive a request, answer it (or not)."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"

    def receive(self, timeout_s: float = 10.0) -> tuple[bytes, bytes, dict[str, Any]]:
        assert self.sock.poll(int(timeout_s * 1000)), "no request arrived"
        identity, *frames = self.sock.recv_multipart()
        command, body = P.decode(frames)
        return identity, command, body

    def answer(self, identity: bytes, command: bytes, body: dict[str, Any]) -> None:
        self.sock.send_multipart([identity, *P.encode(command, body)])


@pytest.fixture
def broker() -> Iterator[FakeBroker]:
    ctx = zmq.Context()
    fake = FakeBroker(ctx)
    yield fake
    fake.sock.close(0)
    ctx.term()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


def _in_loop(make: Callable[[AsyncClient], Any], endpoint: str, timeout: float = 10.0) -> Callable[[], Any]:
    """A function that runs ``make(client)`` on a fresh event loop with its own AsyncClient."""
    async def main() -> Any:
        async with AsyncClient(endpoint, timeout=timeout) as client:
            return await make(client)
    return lambda: asyncio.run(main())


@pytest.fixture
def start(broker: FakeBroker, pool: ThreadPoolExecutor) -> Iterator[Callable[[str, Callable[[Any], Any]], Future[Any]]]:
    """``start(kind, call)``: ``call(client)`` on a pool thread, with a ``Client`` ("sync") or an
    ``AsyncClient`` on its own loop ("async"), both talking to the fake broker."""
    clients: list[Client] = []

    def submit(kind: str, call: Callable[[Any], Any]) -> Future[Any]:
        if kind == "async":
            return pool.submit(_in_loop(call, broker.endpoint))
        clients.append(Client(broker.endpoint, timeout=10))
        return pool.submit(call, clients[-1])

    yield submit
    for client in clients:
        client.close()


# --- re-sends and matching -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_unanswered_enqueue_is_resent_with_the_same_rid_and_job_id(broker: FakeBroker, start: Any,
                                                                      kind: str) -> None:
    pending = start(kind, lambda client: client.enqueue("echo", {"n": 1}))
    _, _, first = broker.receive()   # dropped, as if lost
    identity, _, again = broker.receive()
    assert again["rid"] == first["rid"] and again["jobs"][0]["id"] == first["jobs"][0]["id"]
    broker.answer(identity, P.REPLY, {"rid": again["rid"], "ids": [again["jobs"][0]["id"]], "deduplicated": [False]})
    assert pending.result(timeout=10) == id_to_str(first["jobs"][0]["id"])


def test_a_late_answer_to_a_timed_out_request_is_not_taken_for_the_next_one(broker: FakeBroker) -> None:
    client = Client(broker.endpoint, timeout=0.3)
    try:
        with ThreadPoolExecutor(1) as one:  # one thread, so both requests use the same socket
            late = one.submit(client.stats)
            identity, _, stale = broker.receive()
            with pytest.raises(TimeoutError):
                late.result(timeout=10)
            broker.answer(identity, P.REPLY, {"rid": stale["rid"], "groups": {"stale": {}}})
            fresh = one.submit(client.stats)
            while True:
                identity, _, body = broker.receive()
                if body["rid"] != stale["rid"]:
                    break
            broker.answer(identity, P.REPLY, {"rid": body["rid"], "groups": {"fresh": {}}})
            assert set(fresh.result(timeout=10)) == {"fresh"}
    finally:
        client.close()


def test_async_requests_in_flight_at_once_each_get_their_own_reply_and_a_refusal_by_size(
        broker: FakeBroker, pool: ThreadPoolExecutor) -> None:
    async def three(client: AsyncClient) -> list[Any]:
        return await asyncio.gather(client.get(id_to_str(new_job_id())), client.stats(),
                                    client.enqueue("echo", b"x" * 999), return_exceptions=True)

    results = pool.submit(_in_loop(three, broker.endpoint))
    requests = [broker.receive() for _ in range(3)]
    by_command = {command: (identity, body) for identity, command, body in requests}
    identity, body = by_command[P.ENQUEUE]  # refused before its rid was read: only the size says whose
    size = len(P.pack(body))
    broker.answer(identity, P.ERROR, {"code": P.E_TOO_LARGE, "message": f"{size} bytes is over the limit", "size": size})
    identity, body = by_command[P.STATS]
    broker.answer(identity, P.REPLY, {"rid": body["rid"], "groups": {"g": {}}})
    identity, body = by_command[P.GET]
    broker.answer(identity, P.REPLY, {"rid": body["rid"], "jobs": [None]})
    got, stats, refused = results.result(timeout=10)
    assert got is None and set(stats) == {"g"}
    assert "over the limit" in str(refused) and isinstance(refused, ValueError)


# --- waits -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_wait_answered_storage_keeps_waiting_and_returns_the_final_job(broker: FakeBroker, start: Any,
                                                                        kind: str) -> None:
    pending = start(kind, lambda client: client.wait(id_to_str(JOB["id"]), 20))
    for _ in range(2):  # the broker's commit failed twice: the WAIT is asked again, not failed
        identity, command, body = broker.receive()
        assert command == P.WAIT
        broker.answer(identity, P.ERROR, {"rid": body["rid"], "code": P.E_STORAGE, "message": "disk full"})
    identity, _, body = broker.receive()
    broker.answer(identity, P.REPLY, {"rid": body["rid"], "job": JOB})
    result = pending.result(timeout=10)
    assert result.status == "completed" and result.value == 7


def test_an_enqueue_answered_storage_still_raises_storage_full(broker: FakeBroker, pool: ThreadPoolExecutor) -> None:
    with Client(broker.endpoint, timeout=10) as client:
        pending = pool.submit(client.enqueue, "echo", 1)
        identity, _, body = broker.receive()
        broker.answer(identity, P.ERROR, {"rid": body["rid"], "code": P.E_STORAGE, "message": "disk full"})
        with pytest.raises(StorageFull):
            pending.result(timeout=10)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_wait_over_the_brokers_cap_raises_too_many_waits(broker: FakeBroker, start: Any, kind: str) -> None:
    pending = start(kind, lambda client: client.wait(id_to_str(JOB["id"]), 20))
    identity, _, body = broker.receive()
    broker.answer(identity, P.ERROR, {"rid": body["rid"], "code": P.E_TOO_MANY_WAITS,
                                      "message": "10000 WAITs outstanding on this connection (the limit)"})
    with pytest.raises(TooManyWaits, match="10000 WAITs"):
        pending.result(timeout=10)


# --- threads and closing ------------------------------------------------------------------------------
def test_each_thread_sends_on_its_own_socket(broker: FakeBroker) -> None:
    client = Client(broker.endpoint, timeout=10)
    with ThreadPoolExecutor(8) as threads:
        start = threading.Barrier(8)

        def call() -> Any:
            start.wait()
            return client.stats()

        pending = [threads.submit(call) for _ in range(8)]
        requests = [broker.receive() for _ in range(8)]
        for identity, _, body in requests:
            broker.answer(identity, P.REPLY, {"rid": body["rid"], "groups": {}})
        assert all(p.result(timeout=10) == {} for p in pending)
    assert len({identity for identity, _, _ in requests}) == 8
    client.close()


def test_sockets_of_ended_threads_are_closed(cluster: Cluster) -> None:
    client = cluster.client()
    for _ in range(20):
        thread = threading.Thread(target=client.stats)
        thread.start()
        thread.join()
    client.stats()
    assert client._conn._open_count <= 2  # this thread's and at most the last ended one's


def test_close_from_another_thread_ends_a_blocked_wait(broker: FakeBroker, pool: ThreadPoolExecutor) -> None:
    client = Client(broker.endpoint, timeout=60)
    blocked = pool.submit(client.wait, id_to_str(JOB["id"]), 60)
    broker.receive()  # the WAIT is registered; no answer comes
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        blocked.result(timeout=10)
    with pytest.raises(RuntimeError, match="closed"):
        client.stats()


def test_sixteen_threads_on_one_client_each_get_their_jobs_stored(cluster: Cluster) -> None:
    client = cluster.client()
    with ThreadPoolExecutor(16) as threads:
        batches = list(threads.map(lambda t: [client.enqueue("echo", {"t": t, "i": i}, group="email")
                                              for i in range(25)], range(16)))
    ids = [job_id for batch in batches for job_id in batch]
    assert len(set(ids)) == 16 * 25
    assert client.stats()["email"]["pending"] == 16 * 25


def test_an_async_client_works_on_a_second_event_loop(cluster: Cluster) -> None:
    client = AsyncClient(cluster.endpoint, timeout=10)

    async def enqueue_some() -> list[str]:
        return list(await asyncio.gather(*(client.enqueue("echo", {"i": i}, group="email") for i in range(50))))

    first = asyncio.run(enqueue_some())
    second = asyncio.run(enqueue_some())
    asyncio.run(client.close())
    assert len(set(first + second)) == 100
    assert cluster.client().stats()["email"]["pending"] == 100


def test_a_broker_name_that_cannot_be_resolved_is_named_in_broker_unreachable(monkeypatch) -> None:
    import socket

    from shoal import BrokerUnreachable

    real = socket.getaddrinfo

    def resolve(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "broker.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with Client("tcp://broker.test:5555", timeout=0.3) as client, pytest.raises(BrokerUnreachable) as raised:
        client.stats()
    assert "tcp://broker.test:5555" in str(raised.value)
    assert str(raised.value).endswith(": broker.test could not be resolved: [Errno -2] Name or service not known")

"""Concurrent enqueues (AsyncClient tasks, Client threads) leave as one ENQUEUE, and each caller
still gets its own answer.

The batcher alone first (its ``send`` is a recording coroutine: the batcher is a pure piece of
the client), then a real broker: merged requests whose parts are refused for one caller only.
"""
from __future__ import annotations

import asyncio
import threading
import types
from typing import Any

import pytest

from shoal import AsyncClient, GroupSaturated
from shoal.client.coalesce import MAX_ITEMS, EnqueueBatcher
from shoal.client.combine import MAX_LEADERS, Combiner
from shoal.errors import BrokerUnreachable, StorageFull

from conftest import DEFAULT_TOML, wait_for

pytestmark = pytest.mark.timeout(60)


def item(n: int, payload: bytes = b"\x90") -> dict[str, Any]:
    return {"id": n.to_bytes(16, "big"), "wf": "noop", "payload": payload}


class Broker:
    """A stand-in for the reply side of ENQUEUE: records each request; refuses what ``refuse`` says."""

    def __init__(self, refuse: Any = None) -> None:
        self.requests: list[list[int]] = []
        self.refuse = refuse

    async def send(self, body: dict[str, Any]) -> dict[str, Any]:
        ns = [int.from_bytes(i["id"], "big") for i in body["jobs"]]
        self.requests.append(ns)
        await asyncio.sleep(0)
        if self.refuse is not None:
            self.refuse(ns)
        return {"ids": [i["id"] for i in body["jobs"]], "existed": [False] * len(ns),
                "deduplicated": [n % 2 == 1 for n in ns]}


def run(broker: Broker, calls: list[list[dict[str, Any]]]) -> list[Any]:
    async def main() -> list[Any]:
        batcher = EnqueueBatcher(broker.send, 1 << 20)
        return await asyncio.gather(*(batcher.enqueue(c) for c in calls), return_exceptions=True)
    return asyncio.run(main())


def test_calls_of_one_turn_leave_together_and_each_gets_its_own_part_of_the_reply() -> None:
    broker = Broker()
    replies = run(broker, [[item(1)], [item(2), item(3)], [item(4)]])
    assert broker.requests == [[1, 2, 3, 4]]
    assert [r["ids"] for r in replies] == [[item(1)["id"]], [item(2)["id"], item(3)["id"]], [item(4)["id"]]]
    assert [r["deduplicated"] for r in replies] == [[True], [False, True], [False]]


def test_a_turn_with_more_than_the_cap_makes_several_requests_in_order() -> None:
    broker = Broker()
    replies = run(broker, [[item(n)] for n in range(MAX_ITEMS * 2 + 5)])
    assert [len(r) for r in broker.requests] == [MAX_ITEMS, MAX_ITEMS, 5]
    assert [n for r in broker.requests for n in r] == list(range(MAX_ITEMS * 2 + 5))
    assert all(r["ids"] == [item(n)["id"]] for n, r in enumerate(replies))


def test_a_big_call_goes_alone() -> None:
    broker = Broker()
    run(broker, [[item(1)], [item(n) for n in range(100, 100 + MAX_ITEMS)]])
    assert sorted(map(len, broker.requests)) == [1, MAX_ITEMS]


def test_a_refusal_of_the_merged_request_is_asked_again_per_caller() -> None:
    def refuse(ns: list[int]) -> None:
        if 2 in ns:  # the broker refuses any request holding job 2 (as a saturated group would)
            raise StorageFull("storage full: no room")
    broker = Broker(refuse)
    replies = run(broker, [[item(1)], [item(2)], [item(3)]])
    assert broker.requests[0] == [1, 2, 3] and sorted(broker.requests[1:]) == [[1], [2], [3]]
    assert replies[0]["ids"] == [item(1)["id"]] and replies[2]["ids"] == [item(3)["id"]]
    assert isinstance(replies[1], StorageFull)


def test_no_answer_is_every_callers_answer() -> None:
    def unreachable(ns: list[int]) -> None:
        raise BrokerUnreachable("no answer from the broker at tcp://127.0.0.1:1 within 1s")
    broker = Broker(unreachable)
    replies = run(broker, [[item(1)], [item(2)]])
    assert broker.requests == [[1, 2]]  # not asked again: the outcome is unknown, not refused
    assert all(isinstance(r, BrokerUnreachable) for r in replies)


def test_a_real_broker_answers_merged_enqueues_each_on_their_own(cluster_factory) -> None:
    """64 tasks on one AsyncClient: every job stored once, dedup keys shared across tasks, and a
    group at its max_pending refuses only the callers who enqueued into it."""
    toml = DEFAULT_TOML + "\n[workflows.full]\nmax_pending = 1\n"
    cluster = cluster_factory(toml)
    cluster.start_broker()
    sync = cluster.client()
    sync.enqueue("echo", {"fill": True}, group="full")  # the group "full" is at its max_pending now

    async def main() -> list[Any]:
        async with AsyncClient(cluster.endpoint, timeout=20) as client:
            calls = []
            for n in range(64):
                if n % 16 == 5:
                    calls.append(client.enqueue("echo", {"n": n}, group="full"))
                elif n % 8 == 3:
                    calls.append(client.enqueue("echo", {"n": n}, group="email", key="shared"))
                else:
                    calls.append(client.enqueue("echo", {"n": n}, group="email"))
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(main())
    refused = [n for n, r in enumerate(results) if isinstance(r, GroupSaturated)]
    assert refused == [5, 21, 37, 53]
    keyed = {results[n] for n in range(64) if n % 8 == 3 and n % 16 != 5}
    assert len(keyed) == 1  # one job holds the key; every keyed caller got it
    plain = [results[n] for n in range(64) if n % 8 != 3 and n % 16 != 5]
    assert len(set(plain)) == len(plain)
    cluster.start_worker("email", 8)
    assert all(sync.wait(j, timeout=30).status == "completed" for j in set(plain) | keyed)
    assert sync.stats()["email"]["completed"] == len(plain) + 1


# --- the threaded Client: flat combining ---------------------------------------------------------
class ThreadedBroker:
    """The reply side of ENQUEUE for ``Combiner``: records requests and holds each until
    ``release`` is set, so the threads that come after the leaders queue behind them."""

    def __init__(self, refuse: Any = None) -> None:
        self.requests: list[list[int]] = []
        self.refuse = refuse
        self.release = threading.Event()
        self.lock = threading.Lock()

    def send(self, body: dict[str, Any]) -> dict[str, Any]:
        ns = [int.from_bytes(i["id"], "big") for i in body["jobs"]]
        with self.lock:
            self.requests.append(ns)
        assert self.release.wait(10)
        if self.refuse is not None:
            self.refuse(ns)
        return {"ids": [i["id"] for i in body["jobs"]], "existed": [False] * len(ns),
                "deduplicated": [n % 2 == 1 for n in ns]}


def run_threads(broker: ThreadedBroker, calls: list[list[dict[str, Any]]]) -> list[Any]:
    combiner = Combiner(broker.send, 1 << 20)
    results: list[Any] = [None] * len(calls)

    def call(n: int) -> None:
        try:
            results[n] = combiner.enqueue(calls[n])
        except Exception as exc:  # noqa: BLE001 - compared below
            results[n] = exc

    threads = [threading.Thread(target=call, args=(n,)) for n in range(len(calls))]
    for n, t in enumerate(threads[:MAX_LEADERS], 1):  # the leaders, one at a time: their requests are held
        t.start()
        wait_for(lambda n=n: len(broker.requests) == n, what="a leader's request")
    for t in threads[MAX_LEADERS:]:
        t.start()
    wait_for(lambda: len(combiner._queue) == len(calls) - MAX_LEADERS, what="the other callers to queue")
    broker.release.set()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    return results


def test_threads_that_queue_behind_a_request_leave_together_with_their_own_answers() -> None:
    broker = ThreadedBroker()
    results = run_threads(broker, [[item(n)] for n in range(12)])
    assert broker.requests[:MAX_LEADERS] == [[n] for n in range(MAX_LEADERS)]  # the leaders go at once
    rest = broker.requests[MAX_LEADERS:]  # the queue: one request per leader's hand-off, at most
    assert len(rest) <= MAX_LEADERS and sorted(n for r in rest for n in r) == list(range(MAX_LEADERS, 12))
    assert sorted(n for r in broker.requests for n in r) == list(range(12))  # each job sent once
    assert [r["ids"] for r in results] == [[item(n)["id"]] for n in range(12)]
    assert [r["deduplicated"] for r in results] == [[n % 2 == 1] for n in range(12)]


def test_a_refused_merged_request_is_sent_again_by_each_thread_alone() -> None:
    def refuse(ns: list[int]) -> None:
        if 7 in ns:
            raise StorageFull("storage full: no room")
    broker = ThreadedBroker(refuse)
    results = run_threads(broker, [[item(n)] for n in range(12)])
    assert isinstance(results[7], StorageFull)
    assert all(r["ids"] == [item(n)["id"]] for n, r in enumerate(results) if n != 7)
    assert [7] in broker.requests  # asked alone after the merged refusal


def test_threads_unanswered_together_each_raise_unreachable() -> None:
    def unreachable(ns: list[int]) -> None:
        if len(ns) > 1:
            raise BrokerUnreachable("no answer from the broker at tcp://127.0.0.1:1 within 1s")
    broker = ThreadedBroker(unreachable)
    results = run_threads(broker, [[item(n)] for n in range(6)])
    merged = next(r for r in broker.requests if len(r) > 1)
    assert all(isinstance(results[n], BrokerUnreachable) for n in merged)


def test_sixteen_threads_on_a_real_broker_each_get_their_own_answer(cluster_factory) -> None:
    toml = DEFAULT_TOML + "\n[workflows.full]\nmax_pending = 1\n"
    cluster = cluster_factory(toml)
    cluster.start_broker()
    client = cluster.client(timeout=20)
    client.enqueue("echo", {"fill": True}, group="full")
    results: dict[tuple[int, int], Any] = {}

    def producer(t: int) -> None:
        for i in range(20):
            try:
                if i == 7:
                    results[t, i] = client.enqueue("echo", {"t": t}, group="full")
                elif i == 3:
                    results[t, i] = client.enqueue("echo", {"t": t}, group="email", key="shared")
                else:
                    results[t, i] = client.enqueue("echo", {"t": t, "i": i}, group="email")
            except GroupSaturated as exc:
                results[t, i] = exc

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert all(isinstance(results[t, 7], GroupSaturated) for t in range(16))
    assert len({results[t, 3] for t in range(16)}) == 1
    plain = [results[t, i] for t in range(16) for i in range(20) if i not in (3, 7)]
    assert len(set(plain)) == len(plain) == 16 * 18
    cluster.start_worker("email", 8)
    assert all(client.wait(j, timeout=30).status == "completed" for j in plain)
    assert client.stats()["email"]["completed"] == len(plain) + 1


class GatedBroker:
    """ENQUEUE's reply side with one gate per request, opened by the test in any order."""

    def __init__(self) -> None:
        self.requests: list[list[int]] = []
        self.gates: list[threading.Event] = []
        self.lock = threading.Lock()

    def send(self, body: dict[str, Any]) -> dict[str, Any]:
        gate = threading.Event()
        with self.lock:
            self.requests.append([int.from_bytes(i["id"], "big") for i in body["jobs"]])
            self.gates.append(gate)
        assert gate.wait(10)
        return {"ids": [i["id"] for i in body["jobs"]], "existed": [False] * len(body["jobs"]),
                "deduplicated": [False] * len(body["jobs"])}


def two_rounds_and_a_queue(broker: GatedBroker, combiner: Combiner, results: dict[int, Any],
                           queued: range) -> list[threading.Thread]:
    """Two leaders' rounds held at the broker, and callers ``queued`` waiting behind them."""
    assert MAX_LEADERS == 2

    def call(n: int) -> None:
        results[n] = combiner.enqueue([item(n)])

    threads = []
    for n in range(2):
        threads.append(threading.Thread(target=call, args=(n,)))
        threads[-1].start()
        wait_for(lambda n=n: len(broker.requests) == n + 1, what="a leader's request")
    for n in queued:
        threads.append(threading.Thread(target=call, args=(n,)))
        threads[-1].start()
    wait_for(lambda: len(combiner._queue) == len(queued), what="the callers to queue")
    return threads


def test_a_round_ending_beside_another_leaves_the_queue_to_that_ones_end_which_sends_it_whole() -> None:
    broker = GatedBroker()
    combiner = Combiner(broker.send, 1 << 20)
    results: dict[int, Any] = {}
    threads = two_rounds_and_a_queue(broker, combiner, results, range(2, 8))
    broker.gates[0].set()  # the first round ends while the second is in flight
    threads[0].join(10)
    assert results[0]["ids"] == [item(0)["id"]]
    # its end handed the lead to no one (it does so before its caller returns): the queue waits
    assert combiner._leaders == 1 and not any(turn.lead for turn in combiner._queue)
    broker.gates[1].set()  # the last round in flight ends: its hand-off sends the queue, all of it
    wait_for(lambda: len(broker.requests) == 3, what="the queue's round")
    assert broker.requests[2] == list(range(2, 8))
    broker.gates[2].set()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert all(results[n]["ids"] == [item(n)["id"]] for n in range(8))
    assert combiner._leaders == 0 and combiner._queue == []


def test_a_caller_arriving_while_the_queue_waits_leads_it_in_its_own_round() -> None:
    broker = GatedBroker()
    combiner = Combiner(broker.send, 1 << 20)
    results: dict[int, Any] = {}
    threads = two_rounds_and_a_queue(broker, combiner, results, range(2, 6))
    broker.gates[0].set()
    threads[0].join(10)
    late = threading.Thread(target=lambda: results.update({9: combiner.enqueue([item(9)])}))
    late.start()  # one round in flight: the newcomer leads at once and takes the queue along
    wait_for(lambda: len(broker.requests) == 3, what="the newcomer's round")
    assert broker.requests[2] == [9, 2, 3, 4, 5]
    for gate in broker.gates[1:]:
        gate.set()
    for t in [*threads, late]:
        t.join(10)
        assert not t.is_alive()
    assert all(results[n]["ids"] == [item(n)["id"]] for n in (*range(6), 9))
    assert len(broker.requests) == 3 and combiner._leaders == 0


def test_a_waiting_thread_interrupted_leaves_the_queue_and_no_one_waits_for_it(monkeypatch) -> None:
    """Ctrl-C lands in a caller queued behind the leaders: its jobs are never sent, and the
    callers queued after it are still answered (the lead is never left with it)."""
    import shoal.client.combine as combine

    class Interrupted(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            if threading.current_thread() is threading.main_thread():
                raise KeyboardInterrupt
            return super().wait(timeout)

    # only the combiner's events (Thread.start waits on one of threading's own in this thread)
    monkeypatch.setattr(combine, "threading", types.SimpleNamespace(Event=Interrupted, Lock=threading.Lock))
    broker = ThreadedBroker()
    combiner = Combiner(broker.send, 1 << 20)
    results: dict[int, Any] = {}

    def call(n: int) -> None:
        results[n] = combiner.enqueue([item(n)])

    leaders = [threading.Thread(target=call, args=(n,)) for n in range(MAX_LEADERS)]
    for n, t in enumerate(leaders, 1):
        t.start()
        wait_for(lambda n=n: len(broker.requests) == n, what="a leader's request")
    with pytest.raises(KeyboardInterrupt):
        combiner.enqueue([item(99)])  # queued behind the leaders, interrupted while waiting
    after = threading.Thread(target=call, args=(50,))
    after.start()
    wait_for(lambda: len(combiner._queue) == 1, what="the next caller to queue")
    broker.release.set()
    for t in [*leaders, after]:
        t.join(10)
        assert not t.is_alive()
    assert results[50]["ids"] == [item(50)["id"]]
    assert 99 not in {n for r in broker.requests for n in r}


def test_many_threads_racing_each_get_their_own_ids_and_every_job_is_sent_once() -> None:
    """Leaders arriving together, hand-offs under load: no job sent twice or never, none empty."""
    sent: list[list[bytes]] = []
    lock = threading.Lock()

    def send(body: dict[str, Any]) -> dict[str, Any]:
        ids = [i["id"] for i in body["jobs"]]
        assert ids, "an empty ENQUEUE"
        with lock:
            sent.append(ids)
        return {"ids": ids, "existed": [False] * len(ids), "deduplicated": [False] * len(ids)}

    combiner = Combiner(send, 1 << 20)
    wrong: list[int] = []

    def producer(t: int) -> None:
        for i in range(50):
            n = t * 1000 + i
            if combiner.enqueue([item(n)])["ids"] != [item(n)["id"]]:
                wrong.append(n)

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(32)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
        assert not th.is_alive()
    assert wrong == []
    every = [i for ids in sent for i in ids]
    assert sorted(every) == sorted(item(t * 1000 + i)["id"] for t in range(32) for i in range(50))


def test_a_big_call_gets_its_own_ids_and_a_held_key_still_gives_the_holder(cluster_factory) -> None:
    """A call of MAX_ITEMS jobs or more goes alone and makes its ids' text while the broker
    works; the broker's answer still decides: a held key gives the holder's id, deduplicated."""
    cluster = cluster_factory(DEFAULT_TOML)
    cluster.start_broker()
    client = cluster.client(timeout=20)
    ids = client.enqueue_many("echo", [{"i": i} for i in range(40)], group="email")
    assert len(set(ids)) == 40 and not any(j.deduplicated for j in ids)
    assert [r.status for r in (client.get(j) for j in ids)] == ["pending"] * 40
    again = client.enqueue_many("echo", [{"i": i} for i in range(40)], group="email", ids=ids)
    assert again == ids and not any(j.deduplicated for j in again)  # a re-send: the same jobs
    holder = client.enqueue("echo", {"first": True}, group="email", key="one-of-them")
    keyed = client.enqueue_many("echo", [{"i": i} for i in range(40)], group="email", key="one-of-them")
    assert keyed == [holder] * 40 and all(j.deduplicated for j in keyed)
    assert client.stats()["email"]["pending"] == 41


def test_a_big_async_call_gets_its_own_ids_and_a_held_key_still_gives_the_holder(cluster_factory) -> None:
    """The same for ``AsyncClient``: a call of MAX_ITEMS or more goes alone, the answer decides."""
    cluster = cluster_factory(DEFAULT_TOML)
    cluster.start_broker()

    async def scenario() -> None:
        async with AsyncClient(cluster.endpoint, timeout=20) as client:
            ids = await client.enqueue_many("echo", [{"i": i} for i in range(40)], group="email")
            assert len(set(ids)) == 40 and not any(j.deduplicated for j in ids)
            holder = await client.enqueue("echo", {"first": True}, group="email", key="k")
            keyed = await client.enqueue_many("echo", [{"i": i} for i in range(40)], group="email", key="k")
            assert keyed == [holder] * 40 and all(j.deduplicated for j in keyed)
            assert (await client.stats())["email"]["pending"] == 41

    asyncio.run(scenario())

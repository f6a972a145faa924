"""The socket-free broker, driven message by message with a fake clock and a real LMDB store.

Each ``send`` is one pass of the server loop: handle the message, tick, take the pass's
writes and messages, commit the writes, and hand back the messages (decoded).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shoal import jobs as J
from shoal import protocol as P
from shoal.broker.core import Broker
from shoal.broker.storage.contract import CoreStore
from shoal.broker.storage.memstore import MemoryStore
from shoal.broker.storage.store import Store
from shoal.conf.settings import GroupSettings, Settings
from shoal.ids import new_job_id

LEASE_S = 10.0
BACKOFF_S = 1.0
SETTINGS = Settings(defaults=GroupSettings(lease_s=LEASE_S, backoff_s=BACKOFF_S, backoff_max_s=60.0, retries=3))
CLIENT = b"client-1"
WORKER = b"worker-1"
OTHER_WORKER = b"worker-2"


class FakeClock:
    """Wall and monotonic time that move only when the test says so."""

    def __init__(self) -> None:
        self.wall = 1_700_000_000_000
        self.now = 5_000.0

    def wall_ms(self) -> int:
        return self.wall

    def mono(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += round(seconds * 1000)


@dataclass
class Msg:
    """One decoded message from the outbox."""

    identity: bytes
    command: bytes
    body: dict[str, Any]


class Harness:
    """A broker over a store at ``path``; restartable on the same path."""

    def __init__(self, path: Path, clock: FakeClock | None = None, memory: MemoryStore | None = None,
                 settings: Settings = SETTINGS) -> None:
        self.path = path
        self.clock = clock or FakeClock()
        self.memory = memory
        self.settings = settings
        self.store: CoreStore = memory if memory is not None else Store(str(path))
        self.broker = Broker(self.store, settings, self.clock)
        self.broker.load()
        self._rid = 0

    def restart(self) -> Harness:
        """Close this broker's store and start a new broker on the same data (the clock goes on)."""
        if self.memory is None:
            self.store.close()
        return Harness(self.path, self.clock, self.memory, self.settings)

    def close(self) -> None:
        self.store.close()

    # --- one pass of the loop ------------------------------------------------------------
    def send(self, identity: bytes, command: bytes, body: dict[str, Any]) -> list[Msg]:
        self.broker.handle(identity, P.encode(command, body))
        return self.tick()

    def tick(self) -> list[Msg]:
        self.broker.tick()
        batch, outbox = self.broker.take()
        self.store.commit(batch, self.clock.wall_ms())
        out = []
        for item in outbox:
            command, body = P.decode(item.frames)
            out.append(Msg(item.identity, command, body))
        return out

    # --- client requests -----------------------------------------------------------------
    def request(self, command: bytes, body: dict[str, Any]) -> dict[str, Any]:
        """A client request; returns the body of its REPLY."""
        self._rid += 1
        out = self.send(CLIENT, command, {"rid": self._rid, **body})
        replies = [m for m in out if m.identity == CLIENT and m.body.get("rid") == self._rid]
        assert len(replies) == 1, out
        assert replies[0].command == P.REPLY, replies[0]
        return replies[0].body

    def enqueue(self, *job_ids: bytes, group: str = "email", **extra: Any) -> list[bool]:
        jobs = [{"id": i, "wf": "send-email", "group": group, "payload": P.pack({"n": n}), **extra}
                for n, i in enumerate(job_ids)]
        return self.request(P.ENQUEUE, {"jobs": jobs})["existed"]

    def new_jobs(self, n: int, **extra: Any) -> list[bytes]:
        ids = [new_job_id() for _ in range(n)]
        self.enqueue(*ids, **extra)
        return ids

    # --- workers -------------------------------------------------------------------------
    def hello(self, identity: bytes = WORKER, slots: int = 1, group: str = "email",
              running: list[list[Any]] | None = None, pid: int | None = None) -> list[Msg]:
        """HELLO from ``identity``; each identity is its own process unless ``pid`` says otherwise."""
        pid = sum(identity) if pid is None else pid
        return self.send(identity, P.HELLO, {"group": group, "pid": pid, "host": "test", "slots": slots,
                                             "workflows": {"send-email": {}}, "running": running or []})

    def done(self, job: dict[str, Any], identity: bytes = WORKER, token: int | None = None) -> list[Msg]:
        tok = job["token"] if token is None else token
        return self.send(identity, P.DONE, {"results": [[job["id"], tok, P.pack("ok"), 0, 1]]})

    def fail(self, job: dict[str, Any], kind: str = J.KIND_ERROR, identity: bytes = WORKER) -> list[Msg]:
        return self.send(identity, P.FAIL, {"failures": [{"id": job["id"], "token": job["token"], "kind": kind,
                                                          "error": "it broke", "traceback": "tb"}]})

    def state(self, job_id: bytes) -> str:
        record = self.store.get_job(job_id)
        assert record is not None
        return record["state"]

    def record(self, job_id: bytes) -> dict[str, Any]:
        record = self.store.get_job(job_id)
        assert record is not None
        return record


def dispatched(out: list[Msg], identity: bytes = WORKER) -> list[dict[str, Any]]:
    """The jobs sent to ``identity`` in JOB messages."""
    return [job for m in out if m.identity == identity and m.command == P.JOB for job in m.body["jobs"]]


def errors(out: list[Msg], identity: bytes) -> list[dict[str, Any]]:
    return [m.body for m in out if m.identity == identity and m.command == P.ERROR]


@pytest.fixture(params=["lmdb", "memory"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """The core over each store the contract has (tests/test_storage_contract.py)."""
    harness = Harness(tmp_path / "data", memory=MemoryStore() if request.param == "memory" else None)
    yield harness
    harness.close()


def only(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


# --- enqueue ------------------------------------------------------------------------------
def test_enqueue_of_a_new_id_replies_existed_false_and_stores_a_pending_job(h: Harness) -> None:
    job_id = new_job_id()
    assert h.enqueue(job_id) == [False]
    record = h.record(job_id)
    assert record["state"] == J.PENDING
    assert record["workflow"] == "send-email" and record["group"] == "email"


def test_enqueue_of_a_known_id_replies_existed_true_and_makes_no_second_job(h: Harness) -> None:
    job_id = new_job_id()
    h.enqueue(job_id)
    assert h.enqueue(job_id) == [True]
    assert len(list(h.store.iter_jobs())) == 1
    enqueues = [entry for _, entry in h.store.iter_log() if entry[1] == "enqueue"]
    assert len(enqueues) == 1


def test_enqueue_of_a_finished_job_id_still_replies_existed_true(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    job = only(dispatched(h.hello(slots=1)))
    h.done(job)
    assert h.state(job_id) == J.COMPLETED
    assert h.enqueue(job_id) == [True]
    assert h.state(job_id) == J.COMPLETED


def test_enqueue_reports_existed_per_job_in_a_batch(h: Harness) -> None:
    old, new = new_job_id(), new_job_id()
    h.enqueue(old)
    assert h.enqueue(old, new) == [True, False]
    assert h.state(new) == J.PENDING


def test_delayed_enqueue_is_scheduled_until_its_due_time(h: Harness) -> None:
    [job_id] = h.new_jobs(1, delay_ms=2_000)
    assert h.state(job_id) == J.SCHEDULED
    h.clock.advance(1.9)
    h.tick()
    assert h.state(job_id) == J.SCHEDULED
    h.clock.advance(0.1)
    h.tick()
    assert h.state(job_id) == J.PENDING


def test_enqueue_with_a_bad_job_id_is_a_bad_request(h: Harness) -> None:
    out = h.send(CLIENT, P.ENQUEUE, {"rid": 1, "jobs": [{"id": b"short", "wf": "w", "payload": b"\xc0"}]})
    err = only(errors(out, CLIENT))
    assert err["rid"] == 1
    assert "16 bytes" in err["message"]
    assert list(h.store.iter_jobs()) == []


# --- dispatch and credit -----------------------------------------------------------------------
def test_worker_gets_no_more_jobs_than_its_free_slots(h: Harness) -> None:
    h.new_jobs(5)
    out = h.hello(slots=2)
    assert len(dispatched(out)) == 2
    assert dispatched(h.tick()) == []
    assert sum(1 for r in h.store.iter_jobs() if r["state"] == J.RUNNING) == 2


def test_a_finished_job_frees_a_slot_for_the_next_one(h: Harness) -> None:
    ids = h.new_jobs(3)
    first, _ = dispatched(h.hello(slots=2))
    out = h.done(first)
    assert [job["id"] for job in dispatched(out)] == [ids[2]]


def test_jobs_are_dispatched_in_arrival_order_with_a_lease_token(h: Harness) -> None:
    ids = h.new_jobs(3)
    jobs = dispatched(h.hello(slots=3))
    assert [job["id"] for job in jobs] == ids
    assert all(job["token"] and job["attempt"] == 1 for job in jobs)
    assert len({job["token"] for job in jobs}) == 3


def test_a_worker_gets_only_jobs_of_its_group(h: Harness) -> None:
    h.new_jobs(2, group="media")
    assert dispatched(h.hello(slots=5, group="email")) == []


# --- results and leases --------------------------------------------------------------------
def test_done_with_the_live_token_completes_the_job(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    job = only(dispatched(h.hello()))
    h.done(job)
    record = h.record(job_id)
    assert record["state"] == J.COMPLETED
    assert P.unpack(record["value"]) == "ok"


def test_only_a_pass_that_writes_and_sends_nothing_is_unobserved(h: Harness) -> None:
    """The shell lets such a pass's commit wait for company (``IdleSpin.company``): a DONE with no
    waiter and nothing left to give out. A DONE that hands out the next job or answers a
    waiter, and an enqueue (acked), are committed at once; an empty pass has nothing to commit."""

    def finish(job: dict[str, Any]) -> bool:
        h.broker.handle(WORKER, P.encode(P.DONE, {"results": [[job["id"], job["token"], P.pack("ok"), 0, 1]]}))
        h.broker.tick()
        return h.broker.unobserved()

    first, second = h.new_jobs(2)
    job = only(dispatched(h.hello(slots=1)))
    assert not finish(job)  # the freed slot takes the second job: a JOB goes out
    job = only(dispatched(h.tick()))
    assert h.send(CLIENT, P.WAIT, {"rid": 7, "id": second}) == []  # running: the WAIT is held
    assert not finish(job)  # the waiter is answered
    assert [m.body["rid"] for m in h.tick()] == [7]
    third = new_job_id()
    job = only(dispatched(h.send(CLIENT, P.ENQUEUE, {"rid": 8, "jobs": [
        {"id": third, "wf": "send-email", "group": "email", "payload": P.pack(1)}]})))
    assert finish(job)  # nothing queued, nobody waiting: nothing leaves before its commit
    assert h.tick() == [] and h.state(third) == J.COMPLETED
    h.broker.handle(CLIENT, P.encode(P.ENQUEUE, {"rid": 9, "jobs": [
        {"id": new_job_id(), "wf": "send-email", "group": "email", "payload": P.pack(1)}]}))
    h.broker.tick()
    assert not h.broker.unobserved()  # the ack and the JOB wait for this commit
    h.tick()
    h.broker.tick()
    assert not h.broker.unobserved()  # an empty pass


def test_stale_token_is_rejected(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    job = only(dispatched(h.hello()))
    h.done(job, token=job["token"] + 1)
    assert h.state(job_id) == J.RUNNING
    assert h.record(job_id)["value"] is None
    assert h.broker.stats()["email"]["completed"] == 0


def test_stale_result_leaves_the_live_lease_in_place(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    job = only(dispatched(h.hello()))
    h.done(job, token=job["token"] + 1)
    h.clock.advance(LEASE_S + 0.1)
    h.tick()
    assert h.state(job_id) == J.PENDING


def test_stale_result_does_not_give_the_worker_extra_credit(h: Harness) -> None:
    h.new_jobs(2)
    job = only(dispatched(h.hello(slots=1)))
    out = h.done(job, token=job["token"] + 1)
    assert dispatched(out) == []


def test_result_from_a_worker_that_does_not_hold_the_lease_is_rejected(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    job = only(dispatched(h.hello(WORKER)))
    h.hello(OTHER_WORKER)
    h.done(job, identity=OTHER_WORKER, token=job["token"] + 7)
    assert h.state(job_id) == J.RUNNING


def test_silent_worker_loses_its_jobs_to_the_front_of_the_queue(h: Harness) -> None:
    ids = h.new_jobs(3)
    job = only(dispatched(h.hello(WORKER, slots=1)))
    assert job["id"] == ids[0]
    h.clock.advance(LEASE_S + 0.1)
    out = h.tick()
    assert h.state(ids[0]) == J.PENDING
    assert h.broker.stats()["email"]["workers"] == 0
    assert dispatched(out) == []
    again = only(dispatched(h.hello(OTHER_WORKER, slots=1), OTHER_WORKER))
    assert again["id"] == ids[0]
    assert again["token"] != job["token"]


def test_a_worker_losing_its_lease_costs_the_job_an_attempt(h: Harness) -> None:
    h.new_jobs(1)
    h.hello(WORKER)
    h.clock.advance(LEASE_S + 0.1)
    h.tick()
    again = only(dispatched(h.hello(OTHER_WORKER), OTHER_WORKER))
    assert again["attempt"] == 2


def test_heartbeats_keep_a_worker_and_its_leases(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    h.hello()
    for _ in range(3):
        h.clock.advance(LEASE_S * 0.6)
        h.send(WORKER, P.HEARTBEAT, {})
    assert h.state(job_id) == J.RUNNING
    assert h.broker.stats()["email"]["workers"] == 1


def test_a_result_from_a_worker_declared_dead_is_rejected(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    job = only(dispatched(h.hello(WORKER)))
    h.clock.advance(LEASE_S + 0.1)
    h.tick()
    out = h.done(job)
    assert h.state(job_id) == J.PENDING
    assert [m.command for m in out if m.identity == WORKER] == [P.RECONNECT]


# --- failures, retries, dead letters ---------------------------------------------------------
def test_failure_with_retries_left_schedules_a_retry(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    job = only(dispatched(h.hello()))
    h.send(WORKER, P.READY, {"slots": 0})   # nothing else goes to this worker
    h.fail(job)
    record = h.record(job_id)
    assert record["state"] == J.SCHEDULED
    assert record["error"] == "it broke" and record["error_kind"] == J.KIND_ERROR
    # first retry: the backoff with jitter, between half and all of it
    assert h.clock.wall_ms() + BACKOFF_S * 500 <= record["due_ms"] <= h.clock.wall_ms() + BACKOFF_S * 1000


def test_retry_becomes_pending_after_its_due_time(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    job = only(dispatched(h.hello()))
    h.send(WORKER, P.READY, {"slots": 0})
    h.fail(job)
    due_ms = h.record(job_id)["due_ms"]
    h.clock.advance((due_ms - h.clock.wall_ms() - 1) / 1000)
    h.tick()
    assert h.state(job_id) == J.SCHEDULED
    h.clock.advance(0.001)
    h.tick()
    assert h.state(job_id) == J.PENDING


def test_retry_is_dispatched_again_as_the_next_attempt(h: Harness) -> None:
    h.new_jobs(1)
    job = only(dispatched(h.hello()))
    h.fail(job)
    h.clock.advance(BACKOFF_S)
    again = only(dispatched(h.tick()))
    assert again["id"] == job["id"] and again["attempt"] == 2


def test_permanent_failure_goes_dead(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    job = only(dispatched(h.hello()))
    h.fail(job, kind=J.KIND_PERMANENT)
    record = h.record(job_id)
    assert record["state"] == J.DEAD
    assert record["error_kind"] == J.KIND_PERMANENT and record["error"] == "it broke"
    assert [r["id"] for r in h.request(P.DEAD, {})["jobs"]] == [job_id]


def test_failure_of_the_last_attempt_goes_dead(h: Harness) -> None:
    [job_id] = h.new_jobs(1, retries=1)
    job = only(dispatched(h.hello()))
    h.fail(job)
    h.clock.advance(BACKOFF_S)
    second = only(dispatched(h.tick()))
    h.fail(second)
    record = h.record(job_id)
    assert record["state"] == J.DEAD
    assert record["attempts"] == 2


def test_requeue_puts_a_dead_job_back_with_a_fresh_budget(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    job = only(dispatched(h.hello()))
    h.send(WORKER, P.READY, {"slots": 0})
    h.fail(job, kind=J.KIND_PERMANENT)
    assert h.request(P.REQUEUE, {"ids": [job_id]})["requeued"] == [job_id]
    record = h.record(job_id)
    assert record["state"] == J.PENDING
    assert record["attempts"] == 0 and record["error"] is None and record["error_kind"] is None
    assert h.request(P.DEAD, {})["jobs"] == []


def test_requeued_job_runs_again_as_attempt_one(h: Harness) -> None:
    h.new_jobs(1)
    job = only(dispatched(h.hello()))
    h.fail(job, kind=J.KIND_PERMANENT)
    out = h.send(CLIENT, P.REQUEUE, {"rid": 1, "ids": [job["id"]]})
    again = only(dispatched(out))
    assert again["id"] == job["id"] and again["attempt"] == 1


def test_requeue_of_a_job_that_is_not_dead_is_refused(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    assert h.request(P.REQUEUE, {"ids": [job_id]})["requeued"] == []
    assert h.state(job_id) == J.PENDING


# --- restart -------------------------------------------------------------------------------------
def test_pending_jobs_are_still_pending_after_a_restart(h: Harness) -> None:
    ids = h.new_jobs(3)
    h2 = h.restart()
    try:
        assert all(h2.state(i) == J.PENDING for i in ids)
        assert [job["id"] for job in dispatched(h2.hello(slots=3))] == ids
    finally:
        h2.close()


def test_running_jobs_are_redelivered_after_their_orphan_deadline_on_restart(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    first = only(dispatched(h.hello()))
    h2 = h.restart()
    try:
        assert h2.state(job_id) == J.RUNNING
        assert dispatched(h2.hello(OTHER_WORKER), OTHER_WORKER) == []   # its first worker may still finish it
        h2.clock.advance(LEASE_S - 0.1)
        assert dispatched(h2.send(OTHER_WORKER, P.HEARTBEAT, {}), OTHER_WORKER) == []
        h2.clock.advance(0.2)
        again = only(dispatched(h2.send(OTHER_WORKER, P.HEARTBEAT, {}), OTHER_WORKER))
        assert again["id"] == job_id and again["token"] != first["token"]
    finally:
        h2.close()


def test_a_worker_still_running_a_job_keeps_it_across_a_restart(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    job = only(dispatched(h.hello()))
    h2 = h.restart()
    try:
        h2.hello(running=[[job_id, job["token"]]])
        h2.clock.advance(LEASE_S * 0.6)
        h2.send(WORKER, P.HEARTBEAT, {})
        h2.clock.advance(LEASE_S * 0.6)   # past the orphan deadline: adopted, so not redelivered
        h2.send(WORKER, P.HEARTBEAT, {})
        h2.done(job)
        assert h2.state(job_id) == J.COMPLETED
    finally:
        h2.close()


def test_scheduled_retries_survive_a_restart(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    job = only(dispatched(h.hello()))
    h.fail(job)
    due_ms = h.record(job_id)["due_ms"]
    h2 = h.restart()
    try:
        assert h2.state(job_id) == J.SCHEDULED
        h2.clock.advance((due_ms - h2.clock.wall_ms()) / 1000)
        h2.tick()
        assert h2.state(job_id) == J.PENDING
    finally:
        h2.close()


# --- bad messages ----------------------------------------------------------------------------------
def test_a_malformed_message_gets_an_error_and_changes_nothing(h: Harness) -> None:
    h.broker.handle(CLIENT, [P.VERSION, P.ENQUEUE, b"\xc1"])
    out = h.tick()
    err = only(errors(out, CLIENT))
    assert err["code"] == P.E_PROTOCOL and "malformed msgpack" in err["message"]
    assert list(h.store.iter_jobs()) == []


def test_a_command_only_the_broker_sends_is_refused(h: Harness) -> None:
    err = only(errors(h.send(CLIENT, P.JOB, {"rid": 3, "jobs": []}), CLIENT))
    assert err["rid"] == 3
    assert "JOB is not a command the broker accepts" in err["message"]


def test_get_of_an_empty_id_is_answered_not_raised(h: Harness) -> None:
    out = h.send(CLIENT, P.GET, {"rid": 1, "ids": [b""]})
    assert [m.body["rid"] for m in out if m.identity == CLIENT] == [1]


def test_hello_with_a_workflow_name_that_is_not_text_is_refused_and_commit_succeeds(h: Harness) -> None:
    h.broker.handle(WORKER, P.encode(P.HELLO, {"group": "email", "slots": 1, "workflows": {1: {}}}))
    h.broker.tick()
    batch, outbox = h.broker.take()
    h.store.commit(batch, h.clock.wall_ms())
    assert [P.decode(o.frames)[0] for o in outbox if o.identity == WORKER] == [P.ERROR]


def test_a_parent_waiting_on_its_children_without_a_deadline_still_waits_after_a_restart(h: Harness) -> None:
    [parent_id] = h.new_jobs(1)
    parent = only(dispatched(h.hello(slots=1)))
    child = new_job_id()
    h.send(WORKER, P.STEP, {"rid": 1, "id": parent_id, "token": parent["token"], "name": "kids", "record": {},
                            "enqueue": [{"id": child, "wf": "send-email", "group": "email", "payload": b"\x00"}]})
    kid = only(dispatched(h.send(WORKER, P.SUSPEND, {"id": parent_id, "token": parent["token"], "name": "all",
                                                     "wait_on": [child]})))  # the freed slot takes the child
    assert h.state(parent_id) == J.SCHEDULED and kid["id"] == child
    h2 = h.restart()
    try:
        h2.clock.advance(5)
        h2.tick()
        assert h2.state(parent_id) == J.SCHEDULED  # not woken as if its wait had timed out
        h2.hello(slots=1, running=[[child, kid["token"]]])
        h2.done(kid)
        assert h2.state(parent_id) == J.RUNNING  # the last child woke it, and the free slot took it
        assert h2.store.steps_of(parent_id)["all"]["children"][0][1] == J.COMPLETED
    finally:
        if h2.memory is None:
            h2.close()


def test_a_stored_step_is_in_the_log_so_a_replay_rebuilds_it(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    job = only(dispatched(h.hello(slots=1)))
    h.send(WORKER, P.STEP, {"rid": 1, "id": job_id, "token": job["token"], "name": "one", "record": {"value": b"1"}})
    [entry] = [e for _, e in h.store.iter_log() if e[1] == "step"]
    assert entry[2] == job_id and entry[3]["step"] == "one" and entry[3]["steps"] == 1
    assert h.record(job_id)["steps"] == 1

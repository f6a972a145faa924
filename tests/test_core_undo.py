"""A handler that raises leaves the broker as it was before that message: memory, batch and outbox
(socket-free core, fake clock, both stores). The fault point ``event_emit`` stands for a bug of
ours inside a handler (``shoal.faults.trip``)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal import faults
from shoal import jobs as J
from shoal import protocol as P
from shoal.broker.core import Broker
from shoal.broker.storage.memstore import MemoryStore
from shoal.ids import new_job_id

from test_broker_core import CLIENT, WORKER, Harness, Msg, dispatched, errors, only

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=["lmdb", "memory"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "data", memory=MemoryStore() if request.param == "memory" else None)
    harness.broker.events_wanted = True  # events are built (and the fault point reached) only for a listener
    yield harness
    harness.close()


def memory_of(broker: Broker) -> dict[str, Any]:
    """Everything the core keeps in memory, as plain values (to compare before and after)."""
    core = broker.core
    b = core.effects.batch
    return {
        "jobs": {i: j.to_record() for i, j in core.jobs.jobs.items()},
        "active": {g: n for g, n in core.jobs.active.items() if n},
        "dead": {g: set(s) for g, s in core.jobs.dead.items() if s},
        "keys": dict(core.jobs.keys), "seq": core.jobs.seq,
        "counters": {g: dict(c) for g, c in core.jobs.counters.items()},
        "known_groups": set(core.jobs.known_groups),
        "ready": {g: sorted(q._live.items()) for g, q in core.dispatch.ready.items() if len(q)},
        "queue_order": {g: _drain_order(q) for g, q in core.dispatch.ready.items()},
        "unrouted": {w: list(ids) for w, ids in core.dispatch.unrouted.items() if ids},
        "routes": dict(core.dispatch.routes),
        "schedule": dict(core.timetable.due._live),
        # last_seen is left out: a message whose handler failed still showed its sender alive
        "workers": {w.identity: (w.group, w.slots, dict(w.leases)) for w in core.leases.workers},
        "rotation": {g: [w.identity for w in ws] for g, ws in core.leases.workers.by_group.items() if ws},
        "orphans": dict(core.leases.orphans), "superseded": set(core.leases.superseded),
        "waiters": {i: set(w) for i, w in core.waiters.waiters.items()}, "waits_of": dict(core.waiters.waits_of),
        "fanin": {i: set(c) for i, c in core.waiters.fanin.items()},
        "storage": (core.admission.storage_used, core.admission.storage_room),
        "history": (list(core.history.wanted), dict(core.history.reading)),
        "batch": (dict(b.jobs), list(b.log), list(b.expiry_add), dict(b.routes),
                  {g: dict(c) for g, c in b.counters.items()}, dict(b.steps), dict(b.cron)),
        "outbox": len(core.effects.outbox), "events": len(core.effects.events),
    }


def _drain_order(queue: Any) -> list[bytes]:
    """The order a ready queue would hand its jobs out, without changing it (an entry put back by
    an undo may stand twice in the heap; the second is stale once the first is popped)."""
    live = dict(queue._live)
    order: list[bytes] = []
    for entry in sorted(queue._heap):
        if live.get(entry[2]) == (entry[0], entry[1]) and entry[2] not in order:
            order.append(entry[2])
    return order


def failing(h: Harness, identity: bytes, command: bytes, body: dict[str, Any]) -> list[Msg]:
    """Handle one message with the fault armed; memory must not change; returns the pass's messages."""
    before = memory_of(h.broker)
    with faults.raising("event_emit"):
        h.broker.handle(identity, P.encode(command, body))
    after = memory_of(h.broker)
    outbox = after.pop("outbox"), before.pop("outbox")
    assert after == before
    assert outbox[0] == outbox[1] + 1  # the error reply, nothing else
    return h.tick()


def test_a_two_job_enqueue_whose_handler_raises_creates_neither_job(h: Harness) -> None:
    a, b = new_job_id(), new_job_id()
    jobs = [{"id": i, "wf": "send-email", "group": "email", "payload": P.pack(1)} for i in (a, b)]
    out = failing(h, CLIENT, P.ENQUEUE, {"rid": 1, "jobs": jobs})
    [err] = errors(out, CLIENT)
    assert err["code"] == P.E_INTERNAL and "not applied" in err["message"] and err["rid"] == 1
    assert h.store.get_job(a) is None and h.store.get_job(b) is None  # the pass committed without them
    assert h.broker.jobs == {} and "email" not in h.broker.stats()  # not even its group was made known
    assert h.enqueue(a, b) == [False, False]  # the same request, sent again, is new work


def test_a_bulk_enqueue_whose_handler_raises_late_takes_back_every_kind_of_birth(h: Harness) -> None:
    """Plain jobs (made together by ``create_many``), a delayed one and an unrouted one (each made
    by ``create``) in one ENQUEUE; the fault fires at the fifth job: none of the five stays."""
    ids = [new_job_id() for _ in range(6)]
    jobs = [{"id": i, "wf": "send-email", "group": "email", "payload": P.pack(n)} for n, i in enumerate(ids)]
    jobs[1]["delay_ms"] = 60_000
    del jobs[3]["group"]
    jobs[3]["wf"] = "nobody-serves-this"
    before = memory_of(h.broker)
    with faults.raising("event_emit", after=4):
        h.broker.handle(CLIENT, P.encode(P.ENQUEUE, {"rid": 7, "jobs": jobs}))
    after = memory_of(h.broker)
    assert after.pop("outbox") == before.pop("outbox") + 1
    assert after == before
    assert h.enqueue(*ids) == [False] * 6  # sent again, all six are new work


def test_an_earlier_message_of_the_same_pass_is_kept(h: Harness) -> None:
    kept, lost = new_job_id(), new_job_id()
    h.broker.handle(CLIENT, P.encode(P.ENQUEUE, {"rid": 1, "jobs": [
        {"id": kept, "wf": "send-email", "group": "email", "payload": b"\x01"}]}))
    failing(h, CLIENT, P.ENQUEUE, {"rid": 2, "jobs": [{"id": lost, "wf": "send-email", "group": "email",
                                                       "payload": b"\x01"}]})
    assert h.state(kept) == J.PENDING and h.store.get_job(lost) is None


def test_a_done_whose_handler_raises_leaves_the_job_running_and_its_waiter_waiting(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    job = only(dispatched(h.hello(slots=1)))
    assert h.send(CLIENT, P.WAIT, {"rid": 5, "id": job_id}) == []
    failing(h, WORKER, P.DONE, {"results": [[job["id"], job["token"], P.pack("ok"), 0]]})
    assert h.state(job_id) == J.RUNNING and h.broker.workers.get(WORKER).credit == 0
    out = h.done(job)  # the worker sends it again
    [answer] = [m.body for m in out if m.identity == CLIENT and m.body.get("rid") == 5]
    assert answer["job"]["state"] == J.COMPLETED and h.record(job_id)["attempts"] == 1


def test_a_fail_whose_handler_raises_charges_nothing_and_schedules_nothing(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    job = only(dispatched(h.hello(slots=1)))
    failing(h, WORKER, P.FAIL, {"failures": [{"id": job["id"], "token": job["token"], "kind": J.KIND_ERROR,
                                              "error": "it broke"}]})
    assert h.state(job_id) == J.RUNNING
    assert h.broker.stats()["email"]["failed"] == 0 and h.broker.stats()["email"]["retried"] == 0


def test_a_cancel_whose_handler_raises_leaves_the_job_queued_in_its_place(h: Harness) -> None:
    first, second = h.new_jobs(2)
    failing(h, CLIENT, P.CANCEL, {"rid": 3, "id": first})
    assert h.state(first) == J.PENDING
    assert [j["id"] for j in dispatched(h.hello(slots=2))] == [first, second]  # order kept


def test_a_done_of_two_results_whose_second_raises_completes_neither(h: Harness) -> None:
    first, second = h.new_jobs(2)
    jobs = dispatched(h.hello(slots=2))
    failing(h, WORKER, P.DONE, {"results": [[j["id"], j["token"], P.pack("ok"), 0] for j in jobs]})
    assert h.state(first) == h.state(second) == J.RUNNING
    assert h.broker.stats()["email"]["completed"] == 0


def test_a_message_handled_whole_leaves_nothing_to_take_back(h: Harness) -> None:
    [job_id] = h.new_jobs(1, key="k")
    job = only(dispatched(h.hello(slots=1)))
    h.done(job)
    h.broker.handle(CLIENT, P.encode(P.GET, {"rid": 9, "ids": [job_id]}))
    assert h.broker.core.undo == []


def test_a_step_with_children_whose_handler_raises_creates_no_child(h: Harness) -> None:
    h.new_jobs(1)
    parent = only(dispatched(h.hello(slots=1)))
    child = {"id": new_job_id(), "wf": "send-email", "group": "email", "payload": P.pack(1)}
    out = failing(h, WORKER, P.STEP, {"rid": 4, "id": parent["id"], "token": parent["token"], "name": "kids",
                                      "record": {}, "enqueue": [child]})
    assert errors(out, WORKER)[0]["code"] == P.E_INTERNAL
    assert h.store.get_job(child["id"]) is None and h.store.steps_of(parent["id"]) == {}


# --- any message, failing anywhere ------------------------------------------------------------
def _handle_maybe_failing(h: Harness, rng: Any, identity: bytes, command: bytes, body: dict[str, Any]) -> bool:
    """Handle with the fault armed at a random depth half the time; True when the handler raised,
    and then memory is what it was before the message."""
    dice = rng.random()
    if dice < 0.4:
        h.broker.handle(identity, P.encode(command, body))
        return False
    before = memory_of(h.broker)
    if dice < 0.7:
        with faults.raising("event_emit", after=rng.randrange(4)):
            h.broker.handle(identity, P.encode(command, body))
    else:  # the handler does everything it does, then raises: all of it must be taken back
        table = h.broker._handlers
        h.broker._handlers = {c: row._replace(handler=_then_raise(row.handler)) for c, row in table.items()}
        try:
            h.broker.handle(identity, P.encode(command, body))
        finally:
            h.broker._handlers = table
    last = h.broker.core.effects.outbox[-1] if h.broker.core.effects.outbox else None
    raised = last is not None and P.decode(last.frames)[1].get("code") == P.E_INTERNAL
    if raised:
        after = memory_of(h.broker)
        after.pop("outbox"), before.pop("outbox")
        after.pop("events"), before.pop("events")
        assert after == before, (command, body)
    return raised


def _then_raise(handler: Any) -> Any:
    def wrapped(core: Any, identity: bytes, message: Any) -> None:
        handler(core, identity, message)
        raise faults.FaultInjected("the handler finished, then something of ours broke")
    return wrapped


@pytest.mark.parametrize("seed", range(12))
def test_a_random_run_with_handlers_failing_anywhere_is_always_taken_back(seed: int) -> None:
    import random
    rng = random.Random(seed)
    h = Harness(Path("unused"), memory=MemoryStore())
    h.broker.events_wanted = True
    running: dict[bytes, dict[str, Any]] = {}   # job id -> its JOB item (id, token)
    known: list[bytes] = []
    raised = 0
    for step in range(300):
        choice = rng.randrange(10)
        rid = step + 1
        if choice == 0:
            ids = [new_job_id() for _ in range(rng.randrange(1, 4))]
            known.extend(ids)
            jobs = [{"id": i, "wf": "send-email", "group": "email", "payload": P.pack(n),
                     "key": rng.choice([None, "a", "b"]), "delay_ms": rng.choice([0, 0, 500]),
                     "priority": rng.randrange(3)} for n, i in enumerate(ids)]
            raised += _handle_maybe_failing(h, rng, CLIENT, P.ENQUEUE, {"rid": rid, "jobs": jobs})
        elif choice == 1:
            identity = rng.choice([WORKER, b"worker-2"])
            raised += _handle_maybe_failing(h, rng, identity, P.HELLO, {
                "group": "email", "pid": sum(identity), "host": "test", "slots": rng.randrange(1, 4),
                "workflows": {"send-email": {}}, "running": [[i, j["token"]] for i, j in running.items()][:2]})
        elif choice in (2, 3) and running:
            items = rng.sample(sorted(running.values(), key=lambda j: j["id"]), min(len(running), rng.randrange(1, 3)))
            identity = rng.choice([WORKER, b"worker-2"])
            if choice == 2:
                body = {"results": [[j["id"], j["token"], P.pack("ok"), 0] for j in items]}
                raised += _handle_maybe_failing(h, rng, identity, P.DONE, body)
            else:
                body = {"failures": [{"id": j["id"], "token": j["token"], "error": "x",
                                      "kind": rng.choice([J.KIND_ERROR, J.KIND_PERMANENT])} for j in items]}
                raised += _handle_maybe_failing(h, rng, identity, P.FAIL, body)
        elif choice == 4 and known:
            raised += _handle_maybe_failing(h, rng, CLIENT, P.CANCEL, {"rid": rid, "id": rng.choice(known)})
        elif choice == 5:
            raised += _handle_maybe_failing(h, rng, CLIENT, P.REQUEUE, {"rid": rid, "all": True})
        elif choice == 6 and known:
            raised += _handle_maybe_failing(h, rng, CLIENT, P.WAIT, {"rid": rid, "id": rng.choice(known)})
        elif choice == 8 and rng.random() < 0.5:
            identity = rng.choice([WORKER, b"worker-2"])
            mine = [[i, j["token"]] for i, j in running.items()][:1]
            command, body = rng.choice([(P.READY, {"slots": rng.randrange(0, 3)}), (P.RETURN, {"jobs": mine}),
                                        (P.BYE, {}), (P.HEARTBEAT, {})])
            raised += _handle_maybe_failing(h, rng, identity, command, body)
        elif choice == 7 and running:
            parent = rng.choice(sorted(running.values(), key=lambda j: j["id"]))
            child = new_job_id()
            known.append(child)
            if rng.random() < 0.5:
                body = {"rid": rid, "id": parent["id"], "token": parent["token"], "name": f"s{step}", "record": {},
                        "enqueue": [{"id": child, "wf": "send-email", "group": "email", "payload": b"\x00"}]}
                raised += _handle_maybe_failing(h, rng, WORKER, P.STEP, body)
            else:
                body = {"id": parent["id"], "token": parent["token"], "name": f"w{step}", "wait_on": [child],
                        "due_ms": rng.choice([0, h.clock.wall_ms() + 800])}
                raised += _handle_maybe_failing(h, rng, WORKER, P.SUSPEND, body)
        else:
            h.clock.advance(rng.choice([0.2, 1.0, 1.0, 11.0]))
        for m in h.tick():
            if m.command == P.JOB:
                running.update((j["id"], j) for j in m.body["jobs"])
        running = {i: j for i, j in running.items() if i in h.broker.jobs and h.broker.jobs[i].token == j["token"]}
    assert raised >= 5  # the faults did fire, all over the place

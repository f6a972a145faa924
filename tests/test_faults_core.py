"""Faults as rules of the socket-free broker: re-HELLOs, clock steps, bad frames, full storage,
peers that do not read. Each test drives the real core with a fake clock (see test_broker_core).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal import jobs as J
from shoal import protocol as P
from shoal.broker.core import Outgoing
from shoal.broker.storage.memstore import MemoryStore
from shoal.ids import new_job_id

from test_broker_core import CLIENT, LEASE_S, OTHER_WORKER, WORKER, Harness, Msg, dispatched, errors, only


@pytest.fixture(params=["lmdb", "memory"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "data", memory=MemoryStore() if request.param == "memory" else None)
    yield harness
    harness.close()


def commands_to(out: list[Msg], identity: bytes) -> list[bytes]:
    return [m.command for m in out if m.identity == identity]


# --- a repeated HELLO charges nothing --------------------------------------------------------
def test_hello_that_does_not_list_a_job_still_on_its_way_keeps_its_lease(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    job = only(dispatched(h.hello(slots=1)))
    h.hello(slots=1, running=[])  # sent before the JOB arrived: the JOB is still on the wire
    assert h.record(job_id)["state"] == J.RUNNING and h.record(job_id)["attempts"] == 1
    h.done(job)
    assert h.record(job_id)["state"] == J.COMPLETED and h.record(job_id)["attempts"] == 1


def test_repeated_hellos_from_a_live_worker_never_dead_letter_its_job(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    job = only(dispatched(h.hello(slots=1)))
    for _ in range(10):  # a RECONNECT storm answered HELLO by HELLO
        assert dispatched(h.hello(slots=1, running=[])) == []
    assert h.record(job_id)["attempts"] == 1 and h.record(job_id)["state"] == J.RUNNING
    h.done(job)
    assert h.state(job_id) == J.COMPLETED


def test_same_process_on_a_new_connection_gets_back_what_it_does_not_list_uncharged(h: Harness) -> None:
    [kept_id, lost_id] = h.new_jobs(2)
    first = dispatched(h.hello(WORKER, slots=2, pid=42))
    kept = next(j for j in first if j["id"] == kept_id)
    # the worker reconnected (new socket, same pid and host): it runs one job, the other JOB died with the old socket
    out = h.hello(OTHER_WORKER, slots=2, running=[[kept_id, kept["token"]]], pid=42)
    assert dispatched(out, OTHER_WORKER) == []  # a result sent on the old connection may still come
    assert list(h.broker.workers.by_identity) == [OTHER_WORKER]
    h.done(kept, identity=OTHER_WORKER)
    assert h.record(kept_id)["state"] == J.COMPLETED and h.record(kept_id)["attempts"] == 1
    h.clock.advance(2.5)
    again = only(dispatched(h.tick(), OTHER_WORKER))
    assert again["id"] == lost_id and again["attempt"] == 1  # never ran: no attempt charged


def test_a_result_from_the_old_connection_after_the_new_hello_is_accepted(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    job = only(dispatched(h.hello(WORKER, slots=1, pid=42)))
    h.hello(OTHER_WORKER, slots=1, running=[], pid=42)  # the new connection's HELLO overtook the result
    h.done(job, identity=WORKER)
    assert h.state(job_id) == J.COMPLETED and h.record(job_id)["attempts"] == 1
    h.clock.advance(2.5)
    assert dispatched(h.tick(), OTHER_WORKER) == []


def test_a_silent_worker_still_costs_its_job_an_attempt(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    h.hello(slots=1)
    h.clock.advance(LEASE_S + 1)
    h.tick()
    assert h.record(job_id)["attempts"] == 1 and h.state(job_id) == J.PENDING  # charged: the next run is attempt 2
    assert only(dispatched(h.hello(OTHER_WORKER, slots=1), OTHER_WORKER))["attempt"] == 2


def test_an_unknown_peer_is_asked_to_say_hello_once_per_gap(h: Harness) -> None:
    asked = 0
    for _ in range(50):
        asked += commands_to(h.send(WORKER, P.HEARTBEAT, {}), WORKER).count(P.RECONNECT)
    assert asked == 1
    h.clock.advance(1.5)
    assert commands_to(h.send(WORKER, P.HEARTBEAT, {}), WORKER) == [P.RECONNECT]


# --- deadlines on the monotonic clock ------------------------------------------------------
def test_a_wall_clock_step_forward_does_not_fire_a_delayed_job_early(h: Harness) -> None:
    [job_id] = h.new_jobs(1, delay_ms=60_000)
    h.clock.wall += 3_600_000  # the wall clock jumps an hour; only two seconds really pass
    h.clock.now += 2
    h.tick()
    assert h.state(job_id) == J.SCHEDULED
    h.clock.now += 58
    h.tick()
    assert h.state(job_id) == J.PENDING


def test_a_wall_clock_step_back_does_not_hold_a_delayed_job(h: Harness) -> None:
    [job_id] = h.new_jobs(1, delay_ms=3_000)
    h.clock.wall -= 3_600_000
    h.clock.now += 3
    h.tick()
    assert h.state(job_id) == J.PENDING


def test_retry_backoff_follows_the_monotonic_clock(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    h.fail(only(dispatched(h.hello())))
    assert h.state(job_id) == J.SCHEDULED
    h.clock.wall += 3_600_000
    h.tick()
    assert h.state(job_id) == J.SCHEDULED  # backoff is at most a second here, and no time passed
    h.clock.now += 1.0
    h.tick()
    assert h.state(job_id) != J.SCHEDULED


def test_a_stored_due_time_becomes_a_monotonic_deadline_at_start(h: Harness) -> None:
    [job_id] = h.new_jobs(1, delay_ms=10_000)
    h2 = h.restart()
    try:
        h2.clock.now += 5
        h2.clock.wall += 5_000
        h2.tick()
        assert h2.state(job_id) == J.SCHEDULED
        h2.clock.wall += 3_600_000  # a step after the start changes nothing
        h2.tick()
        assert h2.state(job_id) == J.SCHEDULED
        h2.clock.now += 5
        h2.tick()
        assert h2.state(job_id) == J.PENDING
    finally:
        h2.close()


def test_next_wakeup_is_the_monotonic_distance_to_the_due_job(h: Harness) -> None:
    h.new_jobs(1, delay_ms=500)
    h.clock.wall += 3_600_000
    assert 0.4 < h.broker.next_wakeup_s() <= 0.5


# --- a peer's bad frame is a refusal --------------------------------------------------------
BAD_WORKER_BODIES = [
    (P.SUSPEND, {"id": b"x" * 16, "name": "nap"}),                      # no token, job not held
    (P.SUSPEND, {"id": b"x" * 16, "token": None, "name": "nap", "due_ms": 1}),
    (P.DONE, {"results": [[b"x" * 16]]}),
    (P.DONE, {"results": [[b"x" * 16, 1, "not packed bytes"]]}),
    (P.DONE, {"results": [[[1, 2], 1, b""]]}),
    (P.FAIL, {"failures": [{"id": b"x" * 16}]}),
    (P.FAIL, {"failures": [{"id": {}, "token": 1}]}),
    (P.RETURN, {"jobs": [[b"x" * 16]]}),
    (P.READY, {"slots": "many"}),
    (P.READY, {"slots": -1}),
    (P.HELLO, {"group": "email", "slots": 1, "workflows": {"a": {"retries": "x"}}}),
    (P.HELLO, {"group": "email", "slots": 1, "running": [[b"short", 1]]}),
    (P.HELLO, {"group": ["email"], "slots": 1}),
    (P.STEP, {"rid": 1, "id": b"x" * 16, "token": 1, "name": "s", "record": []}),
    (P.STEP, {"rid": 1, "id": b"x" * 16, "token": 1, "name": "", "record": {}}),
]


@pytest.mark.parametrize(("command", "body"), BAD_WORKER_BODIES, ids=lambda v: repr(v)[:40])
def test_a_malformed_worker_message_is_refused_without_an_internal_error(
        h: Harness, caplog: pytest.LogCaptureFixture, command: bytes, body: dict) -> None:
    [job_id] = h.new_jobs(1)
    h.hello(slots=1)
    with caplog.at_level(logging.WARNING, logger="shoal.broker"):
        out = h.send(WORKER, command, body)
    [err] = errors(out, WORKER)
    assert err["code"] == P.E_BAD_REQUEST
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert h.state(job_id) == J.RUNNING  # nothing about the held job changed


def test_a_message_with_one_bad_entry_is_refused_whole(h: Harness) -> None:
    [a, b] = h.new_jobs(2)
    jobs = dispatched(h.hello(slots=2))
    results = [[jobs[0]["id"], jobs[0]["token"], P.pack(1), 0, 1], [jobs[1]["id"], "token?", P.pack(2), 0, 1]]
    out = h.send(WORKER, P.DONE, {"results": results})
    assert errors(out, WORKER)[0]["code"] == P.E_BAD_REQUEST
    assert h.state(a) == J.RUNNING and h.state(b) == J.RUNNING


def test_a_step_with_a_bad_child_creates_no_child(h: Harness) -> None:
    h.new_jobs(1)
    job = only(dispatched(h.hello(slots=1)))
    good = {"id": new_job_id(), "wf": "send-email", "group": "email", "payload": P.pack(1)}
    bad = {"id": b"short", "wf": "send-email", "payload": P.pack(2)}
    out = h.send(WORKER, P.STEP, {"rid": 3, "id": job["id"], "token": job["token"], "name": "kids",
                                  "record": {}, "enqueue": [good, bad]})
    assert errors(out, WORKER)[0]["code"] == P.E_BAD_REQUEST
    assert h.store.get_job(good["id"]) is None


def test_bad_message_warnings_are_said_once_per_interval(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shoal.broker"):
        for _ in range(200):
            h.send(CLIENT, P.ENQUEUE, {"rid": 1, "jobs": "nope"})
    assert len([r for r in caplog.records if "bad message from" in r.getMessage()]) == 1


# --- re-sent results after a restart are matched quietly --------------------------------------
def test_a_result_re_sent_after_it_was_stored_is_dropped_without_a_warning(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    [job_id] = h.new_jobs(1)
    job = only(dispatched(h.hello()))
    h.done(job)
    with caplog.at_level(logging.WARNING, logger="shoal.broker"):
        for _ in range(20):
            h.done(job)
    assert h.state(job_id) == J.COMPLETED
    assert "stale" not in caplog.text


# --- storage full: results are deferred, not charged ------------------------------------------
def test_a_result_that_cannot_be_stored_is_deferred_and_the_job_keeps_running(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    job = only(dispatched(h.hello(slots=1)))
    h.broker.storage_room = 0  # the disk is full
    out = h.done(job)
    [defer] = [m.body for m in out if m.command == P.DEFER]
    assert defer["results"] == [[job["id"], job["token"]]] and defer["retry_ms"] > 0
    assert h.state(job_id) == J.RUNNING and h.record(job_id)["attempts"] == 1
    worker = h.broker.workers.get(WORKER)
    assert worker is not None and worker.credit == 0  # the slot is still the deferred job's
    h.broker.storage_room = 1 << 40  # room again; the worker sends it once more
    assert not [m for m in h.done(job) if m.command == P.DEFER]
    assert h.state(job_id) == J.COMPLETED and h.record(job_id)["attempts"] == 1



def test_a_done_whose_results_do_not_fit_together_stores_those_that_fit_and_defers_the_rest(h: Harness) -> None:
    small_id, big_id = h.new_jobs(2)
    jobs = {j["id"]: j for j in dispatched(h.hello(slots=2))}
    small, big = jobs[small_id], jobs[big_id]
    reserve = h.settings.broker.min_free_disk_mb * 1024 * 1024
    big_value = P.pack(b"x" * 100_000)
    h.broker.storage_room = reserve // 2 + 3 * len(big_value) - 1  # room for the small result, not the big one
    out = h.send(WORKER, P.DONE, {"results": [[small_id, small["token"], P.pack("ok"), 0, 1],
                                              [big_id, big["token"], big_value, 0, 1]]})
    [defer] = [m.body for m in out if m.command == P.DEFER]
    assert defer["results"] == [[big_id, big["token"]]]
    assert h.state(small_id) == J.COMPLETED and h.state(big_id) == J.RUNNING


# --- peers that do not read -------------------------------------------------------------------
def test_waits_per_client_are_capped_with_a_clear_error(h: Harness) -> None:
    h.broker.MAX_WAITS_PER_PEER = 3
    ids = h.new_jobs(4)
    for rid, job_id in enumerate(ids[:3], start=100):
        assert h.send(CLIENT, P.WAIT, {"rid": rid, "id": job_id}) == []
    [err] = errors(h.send(CLIENT, P.WAIT, {"rid": 200, "id": ids[3]}), CLIENT)
    assert err["code"] == P.E_TOO_MANY_WAITS and "3 WAITs" in err["message"]
    assert h.send(CLIENT, P.WAIT, {"rid": 100, "id": ids[0]}) == []  # a re-send is not a new wait


def test_a_client_that_stops_reading_loses_its_waits_and_its_replies_are_counted(h: Harness) -> None:
    ids = h.new_jobs(2)
    for rid, job_id in enumerate(ids, start=1):
        h.send(CLIENT, P.WAIT, {"rid": rid, "id": job_id})
    h.broker.undeliverable(Outgoing(CLIENT, P.encode(P.REPLY, {"rid": 9})), not_reading=True)
    assert h.broker.waiters == {} and h.broker.waits_of == {}
    assert h.broker.replies_dropped == 1
    assert h.request(P.STATS, {})["replies_dropped"] == 1


def test_a_broker_that_stood_still_does_not_declare_its_workers_lost(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    job = only(dispatched(h.hello(slots=1)))
    h.clock.advance(0.5)
    h.tick()
    h.clock.advance(LEASE_S + 5)  # frozen (SIGSTOP) past the lease: no pass ran, nobody could be heard
    h.broker.forgive_stall(LEASE_S + 5)  # what the shell says when its loop wakes this late
    h.tick()
    assert h.state(job_id) == J.RUNNING and h.broker.workers.get(WORKER) is not None
    h.done(job)
    assert h.state(job_id) == J.COMPLETED and h.record(job_id)["attempts"] == 1


def test_a_peer_gets_one_history_scan_at_a_time(h: Harness) -> None:
    [job_id] = h.new_jobs(1)
    assert h.send(CLIENT, P.HISTORY, {"rid": 1, "id": job_id}) == []  # handed to the reader
    [err] = errors(h.send(CLIENT, P.HISTORY, {"rid": 2, "id": job_id}), CLIENT)
    assert err["code"] == P.E_BUSY and err["rid"] == 2
    assert h.send(OTHER_WORKER, P.HISTORY, {"rid": 3, "id": job_id}) == []  # another peer may
    h.broker.history_answered(CLIENT)
    assert h.send(CLIENT, P.HISTORY, {"rid": 4, "id": job_id}) == []


def test_a_peer_flooding_bad_frames_is_dropped_unread_for_a_while(h: Harness) -> None:
    bad = [P.VERSION, P.ENQUEUE, P.pack({"rid": 1, "jobs": "nope"})]
    answered = 0
    for _ in range(150):
        h.broker.handle(b"flooder", bad)
        answered += len([o for o in h.broker.take()[1] if o.identity == b"flooder"])
    assert answered == h.broker.strikes.limit + 1  # refused one by one, then put aside
    assert h.request(P.STATS, {})["frames_dropped"] == 150 - answered  # counted; others are served
    h.clock.advance(6)
    h.broker.handle(b"flooder", bad)
    assert [o.identity for o in h.broker.take()[1]] == [b"flooder"]  # heard again after the quarantine

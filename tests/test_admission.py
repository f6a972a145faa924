"""Every way a job is born passes one admission, and the dedup key rule holds on requeue and restart
(socket-free core, fake clock, both stores)."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal import jobs as J
from shoal import protocol as P
from shoal.broker.core import Broker
from shoal.broker.storage.memstore import MemoryStore
from shoal.conf import load_settings
from shoal.errors import ConfigError
from shoal.ids import new_job_id

from test_broker_core import SETTINGS, WORKER, Harness, dispatched, errors, only


@pytest.fixture(params=["lmdb", "memory"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    made: list[Harness] = []

    def build(settings=SETTINGS) -> Harness:
        harness = Harness(tmp_path / f"data{len(made)}", memory=MemoryStore() if request.param == "memory" else None,
                          settings=settings)
        made.append(harness)
        return harness

    yield build
    for harness in made:
        harness.close()


def bury(h: Harness, job_id: bytes) -> None:
    job = only(dispatched(h.hello(slots=1)))
    assert job["id"] == job_id
    h.fail(job, kind=J.KIND_PERMANENT)
    assert h.state(job_id) == J.DEAD


# --- dedup keys -------------------------------------------------------------------------------
def test_a_requeued_dead_job_takes_its_dedup_key_back(make) -> None:
    h = make()
    [first] = h.new_jobs(1, key="reset:42")
    bury(h, first)
    assert h.request(P.REQUEUE, {"ids": [first]})["requeued"] == [first]
    reply = h.request(P.ENQUEUE, {"jobs": [{"id": new_job_id(), "wf": "send-email", "group": "email",
                                            "payload": P.pack(1), "key": "reset:42"}]})
    assert reply["ids"] == [first] and reply["deduplicated"] == [True]


def test_after_a_restart_the_key_stays_with_the_active_job(make) -> None:
    h = make()
    [first] = h.new_jobs(1, key="k", key_ttl_ms=3_600_000)
    bury(h, first)   # finished, its key kept an hour
    h.request(P.REQUEUE, {"ids": [first]})
    h2 = h.restart()
    try:
        reply = h2.request(P.ENQUEUE, {"jobs": [{"id": new_job_id(), "wf": "send-email", "group": "email",
                                                 "payload": P.pack(1), "key": "k"}]})
        assert reply["ids"] == [first]
    finally:
        h2.close()


def test_requeue_is_refused_while_another_job_holds_the_dead_jobs_key(make) -> None:
    h = make()
    [first] = h.new_jobs(1, key="k")
    bury(h, first)
    [second] = h.new_jobs(1, key="k")  # the key was free: a new job took it
    reply = h.request(P.REQUEUE, {"ids": [first]})
    assert reply["requeued"] == []
    [[refused_id, why]] = reply["refused"]
    assert refused_id == first and "held by job" in why
    assert h.state(first) == J.DEAD and h.state(second) == J.RUNNING  # the worker took it


# --- one admission for every source ------------------------------------------------------------
def test_a_step_child_into_a_group_at_max_pending_is_refused_and_not_created(make) -> None:
    limited = dataclasses.replace(SETTINGS.defaults, max_pending=1)
    h = make(dataclasses.replace(SETTINGS, defaults=limited))
    [parent_id] = h.new_jobs(1)
    parent = only(dispatched(h.hello(slots=1)))
    h.new_jobs(1)  # the group's backlog is at its max_pending now
    child = {"id": new_job_id(), "wf": "send-email", "group": "email", "payload": P.pack(1)}
    out = h.send(WORKER, P.STEP, {"rid": 7, "id": parent["id"], "token": parent["token"], "name": "kids",
                                  "record": {}, "enqueue": [child]})
    [err] = errors(out, WORKER)
    assert err["code"] == P.E_SATURATED and err["rid"] == 7
    assert h.store.get_job(child["id"]) is None and h.store.steps_of(parent_id) == {}


def test_a_step_child_into_full_storage_is_refused(make) -> None:
    h = make()
    h.new_jobs(1)
    parent = only(dispatched(h.hello(slots=1)))
    h.broker.storage_room = 0
    child = {"id": new_job_id(), "wf": "send-email", "group": "email", "payload": P.pack(1)}
    out = h.send(WORKER, P.STEP, {"rid": 8, "id": parent["id"], "token": parent["token"], "name": "kids",
                                  "record": {}, "enqueue": [child]})
    assert errors(out, WORKER)[0]["code"] == P.E_STORAGE
    assert h.store.get_job(child["id"]) is None


def test_a_cron_tick_into_full_storage_is_deferred_then_fires_once_there_is_room(make) -> None:
    settings = dataclasses.replace(SETTINGS, cron={"every-minute": {
        "workflow": "send-email", "schedule": "* * * * *", "group": "email", "catch_up": "one"}})
    h = make(settings)
    h.tick()  # the entry is seen for the first time: nothing fires for the past
    seen = h.store.cron_last_fired()["every-minute"]
    h.broker.storage_room = 0
    h.clock.advance(61)
    h.tick()
    assert list(h.store.iter_jobs()) == [] and h.store.cron_last_fired()["every-minute"] == seen
    h.broker.storage_room = 1 << 40
    h.clock.advance(1.0)
    h.tick()
    fired = list(h.store.iter_jobs())
    assert len(fired) == 1 and fired[0]["workflow"] == "send-email"
    assert h.store.cron_last_fired()["every-minute"] > seen


def test_a_requeue_into_full_storage_is_refused_and_the_job_stays_dead(make) -> None:
    h = make()
    [job_id] = h.new_jobs(1)
    bury(h, job_id)
    h.broker.storage_room = 0
    reply = h.request(P.REQUEUE, {"ids": [job_id]})
    [[refused_id, why]] = reply["refused"]
    assert refused_id == job_id and why.startswith("storage full") and reply["requeued"] == []
    assert h.state(job_id) == J.DEAD
    h.broker.storage_room = 1 << 40
    assert h.request(P.REQUEUE, {"ids": [job_id]})["requeued"] == [job_id]


def test_a_requeue_into_a_group_at_max_pending_is_refused(make) -> None:
    limited = dataclasses.replace(SETTINGS.defaults, max_pending=1)
    h = make(dataclasses.replace(SETTINGS, defaults=limited))
    [job_id] = h.new_jobs(1)
    bury(h, job_id)
    h.send(WORKER, P.READY, {"slots": 0})  # nothing is taken from the queue now
    h.new_jobs(1)  # the backlog is at max_pending
    [[_, why]] = h.request(P.REQUEUE, {"ids": [job_id]})["refused"]
    assert "max_pending" in why and h.state(job_id) == J.DEAD


def test_a_step_child_whose_key_another_job_holds_is_not_created(make) -> None:
    h = make()
    [holder] = h.new_jobs(1, key="once")
    h.new_jobs(1)
    parent = only(dispatched(h.hello(slots=1)))
    assert parent["id"] == holder
    child = {"id": new_job_id(), "wf": "send-email", "group": "email", "payload": P.pack(1), "key": "once"}
    out = h.send(WORKER, P.STEP, {"rid": 7, "id": parent["id"], "token": parent["token"], "name": "kids",
                                  "record": {}, "enqueue": [child]})
    assert not errors(out, WORKER) and h.store.get_job(child["id"]) is None  # one job per live key
    assert h.store.steps_of(parent["id"])["kids"] is not None


def test_a_resent_enqueue_of_accepted_jobs_is_answered_even_when_storage_is_full(make) -> None:
    h = make()
    [job_id] = h.new_jobs(1)
    h.broker.storage_room = 0  # a re-send is not new work: it needs no room
    assert h.enqueue(job_id) == [True]


def test_tick_before_load_works(tmp_path: Path) -> None:
    broker = Broker(MemoryStore(), SETTINGS)
    broker.tick()
    assert broker.next_wakeup_s() >= 0


# --- fault points -------------------------------------------------------------------------------
def test_an_unknown_fault_point_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="unknown fault point.*befor_commit"):
        load_settings(None, env={"SHOAL_FAULT": "befor_commit"})
    load_settings(None, env={"SHOAL_FAULT": "before_commit"})  # a real one is fine

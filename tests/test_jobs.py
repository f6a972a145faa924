"""The job lifecycle and the job record.

The lifecycle test is the table from ``shoal/jobs.py`` written out again: if the table
changes, this list must change with it, on purpose.
"""
from __future__ import annotations

import itertools

import pytest

from shoal import jobs as J
from shoal.jobs import IllegalTransition, Job, next_state
from shoal.protocol import pack, unpack

#  state          event        ->  state
LIFECYCLE = [
    (J.PENDING,   "dispatch",      J.RUNNING),
    (J.RUNNING,   "complete",      J.COMPLETED),
    (J.RUNNING,   "retry",         J.SCHEDULED),
    (J.RUNNING,   "bury",          J.DEAD),
    (J.RUNNING,   "release",       J.PENDING),
    (J.RUNNING,   "suspend",       J.SCHEDULED),
    (J.SCHEDULED, "due",           J.PENDING),
    (J.DEAD,      "requeue",       J.PENDING),
    (J.PENDING,   "cancel",        J.CANCELLED),
    (J.SCHEDULED, "cancel",        J.CANCELLED),
    (J.RUNNING,   "cancel",        J.CANCELLED),
]
EVENTS = sorted({event for _, event, _ in LIFECYCLE})
LEGAL = {(state, event) for state, event, _ in LIFECYCLE}
ILLEGAL = sorted(set(itertools.product(J.STATES, EVENTS)) - LEGAL)


def make_job(state: str = J.PENDING) -> Job:
    return Job(id=b"\x01" * 16, workflow="send-email", group="email", payload=pack({"to": "a@b.c"}),
               state=state, seq=4, attempts=1, token=99, error="earlier")


@pytest.mark.parametrize("state, event, after", LIFECYCLE, ids=[f"{s}-{e}" for s, e, _ in LIFECYCLE])
def test_every_legal_edge_gives_its_state(state: str, event: str, after: str) -> None:
    assert next_state(state, event) == after
    job = make_job(state)
    assert job.move(event) == after
    assert job.state == after


def test_the_table_has_exactly_the_documented_edges() -> None:
    assert J.TRANSITIONS == {(state, event): after for state, event, after in LIFECYCLE}


@pytest.mark.parametrize("state, event", ILLEGAL, ids=[f"{s}-{e}" for s, e in ILLEGAL])
def test_an_illegal_edge_raises_and_leaves_the_job_unchanged(state: str, event: str) -> None:
    job = make_job(state)
    before = job.to_record()
    with pytest.raises(IllegalTransition) as info:
        job.move(event)
    assert job.to_record() == before
    assert state in str(info.value) and event in str(info.value)


@pytest.mark.parametrize("final", sorted(J.FINAL_STATES))
def test_a_final_job_accepts_no_event_but_requeue_of_the_dead(final: str) -> None:
    allowed = {event for event in EVENTS if (final, event) in LEGAL}
    assert allowed == ({"requeue"} if final == J.DEAD else set())


def test_an_unknown_event_is_illegal() -> None:
    with pytest.raises(IllegalTransition):
        next_state(J.PENDING, "teleport")


def test_an_unknown_state_is_illegal() -> None:
    with pytest.raises(IllegalTransition):
        next_state("limbo", "dispatch")


def test_illegal_transition_is_a_shoal_error() -> None:
    from shoal.errors import ShoalError

    assert issubclass(IllegalTransition, ShoalError)


def test_final_and_active_states_split_every_state() -> None:
    assert J.FINAL_STATES | J.ACTIVE_STATES == set(J.STATES)
    assert not J.FINAL_STATES & J.ACTIVE_STATES


# --- the record -------------------------------------------------------------------------
def test_record_round_trips_through_msgpack() -> None:
    job = Job(id=b"\x02" * 16, workflow="resize", group="media", payload=b"\x81\xa1k\xa1v", state=J.DEAD,
              seq=12, priority=5, key="img:1", attempts=4, max_retries=3, created_ms=1, due_ms=2,
              started_ms=3, finished_ms=4, token=2**61, worker="host:12", value=b"\xc0", error="boom",
              error_kind=J.KIND_ERROR, traceback="Traceback ...", expire_ms=5)
    assert Job.from_record(unpack(pack(job.to_record()))) == job


def test_record_holds_every_field() -> None:
    record = make_job().to_record()
    assert set(record) == {f for f in Job.__dataclass_fields__}


def test_from_record_ignores_fields_it_does_not_know() -> None:
    record = make_job().to_record()
    record["added_in_a_later_version"] = {"anything": 1}
    assert Job.from_record(record) == make_job()


def test_from_record_fills_defaults_for_missing_fields() -> None:
    old = {"id": b"\x03" * 16, "workflow": "w", "group": "g", "payload": b"\x90"}
    job = Job.from_record(old)
    assert job.state == J.PENDING
    assert job.attempts == 0 and job.token == 0 and job.priority == 0
    assert job.max_retries is None and job.key is None and job.value is None and job.error is None


def test_public_view_hides_the_lease_token() -> None:
    view = J.public_view(make_job(J.RUNNING).to_record())
    assert "token" not in view
    assert view["state"] == J.RUNNING and view["id"] == b"\x01" * 16


def test_every_failure_kind_but_error_and_worker_lost_is_permanent() -> None:
    assert J.PERMANENT_KINDS == {J.KIND_PERMANENT, J.KIND_UNKNOWN_WORKFLOW, J.KIND_BAD_PAYLOAD, J.KIND_BAD_RESULT}
    assert J.KIND_ERROR not in J.PERMANENT_KINDS and J.KIND_WORKER_LOST not in J.PERMANENT_KINDS


# --- the stored form: a row --------------------------------------------------------------
def test_a_row_reads_back_as_the_record_and_a_map_as_it_is() -> None:
    job = J.Job(id=b"\x01" * 16, workflow="w", group="g", payload=b"\x90", seq=7, attempts=2, worker="h:1")
    row = job.to_row()
    assert len(row) == len(J.RECORD_FIELDS) and J.as_record(list(row)) == job.to_record()
    assert J.as_row(job.to_record()) == row
    old_map = {"id": job.id, "workflow": "w", "state": "dead"}  # what schema 1 stored, as it was
    assert J.as_record(old_map) is old_map


def test_a_row_written_before_a_field_existed_reads_that_field_as_its_default() -> None:
    job = J.Job(id=b"\x02" * 16, workflow="w", group="g", payload=b"", cancel_requested=True)
    short = list(job.to_row())[:-3]  # fields are only ever added at the end
    record = J.as_record(short)
    assert record["id"] == job.id and record["workflow"] == "w"
    assert (record["wait_step"], record["key_ttl_ms"], record["cancel_requested"]) == (None, 0, False)
    assert J.Job.from_record(record).cancel_requested is False

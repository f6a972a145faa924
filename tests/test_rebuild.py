"""Replay's pieces without processes: the op table, point-in-time stops, history rows, the lock.

The op table is exercised with hand-written log entries in the exact shape the broker
writes (see store.py); the stop rules and the lock with a real LMDB store under tmp_path.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import lmdb
import pytest

from shoal import jobs as J
from shoal import protocol as P
from shoal.broker.recovery import rebuild, replay
from shoal.broker.recovery.history import history_rows
from shoal.broker.shell.lock import DataDirInUse
from shoal.broker.recovery.rebuild import OPS, ReplayError, State, apply_entry
from shoal.broker.storage.store import Batch, NotADataDir, Store
from shoal.ids import id_to_str, new_job_id

T0 = 1_700_000_000_000
A, B, C = new_job_id(), new_job_id(), new_job_id()


def record(job_id: bytes, **fields: Any) -> dict[str, Any]:
    """A new job's record, as the enqueue entry carries it."""
    return J.Job(id=job_id, workflow="send", group="email", payload=b"\x90", created_ms=T0, **fields).to_record()


def run(*entries: tuple[str, bytes, dict[str, Any]]) -> State:
    state = State()
    for seq, (op, job_id, changes) in enumerate(entries, start=1):
        apply_entry(state, seq, [T0 + seq, op, job_id, changes])
    return state


DISPATCH = {"state": "running", "attempts": 1, "token": 77, "worker": "h:1", "started_ms": T0}
RETRIED = [("enqueue", A, record(A)), ("dispatch", A, DISPATCH),
           ("retry", A, {"state": "scheduled", "due_ms": T0 + 50, "error": "boom", "error_kind": "error",
                         "traceback": None, "token": 0}),
           ("due", A, {"state": "pending", "waiting_on": None, "wait_step": None}),
           ("dispatch", A, {**DISPATCH, "attempts": 2, "token": 78}),
           ("complete", A, {"state": "completed", "value": b"\xa2ok", "finished_ms": T0 + 9, "expire_ms": T0 + 99})]


# --- the op table ----------------------------------------------------------------------------
def test_a_retried_job_is_rebuilt_field_by_field_with_its_counters_and_expiry() -> None:
    state = run(*RETRIED)
    job = state.record(A)
    assert job is not None
    assert (job["state"], job["attempts"], job["token"], job["value"], job["error"]) == ("completed", 2, 78, b"\xa2ok", "boom")
    assert state.counters == {"email": {"failed": 1, "retried": 1, "completed": 1}}
    assert state.expiry() == {(T0 + 99, A)}


def test_a_death_caused_by_a_fail_counts_a_failure_and_one_by_a_lost_worker_does_not() -> None:
    dead = {"state": "dead", "error": "x", "error_kind": "error", "traceback": None, "finished_ms": T0, "attempts": 1}
    state = run(("enqueue", A, record(A)), ("dispatch", A, DISPATCH), ("dead", A, {**dead, "failed": True}),
                ("enqueue", B, record(B)), ("dispatch", B, DISPATCH), ("dead", B, {**dead, "failed": False}))
    assert state.counters == {"email": {"failed": 1, "dead": 2}}
    assert state.expiry() == set()  # dead letters stay until requeued


def test_steps_fan_in_and_expiry_keep_the_steps_table_in_step() -> None:
    state = run(("enqueue", A, record(A)), ("dispatch", A, DISPATCH),
                ("step", A, {"steps": 1, "step": "one", "record": {"value": b"\x01"}}),
                ("suspend", A, {"state": "scheduled", "attempts": 0, "token": 0, "due_ms": 0,
                                "waiting_on": [B], "wait_step": "all"}),
                ("fan_in", A, {"state": "pending", "waiting_on": None, "wait_step": None, "step": "all",
                               "record": {"children": []}}))
    assert state.steps == {A: {"one": {"value": b"\x01"}, "all": {"children": []}}}
    assert state.record(A) == {**record(A), "steps": 1, "state": "pending", "attempts": 0, "token": 0, "due_ms": 0,
                               "waiting_on": None, "wait_step": None, "worker": "h:1", "started_ms": T0}
    gone = run(("enqueue", A, record(A)), ("step", A, {"steps": 1, "step": "one", "record": {}}),
               ("expire", A, {}))
    assert gone.job_count() == 0 and gone.steps == {}


def test_table_level_entries_rebuild_routes_and_cron_marks() -> None:
    state = run(("learn_route", b"", {"workflow": "send", "group": "email", "retries": 2}),
                ("cron", b"", {"name": "nightly", "tick_ms": T0}), ("cron", b"", {"name": "nightly", "tick_ms": T0 + 1}))
    assert state.routes == {"send": {"group": "email", "retries": 2}}
    assert state.cron == {"nightly": T0 + 1}


def test_an_unknown_op_is_refused_naming_its_seq_and_the_known_ops() -> None:
    with pytest.raises(ReplayError, match=r"log entry 2 has op 'teleport'.*known: cancel, .*learn_route"):
        run(("enqueue", A, record(A)), ("teleport", A, {}))


@pytest.mark.parametrize("entries, message", [
    ([("enqueue", A, record(A)), ("complete", A, {"state": "completed"})], "a pending job cannot complete"),
    ([("enqueue", A, record(A)), ("dispatch", A, {**DISPATCH, "state": "dead"})], "the entry says dead"),
    ([("dispatch", A, DISPATCH)], "was never enqueued"),
    ([("enqueue", A, record(A)), ("enqueue", A, record(A))], "enqueued a second time"),
    ([("enqueue", A, record(A)), ("step", A, {"steps": 1})], "malformed"),
])
def test_an_entry_that_cannot_have_happened_is_refused(entries: list[Any], message: str) -> None:
    with pytest.raises(ReplayError, match=message):
        run(*entries)


def test_a_malformed_entry_is_refused() -> None:
    with pytest.raises(ReplayError, match="log entry 7 is malformed"):
        apply_entry(State(), 7, ["not", "an", "entry"])


def test_every_op_the_broker_writes_is_one_replay_knows() -> None:
    """A new op must get its line in rebuild.OPS, or replay would refuse every log holding it."""
    broker_dir = Path(__file__).parent.parent / "broker"
    written = set()
    for source in broker_dir.rglob("*.py"):  # the core's parts and handlers too (broker/core/)
        written |= set(re.findall(r'(?:save\(\w+, |finish\(\w+, |log\.append\(\(|\.log\()"(\w+)"',
                                  source.read_text()))
    assert {"enqueue", "dispatch", "complete", "learn_route"} <= written  # the patterns still find them
    assert written - set(OPS) == set()


def test_every_lifecycle_event_an_op_claims_exists_in_the_transition_table() -> None:
    events = {event for _, event in J.TRANSITIONS}
    assert {op.event for op in OPS.values() if op.event} <= events


# --- finished jobs are held packed ----------------------------------------------------------
DEAD = {"state": "dead", "error": "x", "error_kind": "permanent", "traceback": None, "finished_ms": T0 + 5,
        "failed": True}
REQUEUE = {"state": "pending", "attempts": 0, "error": None, "error_kind": None, "traceback": None,
           "finished_ms": 0, "token": 0}
BURIED = [("enqueue", A, record(A)), ("dispatch", A, DISPATCH), ("dead", A, DEAD)]


def test_a_finished_job_is_held_packed_as_the_store_keeps_it() -> None:
    state = run(*RETRIED)
    assert state.is_frozen(A)
    assert state.packed(A) == P.pack(J.as_row(state.record(A)))  # a row, as the live broker stores it
    assert list(state.packed_jobs()) == [(A, state.packed(A))]
    assert state.job_count() == 1 and state.has_job(A)


def test_a_job_still_moving_is_not_packed() -> None:
    state = run(*RETRIED[:2])
    assert not state.is_frozen(A) and state.record(A)["state"] == "running"


def test_a_requeue_from_the_dead_letters_thaws_the_job_and_the_rest_replays_as_usual() -> None:
    state = run(*BURIED)
    assert state.is_frozen(A) and state.record(A)["state"] == "dead"
    apply_entry(state, 4, [T0 + 4, "requeue", A, REQUEUE])
    assert not state.is_frozen(A)
    assert state.record(A) == {**record(A), **DISPATCH, **REQUEUE, "state": "pending"}
    apply_entry(state, 5, [T0 + 5, "dispatch", A, {**DISPATCH, "token": 78}])
    apply_entry(state, 6, [T0 + 6, "complete", A, {"state": "completed", "value": b"\xa2ok", "finished_ms": T0 + 9,
                                                   "expire_ms": T0 + 99}])
    assert state.is_frozen(A)
    assert state.record(A) == {**record(A), **DISPATCH, **REQUEUE, "state": "completed", "attempts": 1, "token": 78,
                               "value": b"\xa2ok", "finished_ms": T0 + 9, "expire_ms": T0 + 99}
    assert state.counters == {"email": {"failed": 1, "dead": 1, "completed": 1}}
    assert state.expiry() == {(T0 + 99, A)}


def test_a_frozen_job_cannot_move_where_the_lifecycle_has_no_edge() -> None:
    with pytest.raises(ReplayError, match="a dead job cannot dispatch"):
        run(*BURIED, ("dispatch", A, DISPATCH))


@pytest.mark.parametrize("op, changes, field, value", [
    ("route", {"group": "media"}, "group", "media"),
    ("step", {"steps": 1, "step": "late", "record": {"value": b"\x01"}}, "steps", 1),
])
def test_an_entry_that_leaves_a_frozen_job_final_packs_it_again(op: str, changes: dict[str, Any], field: str,
                                                                 value: Any) -> None:
    state = run(*RETRIED, (op, A, changes))
    assert state.is_frozen(A) and state.record(A)[field] == value
    assert state.expiry() == {(T0 + 99, A)}


def test_expire_drops_a_frozen_job_with_its_steps_and_its_expiry_entry() -> None:
    state = run(*RETRIED[:2], ("step", A, {"steps": 1, "step": "one", "record": {}}), *RETRIED[2:], ("expire", A, {}))
    assert not state.has_job(A) and state.job_count() == 0
    assert state.steps == {} and state.expiry() == set()
    with pytest.raises(ReplayError, match="never enqueued"):
        apply_entry(state, 9, [T0 + 9, "requeue", A, REQUEUE])


def test_the_expiry_index_of_frozen_jobs_needs_no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    cancelled = {"state": "cancelled", "finished_ms": T0 + 2, "expire_ms": T0 + 77}
    state = run(*RETRIED, ("enqueue", B, record(B)), ("cancel", B, cancelled),
                ("enqueue", C, record(C)), ("dispatch", C, DISPATCH), ("dead", C, DEAD))
    monkeypatch.setattr(rebuild, "decode_stored", lambda raw: pytest.fail("a record was decoded"))
    assert state.expiry() == {(T0 + 99, A), (T0 + 77, B)}  # C: dead letters have no expiry


def test_a_state_loaded_from_stored_records_keeps_final_ones_as_they_were_stored() -> None:
    final = run(*RETRIED).record(A)
    assert final is not None
    raw = P.pack(dict(reversed(list(final.items()))))  # stored bytes: any key order is kept as it is
    state = State()
    state.load(A, raw)
    state.load(B, P.pack(record(B)))
    assert state.is_frozen(A) and state.packed(A) is raw and state.record(A) == final
    assert not state.is_frozen(B) and state.record(B) == record(B)
    assert state.expiry() == {(T0 + 99, A)}


# --- --out writes final jobs as they freeze -------------------------------------------------
def test_out_writes_final_jobs_as_they_freeze_and_takes_back_one_requeued_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    completed = {"state": "completed", "value": b"\xa2ok", "finished_ms": T0 + 9, "expire_ms": T0 + 99}
    entries = [*BURIED, ("enqueue", B, record(B)), ("dispatch", B, DISPATCH), ("complete", B, completed),
               ("expire", B, {}), ("requeue", A, REQUEUE), ("dispatch", A, {**DISPATCH, "token": 78}),
               ("complete", A, completed), ("enqueue", C, record(C))]
    store = Store(str(tmp_path / "d"))
    try:
        store.commit(Batch(log=entries), T0)  # --out reads the log only
    finally:
        store.close()
    monkeypatch.setattr(replay, "JOBS_PER_COMMIT", 1)  # every frozen job is in NEWDIR before the next entry
    assert replay.main(["--data", str(tmp_path / "d"), "--out", str(tmp_path / "out")]) == 0
    expected = run(*entries)
    written = Store(str(tmp_path / "out"), readonly=True)
    try:
        assert {r["id"]: r for r in written.iter_jobs()} == {A: expected.record(A), C: record(C)}
        assert written.expired(T0 + 100) == [(T0 + 99, A)]
    finally:
        written.close()
    assert replay.main(["--data", str(tmp_path / "out"), "--verify"]) == 0


# --- verify ----------------------------------------------------------------------------------
def _stored(path: Path, final_a: dict[str, Any]) -> str:
    """A data directory whose log completes job A (RETRIED), with ``final_a`` as A's stored record."""
    store = Store(str(path))
    try:
        store.commit(Batch(log=list(RETRIED), jobs={A: final_a}, expiry_add=[(T0 + 99, A)],
                           counters={"email": {"failed": 1, "retried": 1, "completed": 1}}), T0)
    finally:
        store.close()
    return str(path)


def test_verify_compares_records_not_their_key_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    final = run(*RETRIED).record(A)
    assert final is not None
    data = _stored(tmp_path / "d", dict(reversed(list(final.items()))))  # other bytes, the same record
    assert replay.main(["--data", data, "--verify"]) == 0
    assert "is exactly what its log rebuilds: 6 entries, 1 jobs" in capsys.readouterr().out


def test_verify_reports_a_finished_jobs_stored_differences_field_by_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    final = run(*RETRIED).record(A)
    assert final is not None
    tampered = {k: v for k, v in final.items() if k != "traceback"} | {"attempts": 99, "worker": "other:1"}
    data = _stored(tmp_path / "d", final)
    env = lmdb.open(data, max_dbs=16)  # stored as a map, as schema 1 kept records: a field can be absent
    with env.begin(write=True) as txn:
        txn.put(A, P.pack(tampered), db=env.open_db(b"jobs", txn=txn))
    env.close()
    assert replay.main(["--data", data, "--verify"]) == 1
    out = capsys.readouterr()
    shown = id_to_str(A)
    assert out.out.splitlines() == [f"jobs  {shown}  attempts: log 2, stored 99",
                                    f"jobs  {shown}  traceback: log None, stored (absent)",
                                    f"jobs  {shown}  worker: log 'h:1', stored 'other:1'"]
    assert "3 differences" in out.err


# --- history ---------------------------------------------------------------------------------
def test_history_rows_show_each_runs_attempt_worker_and_lease() -> None:
    rows = history_rows(A, [(seq, [T0 + seq, op, A, changes]) for seq, (op, _, changes) in enumerate(RETRIED, 1)])
    assert [(r["op"], r["state"], r["attempt"], r["token"]) for r in rows] == [
        ("enqueue", "pending", 0, 0), ("dispatch", "running", 1, 77), ("retry", "scheduled", 1, 77),
        ("due", "pending", 1, 0), ("dispatch", "running", 2, 78), ("complete", "completed", 2, 78)]
    assert rows[2]["error"] == "boom" and rows[2]["worker"] == "h:1" and "retry due" in rows[2]["detail"]


def test_history_rows_follow_a_job_out_of_the_dead_letters() -> None:
    entries = [*BURIED, ("requeue", A, REQUEUE), ("dispatch", A, {**DISPATCH, "token": 78})]
    rows = history_rows(A, [(seq, [T0 + seq, op, A, changes]) for seq, (op, _, changes) in enumerate(entries, 1)])
    assert [(r["op"], r["state"], r["attempt"], r["token"]) for r in rows] == [
        ("enqueue", "pending", 0, 0), ("dispatch", "running", 1, 77), ("dead", "dead", 1, 77),
        ("requeue", "pending", 0, 0), ("dispatch", "running", 1, 78)]
    assert rows[2]["error"] == "x" and rows[2]["detail"] == "dead letter (permanent)"


def test_history_shows_what_the_log_says_even_where_replay_would_refuse() -> None:
    rows = history_rows(A, [(9, [T0, "dispatch", A, DISPATCH]), (10, [T0, "someday", A, {"x": 1}])])
    assert [r["op"] for r in rows] == ["dispatch", "someday"] and rows[1]["detail"] == "changed x"


# --- point in time -----------------------------------------------------------------------------
@pytest.mark.parametrize("text, until", [
    ("42", replay.Until(seq=42)), ("seq:1700000000", replay.Until(seq=1_700_000_000)),
    ("1700000000", replay.Until(wall_ms=T0)), ("@1700000000.5", replay.Until(wall_ms=T0 + 500)),
    ("1700000000.25", replay.Until(wall_ms=T0 + 250)),
    ("2023-11-14T22:13:20Z", replay.Until(wall_ms=T0)), ("2023-11-14T22:13:20.001", replay.Until(wall_ms=T0 + 1)),
    ("2023-11-14T23:13:20+01:00", replay.Until(wall_ms=T0)),
])
def test_until_reads_a_seq_unix_seconds_or_an_iso_time(text: str, until: replay.Until) -> None:
    assert replay.parse_until(text) == until


def test_until_that_is_neither_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert replay.main(["--data", str(tmp_path), "--out", str(tmp_path / "x"), "--until", "yesterday"]) == 2
    assert "expected a log seq (123)" in capsys.readouterr().err


def test_until_goes_with_out_not_verify(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert replay.main(["--data", str(tmp_path), "--verify", "--until", "5"]) == 2
    assert "--until goes with --out" in capsys.readouterr().err


def _two_commits(path: Path) -> None:
    """seq 1-2 committed at T0, seq 3-5 at T0 + 1000 (one commit: one wall time)."""
    store = Store(str(path))
    try:
        store.commit(Batch(log=[("learn_route", b"", {"workflow": f"w{i}", "group": "g", "retries": None})
                                for i in range(2)]), T0)
        store.commit(Batch(log=[("learn_route", b"", {"workflow": f"w{i}", "group": "g", "retries": None})
                                for i in range(2, 5)]), T0 + 1000)
    finally:
        store.close()


@pytest.mark.parametrize("until, stop", [
    (replay.Until(seq=2), 2), (replay.Until(seq=4), 2), (replay.Until(seq=5), 5), (replay.Until(seq=99), 5),
    (replay.Until(wall_ms=T0 + 999), 2), (replay.Until(wall_ms=T0 - 1), 0), (None, 5),
])
def test_a_stop_inside_a_commit_moves_back_to_the_end_of_the_previous_one(tmp_path: Path, until: Any, stop: int) -> None:
    _two_commits(tmp_path / "d")
    store = Store(str(tmp_path / "d"), readonly=True)
    try:
        with store.snapshot() as snap:
            assert replay.stop_seq_for(snap, until) == stop
    finally:
        store.close()


# --- opening data directories ---------------------------------------------------------------
def test_a_second_store_on_a_data_dir_is_refused_naming_the_pid_holding_it(tmp_path: Path) -> None:
    first = Store(str(tmp_path / "d"))
    try:
        with pytest.raises(DataDirInUse, match=rf"in use by another broker \(pid {os.getpid()}\)"):
            Store(str(tmp_path / "d"))
    finally:
        first.close()
    Store(str(tmp_path / "d")).close()  # released on close


def test_read_only_opens_refuse_what_is_not_shoal_data(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotADataDir, match="no data.mdb"):
        Store(str(tmp_path / "empty"), readonly=True)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "data.mdb").write_bytes(b"not lmdb" * 1000)
    with pytest.raises(NotADataDir, match="not a readable LMDB environment"):
        Store(str(tmp_path / "junk"), readonly=True)
    assert not (tmp_path / "empty" / "broker.lock").exists()  # nothing was written


def test_out_is_built_aside_and_renamed_so_a_refused_replay_leaves_nothing(tmp_path: Path) -> None:
    _two_commits(tmp_path / "d")
    (tmp_path / "out").mkdir()  # an empty directory is fine: it is replaced whole
    assert replay.main(["--data", str(tmp_path / "d"), "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "out"]
    store = Store(str(tmp_path / "out"), readonly=True)
    try:
        assert store.routes() == {f"w{i}": {"group": "g", "retries": None} for i in range(5)}
        assert store.next_seq == 6
    finally:
        store.close()


# --- known gaps between the broker and its log -----------------------------------------------
def test_a_cancelled_run_that_reports_a_failure_replays_to_the_same_counters(tmp_path: Path) -> None:
    from test_broker_core import CLIENT, Harness, dispatched

    h = Harness(tmp_path / "d")
    h.hello(slots=1)
    job_id = new_job_id()
    job = only_one(dispatched(h.send(CLIENT, P.ENQUEUE, {"rid": 1, "jobs": [
        {"id": job_id, "wf": "send-email", "group": "email", "payload": P.pack(1)}]})))
    h.request(P.CANCEL, {"id": job_id})
    h.fail(job, kind="cancelled")  # what a worker reports for a run it stopped
    assert h.state(job_id) == "cancelled"
    h.close()
    assert replay.main(["--data", str(tmp_path / "d"), "--verify"]) == 0


def only_one(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]

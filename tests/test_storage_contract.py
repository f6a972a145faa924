"""One suite, two stores: what the broker core relies on holds on LMDB and in memory alike."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.broker.storage.batch import Batch
from shoal.broker.storage.contract import CoreStore
from shoal.broker.storage.memstore import MemoryStore
from shoal.broker.storage.store import Store
from shoal.errors import StorageFull
from shoal import jobs as J
from shoal.ids import new_job_id

WALL = 1_700_000_000_000


@pytest.fixture(params=["lmdb", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CoreStore]:
    made: CoreStore = Store(str(tmp_path / "data")) if request.param == "lmdb" else MemoryStore()
    yield made
    made.close()


def job(job_id: bytes, **fields: object) -> dict[str, object]:
    """A whole record, as the core writes them (a field it lacks would read back as its default)."""
    return J.Job(id=job_id, workflow="wf", group="g", payload=b"").to_record() | fields


def test_a_committed_job_reads_back_equal(store: CoreStore) -> None:
    job_id = new_job_id()
    store.commit(Batch(jobs={job_id: job(job_id, payload=b"\x01")}), WALL)
    assert store.get_job(job_id) == job(job_id, payload=b"\x01")
    assert store.has_jobs([job_id, new_job_id()]) == {job_id}


def test_has_jobs_finds_stored_ids_below_between_and_after_others(store: CoreStore) -> None:
    """The LMDB store answers "none" from one cursor step when no stored id lies in the range
    asked for: ids before, between and after the stored ones, and ranges that span them."""
    ids = [n.to_bytes(16, "big") for n in range(0, 100, 10)]
    store.commit(Batch(jobs={i: job(i) for i in ids[2:8:2]}), WALL)  # 20, 40, 60 stored
    def n(*values: int) -> list[bytes]:
        return [v.to_bytes(16, "big") for v in values]
    assert store.has_jobs(n(1, 2, 3)) == set()            # all before the first stored
    assert store.has_jobs(n(61, 99)) == set()             # all after the last
    assert store.has_jobs(n(41, 45, 59)) == set()         # in a gap between two
    assert store.has_jobs(n(19, 21)) == set()             # around one, not on it
    assert store.has_jobs(n(5, 40, 95)) == set(n(40))     # spanning, one on a stored id
    assert store.has_jobs(n(20, 60)) == set(n(20, 60))    # exactly the ends
    assert store.has_jobs(n(40)) == set(n(40)) and store.has_jobs(n(41)) == set()
    assert store.has_jobs([b"short", *n(60)]) == set(n(60)) and store.has_jobs([]) == set()


def test_a_record_changed_after_its_commit_is_not_changed_in_the_store(store: CoreStore) -> None:
    job_id = new_job_id()
    record = job(job_id)
    store.commit(Batch(jobs={job_id: record}), WALL)
    record["state"] = "running"
    assert store.get_job(job_id)["state"] == "pending"  # type: ignore[index]


def test_none_deletes_a_job(store: CoreStore) -> None:
    job_id = new_job_id()
    store.commit(Batch(jobs={job_id: job(job_id)}), WALL)
    store.commit(Batch(jobs={job_id: None}), WALL)
    assert store.get_job(job_id) is None and store.has_jobs([job_id]) == set()


def test_iter_jobs_gives_every_stored_job(store: CoreStore) -> None:
    ids = sorted(new_job_id() for _ in range(5))
    store.commit(Batch(jobs={i: job(i) for i in ids}), WALL)
    assert [r["id"] for r in store.iter_jobs()] == ids


def test_each_log_entry_gets_the_next_seq_and_the_commit_wall_time(store: CoreStore) -> None:
    a, b = new_job_id(), new_job_id()
    first = store.next_seq
    store.commit(Batch(log=[("enqueue", a, {"x": 1}), ("enqueue", b, {"x": 2})]), WALL)
    store.commit(Batch(log=[("complete", a, {"state": "completed"})]), WALL + 5)
    entries = list(store.iter_log(first))
    assert [seq for seq, _ in entries] == [first, first + 1, first + 2]
    assert entries[2][1] == [WALL + 5, "complete", a, {"state": "completed"}]
    assert store.next_seq == first + 3 and store.last_seq() == first + 2
    assert [seq for seq, _ in store.iter_log(first + 1)] == [first + 1, first + 2]


def test_an_empty_batch_writes_nothing(store: CoreStore) -> None:
    before = store.next_seq
    store.commit(Batch(), WALL)
    assert store.next_seq == before and list(store.iter_log()) == []


def test_trimming_drops_the_log_up_to_a_seq_and_seqs_go_on(store: CoreStore) -> None:
    job_id = new_job_id()
    store.commit(Batch(log=[("enqueue", job_id, {}) for _ in range(5)]), WALL)
    store.commit(Batch(trim_log_to=3), WALL)
    assert store.log_first_seq() == 4
    store.commit(Batch(trim_log_to=5), WALL)
    assert store.log_first_seq() == 0 and store.last_seq() == 5  # empty, the trim point remembered
    store.commit(Batch(log=[("due", job_id, {})]), WALL)
    assert [seq for seq, _ in store.iter_log()] == [6]


def test_steps_are_kept_per_job_and_dropped_with_it(store: CoreStore) -> None:
    a, b = new_job_id(), new_job_id()
    store.commit(Batch(steps={(a, "download"): {"value": b"1"}, (a, "resize"): {"value": b"2"},
                              (b, "download"): {"value": b"3"}}), WALL)
    assert store.steps_of(a) == {"download": {"value": b"1"}, "resize": {"value": b"2"}}
    store.commit(Batch(drop_steps=[a]), WALL)
    assert store.steps_of(a) == {} and store.steps_of(b) == {"download": {"value": b"3"}}


def test_expired_lists_finished_jobs_by_expiry_time_up_to_now_and_a_limit(store: CoreStore) -> None:
    ids = [new_job_id() for _ in range(4)]
    store.commit(Batch(expiry_add=[(WALL + 30, ids[0]), (WALL + 10, ids[1]), (WALL + 20, ids[2]),
                                   (WALL + 99, ids[3])]), WALL)
    assert store.expired(WALL + 30) == [(WALL + 10, ids[1]), (WALL + 20, ids[2]), (WALL + 30, ids[0])]
    assert store.expired(WALL + 30, limit=1) == [(WALL + 10, ids[1])]
    store.commit(Batch(expiry_del=[(WALL + 10, ids[1])]), WALL)
    assert store.expired(WALL + 20) == [(WALL + 20, ids[2])]


def test_routes_counters_and_cron_marks_are_replaced_by_name(store: CoreStore) -> None:
    store.commit(Batch(routes={"wf": {"group": "a", "retries": None}}, counters={"a": {"completed": 1}},
                       cron={"nightly": WALL}), WALL)
    store.commit(Batch(routes={"wf": {"group": "b", "retries": 2}}, counters={"a": {"completed": 2}},
                       cron={"nightly": WALL + 1}), WALL)
    assert store.routes() == {"wf": {"group": "b", "retries": 2}}
    assert store.counters() == {"a": {"completed": 2}}
    assert store.cron_last_fired() == {"nightly": WALL + 1}


def test_a_batch_that_cannot_be_stored_leaves_nothing_of_itself(store: CoreStore) -> None:
    good, bad = new_job_id(), new_job_id()
    with pytest.raises(TypeError):
        store.commit(Batch(jobs={good: job(good), bad: job(bad, payload=object())}), WALL)
    assert store.get_job(good) is None and store.has_jobs([good, bad]) == set()


def test_sizes_and_room_are_reported(store: CoreStore) -> None:
    job_id = new_job_id()
    store.commit(Batch(jobs={job_id: job(job_id, payload=b"x" * 10_000)}), WALL)
    used = store.used_bytes()
    assert used > 0 and store.disk_room(used) > 0
    assert store.sizes()["entries"]["jobs"] == 1


def test_the_memory_store_refuses_a_commit_past_its_cap_and_keeps_nothing_of_it() -> None:
    store = MemoryStore(max_bytes=1_000)
    job_id = new_job_id()
    with pytest.raises(StorageFull):
        store.commit(Batch(jobs={job_id: job(job_id, payload=b"x" * 2_000)}), WALL)
    assert store.get_job(job_id) is None

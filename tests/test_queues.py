"""The broker's in-memory indexes (ready queue, schedule) and client-made job ids."""
from __future__ import annotations

import itertools
import time
import uuid

import pytest

from shoal.broker.core.queues import ReadyQueue, Schedule
from shoal.errors import UnknownJob
from shoal.ids import id_from_str, id_to_str, new_job_id, new_job_ids


def drain(queue: ReadyQueue) -> list[bytes]:
    out = []
    while (job_id := queue.pop()) is not None:
        out.append(job_id)
    return out


# --- ReadyQueue ---------------------------------------------------------------------------
def test_ready_queue_is_first_in_first_out_within_a_priority() -> None:
    queue = ReadyQueue()
    for seq, job_id in enumerate([b"a", b"b", b"c", b"d"]):
        queue.push(job_id, seq)
    assert drain(queue) == [b"a", b"b", b"c", b"d"]


def test_ready_queue_orders_by_arrival_sequence_not_by_push_order() -> None:
    queue = ReadyQueue()
    queue.push(b"late", 9)
    queue.push(b"early", 2)
    assert drain(queue) == [b"early", b"late"]


def test_higher_priority_goes_first() -> None:
    queue = ReadyQueue()
    queue.push(b"low", 1, priority=0)
    queue.push(b"high", 2, priority=5)
    queue.push(b"negative", 3, priority=-1)
    queue.push(b"high-too", 4, priority=5)
    assert drain(queue) == [b"high", b"high-too", b"low", b"negative"]


def test_push_front_beats_earlier_arrivals_of_its_priority() -> None:
    queue = ReadyQueue()
    queue.push(b"first", 1)
    queue.push(b"second", 2)
    queue.push_front(b"handed-back")
    assert drain(queue) == [b"handed-back", b"first", b"second"]


def test_a_later_push_front_goes_ahead_of_an_earlier_one() -> None:
    queue = ReadyQueue()
    queue.push(b"arrival", 1)
    queue.push_front(b"back-1")
    queue.push_front(b"back-2")
    assert drain(queue) == [b"back-2", b"back-1", b"arrival"]


def test_push_front_does_not_beat_a_higher_priority() -> None:
    queue = ReadyQueue()
    queue.push(b"urgent", 1, priority=9)
    queue.push_front(b"handed-back", priority=0)
    assert drain(queue) == [b"urgent", b"handed-back"]


def test_removed_job_is_never_popped() -> None:
    queue = ReadyQueue()
    for seq, job_id in enumerate([b"a", b"b", b"c"]):
        queue.push(job_id, seq)
    assert queue.remove(b"b") is True
    assert b"b" not in queue
    assert len(queue) == 2
    assert drain(queue) == [b"a", b"c"]


def test_removing_an_absent_job_reports_false() -> None:
    queue = ReadyQueue()
    queue.push(b"a", 1)
    assert queue.remove(b"zzz") is False
    queue.pop()
    assert queue.remove(b"a") is False


def test_peek_shows_the_next_job_without_taking_it_and_skips_removed_ones() -> None:
    queue = ReadyQueue()
    queue.push(b"a", 1)
    queue.push(b"b", 2)
    queue.remove(b"a")
    assert queue.peek() == b"b"
    assert len(queue) == 1
    assert queue.pop() == b"b"


def test_empty_queue_pops_and_peeks_none() -> None:
    queue = ReadyQueue()
    assert queue.pop() is None and queue.peek() is None
    assert len(queue) == 0 and not queue


def test_length_and_membership_follow_push_and_pop() -> None:
    queue = ReadyQueue()
    queue.push(b"a", 1)
    queue.push(b"b", 2)
    assert len(queue) == 2 and b"a" in queue
    queue.pop()
    assert len(queue) == 1 and b"a" not in queue and b"b" in queue


def test_a_job_removed_and_queued_again_takes_its_new_place() -> None:
    queue = ReadyQueue()
    queue.push(b"a", 1)
    queue.remove(b"a")
    queue.push(b"b", 2)
    queue.push(b"a", 3)
    assert drain(queue) == [b"b", b"a"]


# --- Schedule -------------------------------------------------------------------------------
def test_schedule_pops_due_jobs_soonest_first() -> None:
    schedule = Schedule()
    schedule.add(b"c", 300)
    schedule.add(b"a", 100)
    schedule.add(b"b", 200)
    assert schedule.pop_due(250) == [b"a", b"b"]
    assert len(schedule) == 1


def test_schedule_keeps_jobs_not_yet_due() -> None:
    schedule = Schedule()
    schedule.add(b"a", 100)
    assert schedule.pop_due(99) == []
    assert schedule.pop_due(100) == [b"a"]
    assert schedule.pop_due(10_000) == []


def test_next_deadline_is_the_soonest_deadline() -> None:
    schedule = Schedule()
    assert schedule.next_deadline() is None
    schedule.add(b"b", 500)
    schedule.add(b"a", 200)
    assert schedule.next_deadline() == 200
    schedule.pop_due(200)
    assert schedule.next_deadline() == 500


def test_removed_job_is_not_due_and_not_counted_in_next_due() -> None:
    schedule = Schedule()
    schedule.add(b"a", 100)
    schedule.add(b"b", 200)
    assert schedule.remove(b"a") is True
    assert schedule.remove(b"a") is False
    assert schedule.next_deadline() == 200
    assert schedule.pop_due(1000) == [b"b"]


def test_adding_a_job_again_moves_its_due_time() -> None:
    schedule = Schedule()
    schedule.add(b"a", 100)
    schedule.add(b"a", 500)
    assert len(schedule) == 1
    assert schedule.next_deadline() == 500
    assert schedule.pop_due(400) == []
    assert schedule.pop_due(500) == [b"a"]


# --- job ids ------------------------------------------------------------------------------
def test_new_job_ids_are_unique_and_strictly_increasing_within_a_process() -> None:
    ids = [new_job_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(a < b for a, b in itertools.pairwise(ids))


def test_ids_made_a_batch_at_a_time_keep_the_order_across_the_counter_and_single_ids() -> None:
    """``new_job_ids`` (one ``enqueue_many``) and ``new_job_id`` share the clock and counter:
    mixed, even past 4,096 ids in one millisecond (the counter borrows the next), every id is
    new, later than the one before, and a UUIDv7."""
    made = [new_job_id(), *new_job_ids(10_000), new_job_id(), *new_job_ids(5), *new_job_ids(2), new_job_id()]
    assert len(made) == 10_010 and len(set(made)) == len(made)
    assert all(a < b for a, b in itertools.pairwise(made))
    for raw in made:
        parsed = uuid.UUID(bytes=raw)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert new_job_ids(0) == []


def test_a_job_id_is_a_uuid7_carrying_the_current_time() -> None:
    before_ms = time.time_ns() // 1_000_000
    raw = new_job_id()
    after_ms = time.time_ns() // 1_000_000
    assert len(raw) == 16
    parsed = uuid.UUID(bytes=raw)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    # the counter may borrow a few milliseconds after a burst of ids
    assert before_ms <= int.from_bytes(raw[:6], "big") <= after_ms + 5


def test_id_text_form_round_trips() -> None:
    raw = new_job_id()
    text = id_to_str(raw)
    assert len(text) == 36 and text.count("-") == 4
    assert id_from_str(text) == raw
    assert id_from_str(text.encode()) == raw


def test_id_from_str_passes_sixteen_raw_bytes_through() -> None:
    raw = new_job_id()
    assert id_from_str(raw) == raw


def test_id_from_str_refuses_text_that_is_not_an_id() -> None:
    with pytest.raises(UnknownJob, match="not a job id"):
        id_from_str("not-a-job")

"""The worker's hand-offs (issue 13): the runner's own threads, and one wake-up per batch of outcomes.

Runner tests run handlers on real threads; the shell test drives a real WorkerShell over a
real DEALER/ROUTER pair on ipc, the test holding the ROUTER (``WireEnd``).
"""
from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

from shoal import protocol as P
from shoal import workflow
from shoal.worker.runner import KIND_CANCELLED, Outcome, Runner
from shoal.worker.shell import WorkerOptions, WorkerShell

from conftest import wait_for
from test_worker_faults import drain_over_wire, wired_shell

GATE = threading.Event()      # blocking handlers wait here; each test sets it before it ends
ACTIVE = [0, 0]               # handlers running now, the most ever at once
ACTIVE_LOCK = threading.Lock()


@workflow("handoff-gated", worker="handoff")
def gated(payload):
    with ACTIVE_LOCK:
        ACTIVE[0] += 1
        ACTIVE[1] = max(ACTIVE[1], ACTIVE[0])
    try:
        GATE.wait(30)
    finally:
        with ACTIVE_LOCK:
            ACTIVE[0] -= 1
    return payload


@workflow("handoff-echo", worker="handoff")
def echo(payload):
    return payload


@workflow("handoff-wedged", worker="handoff")
def wedged(payload, step):
    GATE.wait(30)  # ignores step.cancelled: a handler stuck in a call without a timeout
    return "late"


@workflow("handoff-until-cancelled", worker="handoff")
def until_cancelled(payload, step):
    deadline = time.monotonic() + 10
    while not step.cancelled and time.monotonic() < deadline:
        time.sleep(0.001)  # work in small pieces, checking the flag between them
    return "stopped" if step.cancelled else "never told"


WORKFLOWS = {w.name: w for w in (gated, echo, wedged, until_cancelled)}


def _job(i: int, wf: str = "handoff-echo") -> dict:
    return {"id": i.to_bytes(16, "big"), "token": i + 1, "wf": wf, "payload": P.pack(i), "attempt": 1}


def _collector() -> tuple["queue.SimpleQueue[Outcome]", list[Outcome]]:
    return queue.SimpleQueue(), []


def _drain(q: "queue.SimpleQueue[Outcome]", into: list[Outcome]) -> int:
    while True:
        try:
            into.append(q.get_nowait())
        except queue.Empty:
            return len(into)


def test_runs_never_exceed_the_slots_and_every_outcome_arrives_once() -> None:
    GATE.clear()
    ACTIVE[:] = [0, 0]
    runner = Runner(WORKFLOWS, "handoff", 3)
    q, got = _collector()
    try:
        for i in range(10):
            runner.submit(_job(i, "handoff-gated"), q.put)
        wait_for(lambda: ACTIVE[0] == 3, what="three handlers running")
        assert len(runner._threads) == 3         # one thread per slot, no more
        assert _drain(q, got) == 0
        GATE.set()
        wait_for(lambda: _drain(q, got) == 10, what="all ten outcomes")
        assert ACTIVE[1] == 3                     # the other seven waited for a slot
        assert sorted(P.unpack(o.value) for o in got) == list(range(10))
        assert all(o.ok and o.workflow == "handoff-gated" for o in got)
        assert runner._running == {} and runner._busy == 0
    finally:
        GATE.set()
        runner.shutdown(wait=True)


def test_a_given_up_run_keeps_its_thread_and_the_other_slot_still_runs_jobs() -> None:
    GATE.clear()
    runner = Runner(WORKFLOWS, "handoff", 2, stuck_grace_s=0.05)
    q, got = _collector()
    try:
        runner.submit(_job(0, "handoff-wedged"), q.put)
        wait_for(lambda: len(runner._threads) == 1, what="the wedged run's thread")
        runner.cancel(_job(0)["id"])
        given_up: list[Outcome] = []
        wait_for(lambda: given_up.extend(runner.overdue(time.monotonic())) or given_up, what="the run given up")
        assert [(o.job_id, o.kind) for o in given_up] == [(_job(0)["id"], KIND_CANCELLED)]
        runner.submit(_job(1), q.put)            # the stuck thread still counts: a second one runs this
        wait_for(lambda: _drain(q, got) == 1, what="the echo's outcome")
        assert P.unpack(got[0].value) == 1 and len(runner._threads) == 2
        GATE.set()                                # the wedged handler returns at last: reported, not kept
        wait_for(lambda: _drain(q, got) == 2, what="the late outcome")
        assert got[1].job_id == _job(0)["id"] and runner._running == {}
    finally:
        GATE.set()
        runner.shutdown(wait=True)


def test_shutdown_drops_the_runs_not_started_and_ends_the_threads() -> None:
    GATE.clear()
    runner = Runner(WORKFLOWS, "handoff", 1)
    q, got = _collector()
    for i in range(4):
        runner.submit(_job(i, "handoff-gated"), q.put)
    wait_for(lambda: ACTIVE[0] == 1, what="the first run to start")
    runner.shutdown(wait=False)
    GATE.set()
    wait_for(lambda: not any(t.is_alive() for t in runner._threads), what="the threads to end")
    assert _drain(q, got) == 1 and got[0].job_id == _job(0)["id"]  # the three queued never ran


def test_outcomes_finishing_together_share_one_wake_up() -> None:
    shell = WorkerShell(WorkerOptions("ipc:///nonexistent", "handoff", 4), Runner(WORKFLOWS, "handoff", 4))
    try:
        threads = [threading.Thread(target=lambda k=k: [shell._on_outcome(Outcome(bytes([k, i]), 1, True))
                                                        for i in range(100)]) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert os.read(shell._wake_r, 4096) == b"x"      # one wake-up for 400 outcomes
        assert shell.outcomes.qsize() == 400
        shell._outcome_wake_pending = False             # what the loop does before taking them
        shell._on_outcome(Outcome(b"next", 1, True))
        assert os.read(shell._wake_r, 4096) == b"x"      # the next one wakes the loop again
    finally:
        shell.close()


def test_results_keep_their_order_through_the_batched_hand_off(tmp_path: Path) -> None:
    """One slot, 300 jobs in one JOB: the DONEs, however they are batched, hold every result once, in order."""
    with wired_shell(tmp_path, "handoff", WORKFLOWS, 1) as (shell, thread, wire):
        wire.expect(P.HELLO)
        wire.send(P.JOB, {"jobs": [_job(i) for i in range(300)]})
        results: list[list] = []
        while len(results) < 300:
            results.extend(wire.expect(P.DONE)["results"])
        assert [(r[0], r[1], P.unpack(r[2])) for r in results] == [(_job(i)["id"], i + 1, i) for i in range(300)]
        wait_for(lambda: not shell.inflight, what="the in-flight table to empty")
        drain_over_wire(shell, thread, wire)


def test_a_cancel_right_behind_its_job_reaches_the_run(tmp_path: Path) -> None:
    """The jobs a pass reads go to the runner when the pass ends; a CANCEL read in the same pass
    as its JOB must still find the run (the shell hands its jobs over before acting on it)."""
    with wired_shell(tmp_path, "handoff", WORKFLOWS, 2) as (shell, thread, wire):
        wire.expect(P.HELLO)
        for i in range(5):  # back to back, so that most pairs land in one read
            job = _job(i, "handoff-until-cancelled")
            wire.send(P.JOB, {"jobs": [job]})
            wire.send(P.CANCEL, {"id": job["id"], "token": job["token"]})
            result = wire.expect(P.DONE)["results"][0]  # a sync run that heeded its cancel returns
            assert (result[0], P.unpack(result[2])) == (job["id"], "stopped")
        drain_over_wire(shell, thread, wire)

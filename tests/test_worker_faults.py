"""Worker-side faults (issue 11): one HELLO per broker restart, stuck handlers, timeouts.

Real broker and worker processes on loopback; the handlers live in tests/apps/stuckapp.py.
The DEFER test drives a real WorkerShell over a real DEALER/ROUTER pair on ipc, the test
holding the ROUTER: the broker side of DEFER is not on this branch yet.
"""
from __future__ import annotations

import contextlib
import logging
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import zmq

from shoal import protocol as P
from shoal import workflow
from shoal.conf import load_settings
from shoal.worker.outbox import Outbox
from shoal.worker.runner import Outcome, Runner
from shoal.worker.shell import WorkerOptions, WorkerShell

from conftest import DEFAULT_TOML, Cluster, lines, wait_for

STUCK_GROUP = """
[workflows.stuck]
app = "stuckapp"
workers = 1
concurrency = 2
grace = "1s"
"""


def joined_pids(output: str, group: str) -> list[int]:
    """Pids of the workers that said HELLO for ``group``, in order (one per `joined group` line)."""
    return [int(pid) for pid in re.findall(rf":(\d+) joined group {group} ", output)]


# Heartbeats slow enough that the worker does not notice a quick restart: its socket
# reconnects by itself and delivers what it queued meanwhile (results, heartbeats), each of
# which the restarted broker answers with RECONNECT.
SLOW_HEARTBEATS = DEFAULT_TOML.replace('heartbeat_interval = "0.2s"', 'heartbeat_interval = "1s"') \
    .replace('lease = "3s"', 'lease = "10s"')


def test_broker_restart_under_load_gets_one_hello_per_worker(cluster_factory) -> None:
    c: Cluster = cluster_factory(SLOW_HEARTBEATS)
    c.start_broker()
    worker = c.start_worker("default", 16)
    client = c.client(timeout=30)
    ids = client.enqueue_many("record", [{"n": n, "s": 0.02 + (n % 7) / 100} for n in range(2000)],
                              group="default")
    wait_for(lambda: client.stats()["default"]["completed"] >= 200, what="the worker to be busy")
    c.broker.kill()
    restarted = c.start_broker()
    client = c.client(timeout=30)
    results = [client.wait(job_id, timeout=90) for job_id in ids]
    assert {r.status for r in results} == {"completed"}
    hellos = joined_pids(restarted.output(), "default")
    assert hellos and set(hellos) == {worker.pid}
    assert len(hellos) <= 3, f"{len(hellos)} HELLOs from one worker after one restart"


def test_cancel_of_a_sync_handler_that_ignores_it_replaces_the_worker(cluster_factory, tmp_path: Path) -> None:
    c: Cluster = cluster_factory(DEFAULT_TOML + STUCK_GROUP)
    c.start_broker(supervise=True)
    first = wait_for(lambda: joined_pids(c.broker_output(), "stuck"), what="the supervised worker")[0]
    client = c.client(timeout=30)
    stuck = client.enqueue("sleep-forever", {})
    other = client.enqueue("polite-loop", {"s": 12})  # in flight beside it: handed back, run again
    wait_for(lambda: len(lines(tmp_path / "stuck.log")) == 1 and len(lines(tmp_path / "polite.log")) == 1,
             what="both jobs to start")
    client.cancel(stuck)
    assert client.wait(stuck, timeout=30).status == "cancelled"
    wait_for(lambda: f"worker pid {first} of group stuck exited (0)" in c.broker_output(), timeout=30,
             what="the stuck worker to exit 0")
    fresh = wait_for(lambda: [p for p in joined_pids(c.broker_output(), "stuck") if p != first],
                     timeout=30, what="a fresh worker to join")[0]
    echoed = client.wait(client.enqueue("stuck-echo", {"n": 1}), timeout=30)
    assert echoed.status == "completed" and echoed.value["pid"] == fresh
    handed_back = client.wait(other, timeout=30)
    assert handed_back.status == "completed" and handed_back.attempts == 1  # the hand-back was not charged
    assert [line.split()[1] for line in lines(tmp_path / "polite.log") if line.startswith("start")] == \
        [str(first), str(fresh)]


def test_a_sync_handler_past_its_timeout_fails_with_kind_timeout_until_dead(cluster_factory,
                                                                          tmp_path: Path) -> None:
    c: Cluster = cluster_factory(DEFAULT_TOML + STUCK_GROUP)
    c.start_broker(supervise=True)
    client = c.client(timeout=30)
    result = client.wait(client.enqueue("sleeps-past-timeout", {}), timeout=90)
    assert (result.status, result.error_kind, result.attempts) == ("dead", "timeout", 2)
    assert "timed out after 1s" in (result.error or "")
    attempts = lines(tmp_path / "timeout.log")
    assert [a.split()[1] for a in attempts] == ["1", "2"]
    assert attempts[0].split()[3] != attempts[1].split()[3]  # each stuck attempt cost its worker process
    assert "exited (0)" in c.broker_output()


def test_the_group_timeout_stops_a_polite_handler_without_replacing_its_worker(cluster_factory,
                                                                             tmp_path: Path) -> None:
    c: Cluster = cluster_factory(DEFAULT_TOML + STUCK_GROUP + 'timeout = "1s"\n')
    c.start_broker()
    worker = c.start_worker_raw("stuck", app="stuckapp")
    wait_for(lambda: f":{worker.pid} joined group stuck" in c.broker_output(), what="the worker to join")
    client = c.client(timeout=30)
    polite = client.wait(client.enqueue("polite-loop", {}), timeout=30)
    assert (polite.status, polite.error_kind) == ("dead", "timeout")
    assert lines(tmp_path / "polite.log") == [f"start {worker.pid}", f"stopped {worker.pid}"]
    late = client.wait(client.enqueue("async-past-timeout", {}), timeout=30)
    assert (late.status, late.error_kind, late.error) == ("dead", "timeout", "timed out after 0.5s")
    echoed = client.wait(client.enqueue("stuck-echo", {}), timeout=30)
    assert echoed.value["pid"] == worker.pid and worker.alive()
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0


def test_timeout_is_a_group_key_inherited_down_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "shoal.toml"
    path.write_text('[workflows]\ntimeout = "10s"\n[workflows.media]\ntimeout = "2m"\n'
                    '[servers.lax.workflows.media]\ntimeout = 0\n')
    here = load_settings(str(path), server="sfo", env={})
    assert (here.group("email").timeout_s, here.group("media").timeout_s) == (10.0, 120.0)
    assert here.sources["media"]["timeout"] == "[workflows.media]"
    assert load_settings(str(path), server="lax", env={}).group("media").timeout_s == 0.0
    assert load_settings(None, env={}).group("email").timeout_s == 0.0


def test_the_decorators_timeout_beats_the_groups() -> None:
    @workflow("own", timeout=3)
    def own(payload):
        return None

    @workflow("unlimited", timeout=0)
    def unlimited(payload):
        return None

    @workflow("inherits")
    def inherits(payload):
        return None

    runner = Runner({w.name: w for w in (own, unlimited, inherits)}, "default", 1, timeout_s=30)
    try:
        assert [runner.timeout_of(w) for w in (own, unlimited, inherits)] == [3, 0, 30]
    finally:
        runner.shutdown(wait=True)
    with pytest.raises(ValueError, match="timeout"):
        workflow("bad", timeout=-1)


@workflow("double", worker="wire")
def double(payload):
    return payload * 2


class WireEnd:
    """The ROUTER end of a worker's connection, read and written by the test."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.identity = b""

    def expect(self, command: bytes, timeout: float = 10.0) -> dict[str, Any]:
        """The next message of this command from the worker (heartbeats skipped); fails at the deadline."""
        deadline = time.monotonic() + timeout
        while self.sock.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
            self.identity, *frames = self.sock.recv_multipart()
            got, body = P.decode(frames)
            if got == command:
                return body
            assert got == P.HEARTBEAT, f"expected {command!r}, the worker sent {got!r} {body}"
        raise AssertionError(f"no {command!r} from the worker within {timeout}s")

    def send(self, command: bytes, body: dict[str, Any]) -> None:
        self.sock.send_multipart([self.identity, *P.encode(command, body)])

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


@contextlib.contextmanager
def wired_shell(tmp_path: Path, group: str, workflows: dict[str, Any],
                slots: int) -> Iterator[tuple[WorkerShell, threading.Thread, WireEnd]]:
    """A real WorkerShell of ``group`` with ``slots``, running on its own thread and connected to
    the test's ROUTER on ipc (its HELLO not read yet); stopped at once on the way out."""
    wire = WireEnd(f"ipc://{tmp_path}/broker.sock")
    options = WorkerOptions(f"ipc://{tmp_path}/broker.sock", group, slots, heartbeat_interval_s=0.1, liveness=1000)
    shell = WorkerShell(options, Runner(workflows, group, slots))
    thread = threading.Thread(target=shell.run, daemon=True)
    thread.start()
    try:
        yield shell, thread, wire
    finally:
        stop_over_wire(shell, thread, wire)


def drain_over_wire(shell: WorkerShell, thread: threading.Thread, wire: WireEnd) -> None:
    """Drain the shell: READY 0, then BYE, then its thread ends."""
    shell.drain()
    assert wire.expect(P.READY)["slots"] == 0
    wire.expect(P.BYE)
    thread.join(10)
    assert not thread.is_alive()


def stop_over_wire(shell: WorkerShell, thread: threading.Thread, wire: WireEnd) -> None:
    """Whatever happened: stop the shell at once and close the test's end."""
    shell.stop_now()
    thread.join(10)
    wire.close()


def test_deferred_results_are_kept_and_sent_again_until_stored(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="shoal.worker")
    job_id = bytes(range(16))
    with wired_shell(tmp_path, "wire", {"double": double}, 2) as (shell, thread, wire):
        assert wire.expect(P.HELLO)["running"] == []
        wire.send(P.JOB, {"jobs": [{"id": job_id, "token": 7, "wf": "double", "payload": P.pack(21), "attempt": 1}]})
        assert wire.expect(P.DONE)["results"][0][:3] == [job_id, 7, P.pack(42)]

        wire.send(P.DEFER, {"results": [[job_id, 7]], "reason": "storage full", "retry_ms": 300})
        deferred_at = time.monotonic()
        assert wire.expect(P.DONE)["results"][0][:3] == [job_id, 7, P.pack(42)]
        assert time.monotonic() - deferred_at >= 0.25   # after retry_ms, not at once
        assert shell.inflight.get(job_id) == 7          # still ours: its slot and lease stay taken

        wire.send(P.DEFER, {"results": [[job_id, 7]], "reason": "storage full", "retry_ms": 5000})
        wire.send(P.RECONNECT, {})                      # a restart meanwhile: HELLO lists it, re-send has it
        assert wire.expect(P.HELLO)["running"] == [[job_id, 7]]
        assert [r[0] for r in wire.expect(P.DONE)["results"]] == [job_id]

        wire.send(P.HEARTBEAT, {})                      # no DEFER this time: the result was stored
        wait_for(lambda: job_id not in shell.inflight, timeout=5, what="the stored result to be let go")
        wire.send(P.DEFER, {"results": [[job_id, 99]], "reason": "stale", "retry_ms": 10})
        wire.send(P.RECONNECT, {})
        assert wire.expect(P.HELLO)["running"] == []   # a DEFER under another token resurrects nothing
        wire.expect(P.DONE)                             # the usual re-send of recent outcomes
        warnings = [r for r in caplog.records if "cannot store its result yet" in r.getMessage()]
        assert len(warnings) == 1 and "storage full" in warnings[0].getMessage()

        drain_over_wire(shell, thread, wire)


def _done(job_id: bytes, token: int = 1) -> Outcome:
    return Outcome(job_id, token, True, value=P.pack("v"), workflow="w")


def test_a_held_result_outlives_the_resend_horizon_and_is_let_go_only_after_a_quiet_resend() -> None:
    box = Outbox(horizon_s=10, quiet_s=2)
    box.sent([_done(b"a"), Outcome(b"f", 1, False, kind="error", workflow="w")], now=0)
    assert box.defer({"results": [[b"a", 1], [b"f", 1], [b"x", 1]], "retry_ms": 500}, now=1) == [_done(b"a")]
    assert list(box.held) == [b"a"]                      # a failure or an unknown job is never held
    assert box.due(now=1.4) == [] and box.due(now=1.5) == [_done(b"a")]
    assert box.released(now=3.4) == []
    assert box.defer({"results": [[b"a", 1]], "retry_ms": 500}, now=3.4) == []  # warned once already
    assert [o.job_id for o in box.to_resend(now=100)] == [b"a"]                # past the horizon, still held
    assert box.released(now=101) == [] and box.released(now=102) == [_done(b"a")]
    assert box.held == {}


def test_cancelling_a_running_async_handler_ends_its_run_at_once(cluster_factory, tmp_path: Path) -> None:
    c: Cluster = cluster_factory(DEFAULT_TOML + STUCK_GROUP)
    c.start_broker()
    worker = c.start_worker("stuck", 2, app="stuckapp")
    client = c.client(timeout=30)
    job_id = client.enqueue("async-sleeps", {})
    wait_for(lambda: lines(tmp_path / "async.log"), what="the async handler to start")
    client.cancel(job_id)
    assert client.wait(job_id, timeout=20).status == "cancelled"
    echoed = client.wait(client.enqueue("stuck-echo", {}), timeout=20)
    assert echoed.value["pid"] == worker.pid  # an async run is cancelled in place: no replacement


def test_outcomes_sent_while_the_broker_was_frozen_are_re_sent_however_long_the_freeze() -> None:
    box = Outbox(horizon_s=10, quiet_s=2)
    box.heard(100)                      # the broker answered last at 100, then froze
    box.sent([_done(b"a")], now=100.5)
    assert [o.job_id for o in box.to_resend(now=130)] == [b"a"]  # 30 s later, past the horizon from now


def test_a_re_send_of_many_big_results_is_split_under_the_message_limit() -> None:
    from shoal.worker.outbox import BATCH_BYTES, encode_outcomes

    big = [Outcome(bytes([n]) * 16, 1, True, value=b"v" * (1 << 20), workflow="w") for n in range(20)]
    messages = encode_outcomes(big)
    assert len(messages) > 1 and all(len(m[2]) < 2 * BATCH_BYTES for m in messages)
    sent = [r[0] for m in messages for r in P.decode(m)[1]["results"]]
    assert sent == [o.job_id for o in big]

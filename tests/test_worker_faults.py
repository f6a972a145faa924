"""Worker-side faults (issue 11): one HELLO per broker restart, stuck handlers, timeouts.

Real broker and worker processes on loopback; the handlers live in tests/apps/stuckapp.py.
The DEFER wire test is in tests/test_worker_defer.py.
"""
from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from shoal.conf import load_settings

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
    from shoal import workflow
    from shoal.worker.runner import Runner

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

"""Credit, retries, dead letters and crashes, with real processes."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from conftest import Cluster, lines, wait_for


def _max_concurrent(log_lines: list[str]) -> int:
    running = peak = 0
    events = sorted((float(l.split()[2]), l.split()[0]) for l in log_lines)
    for _, kind in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    return peak


def test_worker_never_runs_more_jobs_than_its_slots(cluster: Cluster) -> None:
    cluster.start_worker("media", 2)
    client = cluster.client()
    ids = client.enqueue_many("slow", [{"i": i, "s": 0.15} for i in range(10)], group="media")
    assert [client.wait(i, timeout=30).value for i in ids] == list(range(10))
    assert _max_concurrent(lines(cluster.tmp / "slow.log")) == 2


def test_retry_then_success_counts_attempts(cluster: Cluster) -> None:
    cluster.start_worker("email", 2)
    client = cluster.client()
    result = client.wait(client.enqueue("flaky", {"ok_on": 3}, group="email"), timeout=20)
    assert result.status == "completed"
    assert result.value == 3 and result.attempts == 3
    stats = client.stats()["email"]
    assert stats["failed"] == 2 and stats["retried"] == 2


def test_out_of_retries_goes_to_dead_letters_with_its_error(cluster: Cluster) -> None:
    cluster.start_worker("email", 2)
    client = cluster.client()
    result = client.wait(client.enqueue("always-fails", {}, group="email"), timeout=20)
    assert result.status == "dead" and result.attempts == 2  # retries=1
    assert "RuntimeError: always" in result.error and "Traceback" in result.traceback


def test_permanent_skips_retries_and_requeue_gives_a_fresh_budget(cluster: Cluster) -> None:
    cluster.start_worker("email", 2)
    client = cluster.client()
    perm = client.wait(client.enqueue("permanent", {}, group="email"), timeout=20)
    assert perm.status == "dead" and perm.attempts == 1 and perm.error_kind == "permanent"
    job_id = client.enqueue("toggle", {}, group="email")
    assert client.wait(job_id, timeout=20).status == "dead"
    dead = {d.id: d for d in client.dead_letters(group="email")}
    assert set(dead) == {perm.id, job_id}
    assert dead[job_id].workflow == "toggle" and "not yet" in dead[job_id].error
    (cluster.tmp / "toggle-ok").touch()
    assert client.requeue(job_id) is True
    result = client.wait(job_id, timeout=20)
    assert result.status == "completed" and result.value == "ok" and result.attempts == 1
    assert [d.id for d in client.dead_letters()] == [perm.id]
    assert client.requeue(job_id) is False  # not dead any more


def test_sigkilled_worker_mid_job_job_completes_on_another_worker(cluster: Cluster) -> None:
    victim = cluster.start_worker("media", 1)
    client = cluster.client()
    job_id = client.enqueue("block", {"i": 1, "release": "go"}, group="media")
    wait_for(lambda: "start 1" in lines(cluster.tmp / "block.log"), what="the job to start")
    victim.kill()
    cluster.start_worker("media", 1)
    (cluster.tmp / "go").touch()
    result = client.wait(job_id, timeout=30)
    assert result.status == "completed" and result.attempts == 2


def test_job_that_kills_its_worker_each_time_is_dead_lettered_as_worker_lost(cluster: Cluster) -> None:
    cluster.start_worker("default", 1)
    client = cluster.client()
    job_id = client.enqueue("crash-always", {}, group="default")
    for _ in range(2):  # retries=1: two attempts, each kills the worker
        wait_for(lambda: not cluster.workers[-1].alive(), what="the worker to die")
        cluster.start_worker("default", 1)
    result = client.wait(job_id, timeout=30)
    assert result.status == "dead" and result.error_kind == "worker_lost"
    assert len(lines(cluster.tmp / "crash.log")) == 2


def test_crash_once_then_redelivered_and_completed(cluster: Cluster) -> None:
    cluster.start_worker("default", 1)
    client = cluster.client()
    job_id = client.enqueue("crash-once", {}, group="default")
    wait_for(lambda: not cluster.workers[-1].alive(), what="the worker to die")
    cluster.start_worker("default", 1)
    result = client.wait(job_id, timeout=30)
    assert result.status == "completed" and result.value == "survived" and result.attempts == 2


PRODUCER = textwrap.dedent("""
    import sys
    from shoal import Client
    client = Client(sys.argv[1], timeout=60)
    with open(sys.argv[2], "a") as acked:
        for n in range(int(sys.argv[3])):
            job_id = client.enqueue("record", {"n": n}, group="default")
            acked.write(job_id + "\\n")
            acked.flush()
    print("producer done", flush=True)
""")


def test_broker_sigkill_during_a_burst_loses_and_duplicates_nothing(cluster: Cluster) -> None:
    import uuid

    cluster.start_worker("default", 8)
    acked_path = cluster.tmp / "acked.txt"
    producer = subprocess.Popen([sys.executable, "-c", PRODUCER, cluster.endpoint, str(acked_path), "600"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=cluster.env)
    wait_for(lambda: len(lines(acked_path)) >= 100, what="100 acknowledged enqueues")
    cluster.broker.kill()
    cluster.start_broker()
    out, _ = producer.communicate(timeout=90)
    assert producer.returncode == 0, out
    acked = lines(acked_path)
    assert len(acked) == 600 and len(set(acked)) == 600
    client = cluster.client()
    for job_id in acked:
        assert client.wait(job_id, timeout=60).status == "completed"
    ran = {uuid.UUID(hex=h) for h in lines(cluster.tmp / "record.log")}
    assert {uuid.UUID(j) for j in acked} <= ran
    assert sum(s["completed"] for s in client.stats().values()) == 600  # none created twice


def test_broker_restart_resumes_scheduled_and_pending_jobs(cluster: Cluster) -> None:
    client = cluster.client()
    later = client.enqueue("echo", {"when": "later"}, group="email", delay=1.0)
    now = client.enqueue("echo", {"when": "now"}, group="email")
    cluster.broker.kill()
    cluster.start_broker()
    cluster.start_worker("email", 2)
    assert client.wait(now, timeout=20).status == "completed"
    assert client.wait(later, timeout=20).status == "completed"


def test_sigterm_drains_in_flight_jobs_then_exits_zero(cluster: Cluster) -> None:
    worker = cluster.start_worker("media", 2)
    client = cluster.client()
    ids = client.enqueue_many("slow", [{"i": i, "s": 0.5} for i in range(2)], group="media")
    wait_for(lambda: len(lines(cluster.tmp / "slow.log")) >= 2, what="both jobs to start")
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    for job_id in ids:
        result = client.wait(job_id, timeout=5)
        assert result.status == "completed" and result.attempts == 1


def test_second_signal_exits_at_once_and_jobs_are_redelivered(cluster: Cluster) -> None:
    worker = cluster.start_worker("media", 2)
    client = cluster.client()
    job_id = client.enqueue("block", {"i": 7, "release": "go"}, group="media")
    wait_for(lambda: "start 7" in lines(cluster.tmp / "block.log"), what="the job to start")
    worker.signal(signal.SIGINT)
    wait_for(lambda: "draining" in worker.output(), what="the worker to start draining")
    worker.signal(signal.SIGINT)
    assert worker.wait(10) != 0
    (cluster.tmp / "go").touch()
    cluster.start_worker("media", 2)
    result = client.wait(job_id, timeout=30)
    assert result.status == "completed"


def test_grace_time_over_hands_unfinished_jobs_back_at_once(cluster_factory) -> None:
    from conftest import DEFAULT_TOML

    cluster = cluster_factory(DEFAULT_TOML.replace('grace = "5s"', 'grace = "0.3s"').replace('lease = "3s"', 'lease = "30s"'))
    cluster.start_broker()
    worker = cluster.start_worker("media", 1)
    client = cluster.client()
    job_id = client.enqueue("block", {"i": 3, "release": "go"}, group="media")
    wait_for(lambda: "start 3" in lines(cluster.tmp / "block.log"), what="the job to start")
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert client.get(job_id).status == "pending"  # back at once, not after the 30 s lease
    (cluster.tmp / "go").touch()
    cluster.start_worker("media", 1)
    assert client.wait(job_id, timeout=20).status == "completed"


def test_frozen_worker_loses_its_lease_and_its_late_result_is_rejected(cluster: Cluster) -> None:
    frozen = cluster.start_worker("media", 1)
    client = cluster.client()
    job_id = client.enqueue("slow", {"i": 1, "s": 0.5}, group="media")
    wait_for(lambda: len(lines(cluster.tmp / "slow.log")) >= 1, what="the job to start")
    frozen.signal(signal.SIGSTOP)  # frozen mid-job: no heartbeats, lease (3 s) expires
    wait_for(lambda: "went silent" in cluster.broker_output(), what="the lease to expire")
    cluster.start_worker("media", 1)
    result = client.wait(job_id, timeout=30)
    assert result.status == "completed" and result.attempts == 2
    frozen.signal(signal.SIGCONT)  # comes back and reports with its stale token
    wait_for(lambda: "stale lease token" in cluster.broker_output(), what="the stale result to be rejected")
    assert client.stats()["media"]["completed"] == 1
    assert client.get(job_id).attempts == 2


def test_embedded_worker_runs_in_a_thread_and_stops_on_request(cluster: Cluster) -> None:
    import shoal

    handle = shoal.run_worker(group="email", app="testapp", endpoint=cluster.endpoint, concurrency=2,
                              config=str(cluster.config), background=True)
    try:
        client = cluster.client()
        result = client.wait(client.enqueue("echo", {"embedded": True}, group="email"), timeout=20)
        assert result.status == "completed"
        import os

        assert result.value["pid"] == os.getpid()
    finally:
        assert handle.stop(timeout=5) is True
    assert handle.exit_code == 0


def test_workflow_claimed_by_two_groups_is_refused_at_hello(cluster: Cluster) -> None:
    cluster.start_worker("email", 1, app="testapp")
    rogue = cluster.start_worker("other", 1, app="claimsecho", wait=False)
    assert rogue.wait(20) == 2
    assert "'echo' is claimed by group 'email'" in rogue.output()

"""Durable workflow steps with real processes: memoized runs, sleep, fan-out/fan-in."""
from __future__ import annotations

from conftest import Cluster, lines, wait_for


def _start(cluster: Cluster, concurrency: int = 4):
    return cluster.start_worker("steps", concurrency, app="stepsapp")


def test_finished_steps_are_not_rerun_after_the_worker_is_sigkilled(cluster: Cluster) -> None:
    _start(cluster)
    client = cluster.client()
    job_id = client.enqueue("three-steps", {}, group="steps")
    wait_for(lambda: (cluster.tmp / "killed-once").exists() and not cluster.workers[-1].alive(),
             what="the worker to kill itself after step two")
    _start(cluster)
    result = client.wait(job_id, timeout=30)
    assert result.status == "completed" and result.value == ["one", "two", "three"]
    assert len(lines(cluster.tmp / "effect-one")) == 1
    assert len(lines(cluster.tmp / "effect-two")) == 1
    assert len(lines(cluster.tmp / "effect-three")) == 1
    steps = {s.name: s for s in client.steps(job_id)}
    assert [steps[n].status for n in ("one", "two", "three")] == ["done"] * 3
    assert steps["two"].value == "two"


def test_a_repeated_step_name_fails_naming_it(cluster: Cluster) -> None:
    _start(cluster)
    client = cluster.client()
    result = client.wait(client.enqueue("duplicate-step", {}, group="steps"), timeout=20)
    assert result.status == "dead" and result.attempts == 1
    assert "'same' is used twice" in result.error


def test_a_step_result_msgpack_cannot_encode_is_a_clear_error(cluster: Cluster) -> None:
    _start(cluster)
    client = cluster.client()
    result = client.wait(client.enqueue("unencodable-step", {}, group="steps"), timeout=20)
    assert result.status == "dead"
    assert "step 'bad'" in result.error and "cannot be encoded" in result.error


def test_step_level_retries_run_inside_one_attempt(cluster: Cluster) -> None:
    _start(cluster)
    client = cluster.client()
    job_id = client.enqueue("step-retries", {}, group="steps")
    result = client.wait(job_id, timeout=20)
    assert result.status == "completed" and result.value == "fine" and result.attempts == 1
    assert client.steps(job_id)[0].attempts == 3


def test_durable_sleep_gives_the_slot_back(cluster: Cluster) -> None:
    _start(cluster, concurrency=1)
    client = cluster.client()
    sleeper = client.enqueue("sleeper", {"s": 2.0}, group="steps")
    wait_for(lambda: lines(cluster.tmp / "effect-before-sleep"), what="the sleeper to reach its nap")
    quick = client.wait(client.enqueue("quick", {}, group="steps"), timeout=10)
    assert quick.status == "completed"
    assert client.get(sleeper).status == "scheduled"  # asleep, holding no slot
    result = client.wait(sleeper, timeout=30)
    assert result.status == "completed" and result.value == "rested"
    assert quick.value * 1000 < result.finished_ms
    assert len(lines(cluster.tmp / "effect-before-sleep")) == 1


def test_fan_out_of_100_children_across_two_groups_and_fan_in(cluster: Cluster) -> None:
    _start(cluster)
    cluster.start_worker("email", 8)
    cluster.start_worker("media", 8)
    client = cluster.client()
    result = client.wait(client.enqueue("fan-out", {"n": 100}, group="steps"), timeout=60)
    assert result.status == "completed", result.error
    assert result.value == sum(range(100))
    stats = client.stats()
    assert stats["email"]["completed"] == 50 and stats["media"]["completed"] == 50


def test_async_workflow_steps(cluster: Cluster) -> None:
    _start(cluster)
    client = cluster.client()
    job_id = client.enqueue("async-steps", {}, group="steps")
    result = client.wait(job_id, timeout=20)
    assert result.status == "completed" and result.value == ["async-a", 42]
    assert len(lines(cluster.tmp / "effect-async-a")) == 1  # the sleep re-ran the handler, not the step
    assert [s.name for s in client.steps(job_id)] == ["a", "b", "short"]


def test_step_result_survives_a_broker_sigkill_between_steps(cluster: Cluster) -> None:
    _start(cluster)
    client = cluster.client()
    job_id = client.enqueue("between-steps", {}, group="steps")
    wait_for(lambda: lines(cluster.tmp / "effect-first"), what="step one")
    cluster.broker.kill()
    cluster.start_broker()
    (cluster.tmp / "go-on").touch()
    result = client.wait(job_id, timeout=40)
    assert result.status == "completed" and result.value == "both"
    assert len(lines(cluster.tmp / "effect-first")) == 1
    assert len(lines(cluster.tmp / "effect-second")) == 1


def test_shoal_job_shows_each_step(cluster: Cluster) -> None:
    import subprocess
    import sys

    _start(cluster)
    client = cluster.client()
    job_id = client.enqueue("step-retries", {}, group="steps")
    assert client.wait(job_id, timeout=20).status == "completed"
    out = subprocess.run([sys.executable, "-m", "shoal.cli", "job", job_id, "--broker", cluster.endpoint],
                         capture_output=True, text=True, timeout=30, env=cluster.env)
    assert out.returncode == 0, out.stderr
    assert "steps:" in out.stdout
    row = next(line for line in out.stdout.splitlines() if line.startswith("flaky"))
    assert row.split()[:3] == ["flaky", "done", "3"] and '"fine"' in row

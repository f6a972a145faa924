"""shoal.testing: the real broker core in process, on virtual time, running real handlers.

Each test is a small app of @workflow functions and one behaviour a user relies on; the
rules (backoff, dedup, priority, rate limits, leases, fan-in, cron) are the broker's own.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shoal import ConfigError, GroupSaturated, Permanent, UnknownJob, WaitTimeout, workflow
from shoal.conf.settings import GroupSettings, Settings
from shoal.ids import id_to_str, new_job_id
from shoal.testing import Simulation
from shoal.worker.steps import StepTimeout


class Calls:
    """How often each thing ran (handlers keep their counts here)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.order: list[Any] = []

    def hit(self, name: str) -> int:
        self.counts[name] = self.counts.get(name, 0) + 1
        return self.counts[name]


def test_a_failing_job_is_retried_with_backoff_and_then_completes() -> None:
    calls = Calls()

    @workflow("send-email", worker="email")
    def send_email(payload: dict[str, str]) -> str:
        if calls.hit("send") < 3:
            raise ConnectionError("smtp down")
        return "sent to " + payload["to"]

    with Simulation(send_email) as sim:
        job_id = sim.client.enqueue("send-email", {"to": "a@b.c"})
        sim.run_until_idle()
        assert calls.counts["send"] == 1  # the retry waits for its backoff: time has not moved
        assert sim.client.get(job_id).status == "scheduled"  # type: ignore[union-attr]
        started = sim.now
        result = sim.client.wait(job_id, timeout=600)
        assert result.status == "completed" and result.attempts == 3
        assert result.value == "sent to a@b.c"
        assert sim.now - started >= 0.5 + 1.0  # two backoffs (1 s, 2 s, each with jitter down to half)


def test_a_seeded_simulation_repeats_its_retry_times_exactly() -> None:
    @workflow("flaky", worker="email")
    def flaky(payload: None) -> None:
        raise ConnectionError("down")

    def retry_times(seed: int) -> list[int]:
        with Simulation(flaky, seed=seed, start=0) as sim:
            job_id = sim.client.enqueue("flaky", None)
            sim.advance(120)
            assert sim.client.get(job_id).status == "dead"  # type: ignore[union-attr]
            return [e["ts_ms"] for e in sim.events if e["event"] == "started"]

    assert retry_times(7) == retry_times(7)  # same seed, same jitter: the run repeats
    assert retry_times(7) != retry_times(8)


def test_wait_raises_wait_timeout_when_the_job_is_not_final_in_virtual_time() -> None:
    @workflow("never")
    def never(payload: None) -> None:
        raise ConnectionError("down")

    settings = Settings(defaults=GroupSettings(retries=10, backoff_s=60.0))
    with Simulation(never, config=settings) as sim:
        job_id = sim.client.enqueue("never")
        with pytest.raises(WaitTimeout):
            sim.client.wait(job_id, timeout=30)
        assert sim.client.get(job_id).status == "scheduled"  # type: ignore[union-attr]


def test_a_dedup_key_returns_the_job_that_holds_it() -> None:
    @workflow("reset")
    def reset(payload: dict[str, int]) -> int:
        return payload["user"]

    with Simulation(reset) as sim:
        first = sim.client.enqueue("reset", {"user": 42}, key="reset:42", delay=60)
        second = sim.client.enqueue("reset", {"user": 42}, key="reset:42")
        assert second == first and second.deduplicated
        sim.advance(61)
        assert sim.client.get(first).status == "completed"  # type: ignore[union-attr]
        third = sim.client.enqueue("reset", {"user": 42}, key="reset:42")
        assert third != first and not third.deduplicated


def test_run_enqueues_and_waits_in_virtual_time_and_a_held_key_waits_for_its_holder() -> None:
    @workflow("reset")
    def reset(payload: dict[str, int]) -> int:
        return payload["user"]

    with Simulation(reset) as sim:
        assert sim.client.run("reset", {"user": 7}).value == 7
        first = sim.client.enqueue("reset", {"user": 42}, key="reset:42", delay=60)
        with pytest.raises(WaitTimeout) as late:
            sim.client.run("reset", {"user": 43}, key="reset:42", timeout=30)
        assert late.value.job_id == first
        result = sim.client.run("reset", {"user": 43}, key="reset:42", timeout=60)
        assert (result.id, result.value) == (first, 42)


def test_higher_priority_jobs_run_first() -> None:
    calls = Calls()

    @workflow("work")
    def work(payload: str) -> None:
        calls.order.append(payload)

    with Simulation(work, concurrency=1) as sim:
        sim.client.enqueue("work", "first")  # takes the only slot at once
        for name, priority in [("low", 0), ("high", 9), ("middle", 5)]:
            sim.client.enqueue("work", name, priority=priority)
        sim.run_until_idle()
        assert calls.order == ["first", "high", "middle", "low"]


def test_a_rate_limited_group_lets_jobs_out_at_its_rate() -> None:
    calls = Calls()

    @workflow("ping", worker="api")
    def ping(payload: int) -> None:
        calls.order.append(payload)

    settings = Settings(groups={"api": GroupSettings(name="api", rate_per_s=1.0)})
    with Simulation(ping, config=settings) as sim:
        sim.client.enqueue_many("ping", [1, 2, 3, 4])
        sim.run_until_idle()
        assert calls.order == [1]
        sim.advance(1.0)
        assert calls.order == [1, 2]
        sim.advance(2.0)
        assert calls.order == [1, 2, 3, 4]


def test_a_durable_sleep_resumes_after_advance_without_rerunning_finished_steps() -> None:
    calls = Calls()

    @workflow("onboard")
    def onboard(payload: None, step: Any) -> str:
        calls.hit("handler")
        step.run("welcome", lambda: calls.hit("welcome"))
        step.sleep("wait-a-day", 86400)
        step.run("follow-up", lambda: calls.hit("follow-up"))
        return "done"

    with Simulation(onboard) as sim:
        job_id = sim.client.enqueue("onboard")
        sim.run_until_idle()
        assert calls.counts == {"handler": 1, "welcome": 1}
        sim.advance(86400 - 1)
        assert sim.client.get(job_id).status == "scheduled"  # type: ignore[union-attr]
        sim.advance(1)
        assert sim.client.get(job_id).status == "completed"  # type: ignore[union-attr]
        assert calls.counts == {"handler": 2, "welcome": 1, "follow-up": 1}
        assert {s.name for s in sim.client.steps(job_id)} == {"welcome", "wait-a-day", "follow-up"}


def test_fan_out_and_fan_in_with_enqueue_many_and_wait() -> None:
    @workflow("square")
    def square(payload: int) -> int:
        return payload * payload

    @workflow("sum-of-squares")
    def sum_of_squares(payload: list[int], step: Any) -> int:
        ids = step.enqueue_many("children", square, payload)
        return sum(step.wait("all-done", ids))

    with Simulation(square, sum_of_squares) as sim:
        job_id = sim.client.enqueue("sum-of-squares", [1, 2, 3])
        sim.run_until_idle()  # the children run and the parent resumes, all without time moving
        result = sim.client.get(job_id)
        assert result is not None and result.status == "completed" and result.value == 14


def test_a_step_wait_times_out_in_virtual_time() -> None:
    @workflow("parent")
    def parent(payload: None, step: Any) -> str:
        child = step.enqueue("child", "not-deployed")  # no worker has it: it never finishes
        try:
            step.wait("child-done", child, timeout=60)
        except StepTimeout:
            return "gave up"
        return "finished"

    with Simulation(parent) as sim:
        job_id = sim.client.enqueue("parent")
        sim.advance(59)
        assert sim.client.get(job_id).status == "scheduled"  # type: ignore[union-attr]
        result = sim.client.wait(job_id, timeout=2)
        assert result.status == "completed" and result.value == "gave up"


def test_cancel_of_a_pending_job_means_it_never_runs() -> None:
    calls = Calls()

    @workflow("later")
    def later(payload: None) -> None:
        calls.hit("later")

    with Simulation(later) as sim:
        job_id = sim.client.enqueue("later", delay=60)
        assert sim.client.cancel(job_id).cancelled
        sim.advance(120)
        assert sim.client.get(job_id).status == "cancelled"  # type: ignore[union-attr]
        assert calls.counts == {}


def test_cancel_of_a_job_already_handed_to_a_worker_stops_it_at_its_first_step() -> None:
    calls = Calls()

    @workflow("long")
    def long(payload: None, step: Any) -> None:
        calls.hit("handler")
        step.run("work", lambda: calls.hit("work"))

    with Simulation(long) as sim:
        job_id = sim.client.enqueue("long")
        assert sim.client.get(job_id).status == "running"  # type: ignore[union-attr]  # leased, not started
        answer = sim.client.cancel(job_id)
        assert answer.state == "running" and "told to stop" in answer.message
        sim.run_until_idle()
        assert sim.client.get(job_id).status == "cancelled"  # type: ignore[union-attr]
        assert calls.counts == {"handler": 1}


def test_a_killed_worker_costs_an_attempt_and_the_job_completes_on_the_next_worker() -> None:
    calls = Calls()

    @workflow("resize", worker="media")
    def resize(payload: None) -> str:
        calls.hit("resize")
        return "ok"

    with Simulation(resize) as sim:
        sim.kill_worker("media")
        job_id = sim.client.enqueue("resize")
        result = sim.client.wait(job_id, timeout=60)
        assert result.status == "completed" and result.attempts == 2
        assert calls.counts == {"resize": 1}  # the first worker died as it started the job
        assert [(e["event"], e["attempt"]) for e in sim.events] == [
            ("queued", 0), ("started", 1), ("started", 2), ("completed", 2)]
        assert len({e["worker"] for e in sim.events if e["event"] == "started"}) == 2


def test_a_worker_killed_from_inside_its_handler_keeps_the_steps_it_finished() -> None:
    calls = Calls()
    sims: list[Simulation] = []

    @workflow("import", worker="etl")
    def import_rows(payload: None, step: Any) -> str:
        step.run("download", lambda: calls.hit("download"))
        if calls.hit("handler") == 1:
            sims[0].kill_worker("etl")
        step.run("load", lambda: calls.hit("load"))
        return "imported"

    with Simulation(import_rows) as sim:
        sims.append(sim)
        job_id = sim.client.enqueue("import")
        result = sim.client.wait(job_id, timeout=60)
        assert result.status == "completed" and result.attempts == 2
        # it died on its next word to the broker: "load" ran but was never stored, so it ran again;
        # "download", stored before the kill, was answered from storage
        assert calls.counts == {"download": 1, "handler": 2, "load": 2}


def test_a_silent_worker_loses_its_lease_only_after_the_groups_lease_time() -> None:
    @workflow("resize", worker="media")
    def resize(payload: None) -> str:
        return "ok"

    settings = Settings(groups={"media": GroupSettings(name="media", lease_s=30.0)})
    with Simulation(resize, config=settings) as sim:
        sim.kill_worker("media", silent=True)
        job_id = sim.client.enqueue("resize")
        sim.run_until_idle()
        sim.advance(29)
        assert sim.client.get(job_id).status == "running"  # type: ignore[union-attr]
        result = sim.client.wait(job_id, timeout=5)
        assert result.status == "completed" and result.attempts == 2


def test_a_cron_entry_fires_when_time_is_advanced_past_its_tick(tmp_path: Path) -> None:
    calls = Calls()

    @workflow("report")
    def report(payload: dict[str, str]) -> None:
        calls.order.append(payload["kind"])

    config = tmp_path / "shoal.toml"
    config.write_text('[cron.nightly]\nworkflow = "report"\nschedule = "0 3 * * *"\npayload = { kind = "daily" }\n')
    with Simulation(report, config=str(config)) as sim:  # starts at 2025-01-01T00:00:00Z
        sim.advance(3 * 3600 - 1)
        assert calls.order == []
        sim.advance(1)
        assert calls.order == ["daily"]
        sim.advance(24 * 3600)
        assert calls.order == ["daily", "daily"]


def test_async_handlers_run_with_awaited_steps() -> None:
    @workflow("fetch")
    async def fetch(payload: str, step: Any) -> str:
        body = await step.run("get", lambda: payload.upper())
        await step.sleep("cool-down", 5)
        return body + "!"

    with Simulation(fetch) as sim:
        job_id = sim.client.enqueue("fetch", "hi")
        result = sim.client.wait(job_id, timeout=10)
        assert result.status == "completed" and result.value == "HI!"


def test_a_permanent_failure_is_dead_lettered_and_a_requeue_completes_it() -> None:
    broken = {"yes": True}

    @workflow("charge", worker="billing")
    def charge(payload: None) -> str:
        if broken["yes"]:
            raise Permanent("card declined")
        return "charged"

    with Simulation(charge) as sim:
        job_id = sim.client.enqueue("charge")
        result = sim.client.wait(job_id)
        assert result.status == "dead" and result.attempts == 1
        [dead] = sim.client.dead_letters(group="billing")
        assert dead.id == job_id and "card declined" in (dead.error or "")
        broken["yes"] = False
        assert sim.client.requeue(job_id)
        result = sim.client.wait(job_id)
        assert result.status == "completed" and result.value == "charged"
        assert sim.client.dead_letters() == []


def test_events_are_kept_in_the_order_they_happened() -> None:
    calls = Calls()

    @workflow("flaky")
    def flaky(payload: None) -> str:
        if calls.hit("flaky") == 1:
            raise ValueError("first try fails")
        return "ok"

    with Simulation(flaky) as sim:
        job_id = sim.client.enqueue("flaky")
        sim.client.wait(job_id, timeout=60)
        events = [(e["event"], e["attempt"]) for e in sim.events if e["id"] == job_id]
        assert events == [("queued", 0), ("started", 1), ("failed", 1), ("retrying", 1), ("started", 2),
                          ("completed", 2)]
        times = [e["ts_ms"] for e in sim.events]
        assert times == sorted(times)
        assert list(sim.client.events(workflow="flaky")) == sim.events


def test_a_simulation_reads_its_groups_settings_from_a_config_file(tmp_path: Path) -> None:
    @workflow("tick", worker="media")
    def tick(payload: None) -> None:
        raise ConnectionError("down")

    config = tmp_path / "shoal.toml"
    config.write_text('[workflows.media]\nretries = 1\nconcurrency = 2\n')
    with Simulation(tick, config=config) as sim:
        result = sim.client.wait(sim.client.enqueue("tick"), timeout=60)
        assert result.status == "dead" and result.attempts == 2
        assert sim.client.stats()["media"]["free_slots"] == 2


def test_virtual_time_starts_where_asked_and_advance_never_goes_back() -> None:
    @workflow("noop")
    def noop(payload: None) -> None:
        return None

    with Simulation(noop, start=1_800_000_000) as sim:
        assert sim.now == 1_800_000_000
        sim.advance(2.5)
        assert sim.now == 1_800_000_002.5
        with pytest.raises(ValueError):
            sim.advance(-1)
        assert sim.now == 1_800_000_002.5


def test_the_client_raises_the_errors_a_real_broker_causes() -> None:
    @workflow("work")
    def work(payload: int) -> int:
        return payload

    settings = Settings(defaults=GroupSettings(max_pending=1))
    with Simulation(work, config=settings, concurrency=1) as sim:
        sim.client.enqueue("work", 1)  # running
        sim.client.enqueue("work", 2)  # pending: the group is at its max_pending
        with pytest.raises(GroupSaturated):
            sim.client.enqueue("work", 3)
        with pytest.raises(UnknownJob):
            sim.client.cancel(id_to_str(new_job_id()))
        sim.run_until_idle()
        assert sim.client.stats()["default"]["completed"] == 2


def test_a_job_no_worker_can_take_waits_unrouted_while_time_moves() -> None:
    @workflow("work")
    def work(payload: None) -> None:
        return None

    with Simulation(work) as sim:
        job_id = sim.client.enqueue("not-deployed-yet")
        sim.advance(7 * 24 * 3600)
        assert sim.client.get(job_id).status == "pending"  # type: ignore[union-attr]
        assert sim.client.stats().unrouted == {"not-deployed-yet": 1}


def test_the_example_test_suite_passes() -> None:
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "examples/test_myapp.py"],
                         cwd=root, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "5 passed" in run.stdout


def test_a_simulation_without_workflows_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="no @workflow"):
        Simulation(pytest)
    with pytest.raises(TypeError, match="modules, module names or @workflow"):
        Simulation(42)  # type: ignore[arg-type]

"""The conformance scenarios. Each takes a ``Harness`` with a running broker and drives the
worker under test through one part of the protocol (docs/protocol.md, "Conformance")."""
from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any, Callable

from .harness import GROUP, Harness, check, sigkill, wait_for

CONF_WORKFLOWS = {"conf-echo", "conf-fail-once", "conf-permanent", "conf-steps", "conf-sleep", "conf-slow", "conf-fanout",
                  "conf-timeout"}


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[Harness], None]
    options: dict[str, Any] = field(default_factory=dict)   # Harness settings (grace_s, lease_s, workflows_extra)


SCENARIOS: list[Scenario] = []


def scenario(**options: Any) -> Callable[[Callable[[Harness], None]], Callable[[Harness], None]]:
    def register(fn: Callable[[Harness], None]) -> Callable[[Harness], None]:
        SCENARIOS.append(Scenario(fn.__name__, fn, options))
        return fn
    return register


def _max_running(marks: list[str]) -> int:
    running = peak = 0
    for line in marks:
        running += 1 if line.startswith("start ") else -1 if line.startswith("end ") else 0
        peak = max(peak, running)
    return peak


def _shape(value: Any) -> Any:
    """``value`` with every leaf replaced by its type: 2**40 and 2.0**40 are equal, their shapes are not."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


@scenario()
def hello_and_credit(h: Harness) -> None:
    """HELLO names the group, slots and every workflow; the broker never sends more jobs than slots."""
    proc = h.start_worker(concurrency=2)
    entry = h.wait_joined(proc)
    check(entry["group"] == GROUP and entry["slots"] == 2, f"HELLO should say group {GROUP!r}, 2 slots: {entry}")
    check(CONF_WORKFLOWS <= set(entry["workflows"]), f"HELLO should list {sorted(CONF_WORKFLOWS)}: {entry['workflows']}")
    ids = [h.client.enqueue("conf-slow", h.payload(seconds=0.6, tag=f"j{i}")) for i in range(6)]
    results = [h.client.wait(i, timeout=60) for i in ids]
    check(all(r.status == "completed" for r in results), f"all six should complete: {results}")
    peak = _max_running(h.marked())
    check(peak == 2, f"with 2 slots, 2 jobs (never more) should run at once; at most {peak} did: {h.marked()}")


@scenario()
def job_and_result(h: Harness) -> None:
    """A job's payload arrives decoded and its result lands as the handler returned it."""
    h.start_worker()
    payload = {"s": "héllo ✓", "n": 2 ** 40, "neg": -5, "f": 1.5, "b": b"\x00\xffraw", "l": [1, None, True, False],
               "m": {"k": "v"}, "empty": {}}
    result = h.client.wait(h.client.enqueue("conf-echo", payload), timeout=30)
    check(result.status == "completed", f"conf-echo should complete: {result}")
    check(result.value["echo"] == payload and _shape(result.value["echo"]) == _shape(payload),
          f"the echo should equal the payload, types too (an int stays an int): {result.value!r}")
    check(isinstance(result.value.get("impl"), str), f"conf-echo names its implementation: {result.value!r}")
    check(result.attempts == 1, f"one attempt: {result}")


@scenario()
def failure_is_retried(h: Harness) -> None:
    """A handler that throws fails the attempt (FAIL kind error); the retry completes."""
    h.start_worker()
    result = h.client.wait(h.client.enqueue("conf-fail-once", {}), timeout=30)
    check(result.status == "completed" and result.attempts == 2, f"the second attempt should complete: {result}")
    check(result.value == {"attempt": 2}, f"the handler sees attempt 2: {result.value!r}")


@scenario()
def permanent_failure_is_dead(h: Harness) -> None:
    """Permanent skips the retries: the job is dead after one attempt, with kind "permanent"."""
    h.start_worker()
    result = h.client.wait(h.client.enqueue("conf-permanent", {}), timeout=30)
    check(result.status == "dead" and result.attempts == 1, f"dead after one attempt: {result}")
    check(result.error_kind == "permanent" and "permanently broken" in (result.error or ""),
          f"kind permanent with the handler's message: {result.error_kind} {result.error!r}")


@scenario()
def step_answered_on_redelivery(h: Harness) -> None:
    """A step's result is stored (STEP) before the handler goes on; the worker is killed after
    it, and the next attempt gets the stored value without running the step body again."""
    first = h.start_worker()
    job = h.client.enqueue("conf-steps", h.payload(hang=True))
    h.wait_mark("after-first 1")
    sigkill(first)
    h.start_worker()
    result = h.client.wait(job, timeout=60)
    check(result.status == "completed", f"the redelivered run should complete: {result}\n{h.logs()}")
    check(result.value == {"first": "A", "second": "B", "attempt": 2}, f"steps answered from storage: {result.value!r}")
    check(h.marked().count("first-ran") == 1, f"the step body must run once: {h.marked()}")
    check("after-first 2" in h.marked(), f"the second attempt ran past the stored step: {h.marked()}")
    steps = {s.name: s for s in h.client.steps(job)}
    check({"first", "second"} <= set(steps), f"both steps stored: {list(steps)}")


@scenario()
def sleep_suspends_and_resumes(h: Harness) -> None:
    """step.sleep gives the slot back (SUSPEND with due_ms); the run resumes after the wake time."""
    h.start_worker(concurrency=1)
    job = h.client.enqueue("conf-sleep", h.payload(seconds=1))
    result = h.client.wait(job, timeout=30)
    check(result.status == "completed", f"conf-sleep should complete: {result}")
    check(h.marked().count("run") == 2, f"the handler runs twice (before and after the sleep): {h.marked()}")
    naps = [s for s in h.client.steps(job) if s.name == "nap" and "wake_ms" in (s.value or {})]
    check(len(naps) == 1, f"the sleep is stored as a step: {h.client.steps(job)}")
    check(result.value["woke_ms"] >= naps[0].value["wake_ms"], f"resumed after its wake time: {result.value} {naps}")
    check(result.attempts == 1, f"a sleep is not a failed attempt: {result}")


@scenario()
def children_enqueued_and_waited_for(h: Harness) -> None:
    """step.enqueue_many creates children in the STEP's transaction; step.wait suspends (SUSPEND
    with wait_on) and the run resumes with their values once every child is final."""
    h.start_worker(concurrency=1)  # the parent must give its slot back for the children to run
    job = h.client.enqueue("conf-fanout", {"n": 3})
    result = h.client.wait(job, timeout=30)
    check(result.status == "completed" and result.value == {"children": [0, 1, 2]}, f"children's values: {result}")
    check(result.attempts == 1, f"waiting is not a failed attempt: {result}")
    names = {s.name for s in h.client.steps(job)}
    check({"children", "all-done"} <= names, f"both steps stored: {names}")


@scenario()
def timeout_fails_the_run(h: Harness) -> None:
    """A run past its workflow's own timeout is stopped (the handler sees it), fails with kind
    "timeout", and its slot is free again."""
    h.start_worker(concurrency=1)
    result = h.client.wait(h.client.enqueue("conf-timeout", h.payload(seconds=60)), timeout=30)
    check(result.status == "dead" and result.attempts == 1, f"no retries left: dead after one attempt: {result}")
    check(result.error_kind == "timeout", f"kind timeout: {result.error_kind} {result.error!r}")
    wait_for(lambda: "stopped" in h.marked(), 10, "the handler to be told to stop")
    check("end" not in h.marked(), f"the run did not go on past its timeout: {h.marked()}")
    after = h.client.wait(h.client.enqueue("conf-echo", {"x": 1}), timeout=30)
    check(after.status == "completed", f"the slot is free again: {after}")


@scenario(workflows_extra='[workflows.conf]\ntimeout = "1s"\nretries = 0')
def group_timeout_from_config(h: Harness) -> None:
    """The group's `timeout` in shoal.toml applies to a workflow that sets none."""
    h.start_worker(concurrency=1)
    result = h.client.wait(h.client.enqueue("conf-slow", h.payload(seconds=60, tag="t")), timeout=30)
    check(result.status == "dead" and result.error_kind == "timeout", f"kind timeout from the group's setting: {result}")
    check("end t" not in h.marked(), f"the run did not go on past its timeout: {h.marked()}")


@scenario()
def cancel_stops_a_running_job(h: Harness) -> None:
    """CANCEL reaches the worker; the run stops, the job is cancelled and the slot is free again."""
    h.start_worker(concurrency=1)
    job = h.client.enqueue("conf-slow", h.payload(seconds=120, tag="c"))
    h.wait_mark("start c")
    answer = h.client.cancel(job)
    check(answer.cancelled, f"a running job can be cancelled: {answer}")
    result = h.client.wait(job, timeout=30)
    check(result.status == "cancelled", f"the job ends cancelled: {result}")
    after = h.client.wait(h.client.enqueue("conf-echo", {"x": 1}), timeout=30)
    check(after.status == "completed", f"the slot is free again: {after}")


@scenario()
def broker_restart(h: Harness) -> None:
    """The broker dies mid-job: the worker re-announces (HELLO with `running`) to the restarted
    broker, and the result it produced meanwhile is re-sent and lands, the job run once."""
    proc = h.start_worker()
    job = h.client.enqueue("conf-slow", h.payload(seconds=1.5, tag="r"))
    h.wait_mark("start r")
    sigkill(h.broker)  # type: ignore[arg-type]
    h.wait_mark("end r")  # finished while no broker was there to hear it
    h.start_broker()
    client = h.restart_client()
    h.wait_joined(proc)
    result = client.wait(job, timeout=60)
    check(result.status == "completed" and result.value == {"tag": "r"}, f"the result lands: {result}\n{h.logs()}")
    check(h.marked().count("start r") == 1 and result.attempts == 1, f"run once: {h.marked()} {result}")
    check(proc.alive(), "the same worker process served on")


@scenario()
def deferred_result_is_kept_and_lands(h: Harness) -> None:
    """A broker that cannot store results answers DONE with DEFER: the job stays running and the
    worker keeps the result; once a broker has room, the kept result lands (attempt 1, run once).
    The shortage is a restart with a `min_free_disk` no disk has; the room, a restart without it."""
    proc = h.start_worker()
    job = h.client.enqueue("conf-slow", h.payload(seconds=2, tag="d"))
    h.wait_mark("start d")
    h.write_config('min_free_disk = "100000000GiB"')
    sigkill(h.broker)  # type: ignore[arg-type]
    h.start_broker()
    client = h.restart_client()
    h.wait_mark("end d")
    wait_for(lambda: "not stored yet" in h.broker.output(), 20, "the broker to defer the result")  # type: ignore[union-attr]
    held = client.get(job)
    check(held is not None and held.status == "running", f"a deferred job stays running: {held}")
    h.write_config()
    sigkill(h.broker)  # type: ignore[arg-type]
    h.start_broker()
    client = h.restart_client()
    result = client.wait(job, timeout=60)
    check(result.status == "completed" and result.value == {"tag": "d"} and result.attempts == 1,
          f"the kept result lands, the job run once: {result}")
    check(h.marked().count("start d") == 1 and proc.alive(), f"one run, the same worker: {h.marked()}")


@scenario()
def sigterm_drains_and_hands_back(h: Harness) -> None:
    """SIGTERM: READY 0 (no new jobs), the short job finishes, the long one is handed back
    (RETURN, no attempt charged) when the grace time is over, BYE, exit 0."""
    proc = h.start_worker(concurrency=2)
    short = h.client.enqueue("conf-slow", h.payload(seconds=1, tag="short"))
    long = h.client.enqueue("conf-slow", h.payload(seconds=120, tag="long"))
    h.wait_mark("start short")
    h.wait_mark("start long")
    proc.signal(signal.SIGTERM)
    late = h.client.enqueue("conf-echo", {"late": True})
    code = proc.popen.wait(30)
    check(code == 0, f"a drained worker exits 0, got {code}:\n{proc.output()[-2000:]}")
    done = h.client.get(short)
    check(done is not None and done.status == "completed", f"the short job finished during the drain: {done}")
    back = h.client.get(long)
    check(back is not None and back.status == "pending" and back.attempts == 0,
          f"the long job was handed back, no attempt charged: {back}")
    held = h.client.get(late)
    check(held is not None and held.status == "pending", f"no job starts on a draining worker: {held}")
    # BYE is seen only in the broker's log: without it the broker drops the worker anyway, when a
    # heartbeat to the closed connection fails
    wait_for(lambda: "said goodbye" in h.broker.output(), 10, "the broker to log the worker's BYE")  # type: ignore[union-attr]


@scenario(workflows_extra="[workflows.conf]\nmax_jobs = 3")
def max_jobs_recycles(h: Harness) -> None:
    """After `max_jobs` outcomes the worker drains and exits 0 (for a supervisor to start a fresh
    process); the jobs it did not take wait for the next worker, none lost."""
    proc = h.start_worker(concurrency=1)
    # 5 jobs: the first worker runs 3 (or 4), so the next one stays under its own max_jobs and stays up
    ids = h.client.enqueue_many("conf-echo", [{"i": i} for i in range(5)])
    code = proc.popen.wait(30)
    check(code == 0, f"a recycled worker exits 0, got {code}:\n{proc.output()[-2000:]}")
    done = [r for r in (h.client.get(i) for i in ids) if r is not None and r.status == "completed"]
    # the JOB the broker sent on the third DONE, before READY 0 reached it, is run in the drain
    check(len(done) in (3, 4), f"3 jobs (and at most the one already on the wire) ran: {len(done)}")
    h.start_worker(concurrency=1)
    results = [h.client.wait(i, timeout=30) for i in ids]
    check(all(r.status == "completed" and r.attempts == 1 for r in results), f"the rest ran on the next worker: {results}")


@scenario(grace_s=60.0)
def second_signal_forces_exit(h: Harness) -> None:
    """A second SIGTERM during a drain exits at once; the broker redelivers the job later."""
    proc = h.start_worker(concurrency=1)
    h.client.enqueue("conf-slow", h.payload(seconds=120, tag="f"))
    h.wait_mark("start f")
    proc.signal(signal.SIGTERM)
    wait_for(lambda: "drain" in proc.output().lower(), 10, "the worker to say it drains")
    proc.signal(signal.SIGTERM)
    code = proc.popen.wait(15)  # the grace time is 60 s: only the second signal ends it this soon
    check(code != 0, f"a forced exit is not a clean one (exit code {code})")

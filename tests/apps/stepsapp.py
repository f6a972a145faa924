"""Durable workflows for the step tests (group "steps"). Side effects are counted in files."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from shoal import workflow

HERE = Path(os.environ.get("SHOAL_TEST_DIR", "."))


def effect(name: str) -> str:
    with open(HERE / f"effect-{name}", "a") as fh:
        fh.write(f"{os.getpid()}\n")
    return name


@workflow("three-steps", worker="steps", retries=3)
def three_steps(payload, step):
    a = step.run("one", effect, "one")
    b = step.run("two", effect, "two")
    if not (HERE / "killed-once").exists():
        (HERE / "killed-once").touch()
        os.kill(os.getpid(), signal.SIGKILL)  # dies right after step 2 was stored
    c = step.run("three", effect, "three")
    return [a, b, c]


@workflow("duplicate-step", worker="steps")
def duplicate_step(payload, step):
    step.run("same", lambda: 1)
    step.run("same", lambda: 2)


@workflow("unencodable-step", worker="steps")
def unencodable_step(payload, step):
    step.run("bad", object)


@workflow("step-retries", worker="steps", retries=0)
def step_retries(payload, step):
    def flaky():
        effect("flaky")
        if len((HERE / "effect-flaky").read_text().splitlines()) < 3:
            raise RuntimeError("not yet")
        return "fine"

    return step.run("flaky", flaky, retries=3, backoff=0.01)


@workflow("sleeper", worker="steps")
def sleeper(payload, step):
    step.run("before", effect, "before-sleep")
    step.sleep("nap", payload["s"])
    step.run("after", effect, "after-sleep")
    return "rested"


@workflow("quick", worker="steps")
def quick(payload):
    return time.time()


@workflow("fan-out", worker="steps")
def fan_out(payload, step):
    n = payload["n"]
    emails = step.enqueue_many("emails", "echo", [{"i": i} for i in range(n // 2)], group="email")
    media = step.enqueue_many("media", "media-echo", [{"i": i} for i in range(n // 2, n)], group="media")
    results = step.wait("all", emails + media, timeout=60)
    return sum(r["payload"]["i"] for r in results)


@workflow("between-steps", worker="steps")
def between_steps(payload, step):
    step.run("first", effect, "first")
    deadline = time.monotonic() + 60
    while not (HERE / "go-on").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    step.run("second", effect, "second")
    return "both"


@workflow("async-steps", worker="steps")
async def async_steps(payload, step):
    a = await step.run("a", effect, "async-a")

    async def twice(x):
        return x * 2

    b = await step.run("b", twice, 21)
    await step.sleep("short", 0.2)
    return [a, b]


@workflow("cancellable", worker="steps")
def cancellable(payload, step):
    effect("cancellable-started")
    deadline = time.monotonic() + 30
    while not step.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    if step.cancelled:
        effect("saw-cancel")
    return "stopped"


@workflow("async-cancellable", worker="steps")
async def async_cancellable(payload, step):
    import asyncio

    effect("async-cancellable-started")
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        effect("async-task-cancelled")
        raise

"""The conformance app (docs/protocol.md, "Conformance") for the Python worker.

Side effects go to the file named by the payload's ``marks``, one line each.
"""
from __future__ import annotations

import asyncio
import time

from shoal import Permanent, workflow

GROUP = "conf"


def mark(payload: dict, line: str) -> None:
    """Append one line to the payload's marks file."""
    with open(payload["marks"], "a") as fh:
        fh.write(line + "\n")


@workflow("conf-echo", worker=GROUP)
async def conf_echo(payload):
    return {"echo": payload, "impl": "python"}


@workflow("conf-fail-once", worker=GROUP, retries=2)
async def conf_fail_once(payload, step):
    if step.attempt == 1:
        raise RuntimeError("the first attempt fails")
    return {"attempt": step.attempt}


@workflow("conf-permanent", worker=GROUP, retries=5)
async def conf_permanent(payload):
    raise Permanent("permanently broken")


@workflow("conf-steps", worker=GROUP, retries=3)
async def conf_steps(payload, step):
    def first():
        mark(payload, "first-ran")
        return "A"

    a = await step.run("first", first)
    mark(payload, f"after-first {step.attempt}")
    if payload.get("hang") and step.attempt == 1:
        await asyncio.sleep(600)  # killed here by the suite
    b = await step.run("second", lambda: "B")
    return {"first": a, "second": b, "attempt": step.attempt}


@workflow("conf-sleep", worker=GROUP)
async def conf_sleep(payload, step):
    mark(payload, "run")
    await step.sleep("nap", payload["seconds"])
    return {"woke_ms": time.time_ns() // 1_000_000}


@workflow("conf-slow", worker=GROUP)
async def conf_slow(payload):
    mark(payload, f"start {payload['tag']}")
    await asyncio.sleep(payload["seconds"])
    mark(payload, f"end {payload['tag']}")
    return {"tag": payload["tag"]}


@workflow("conf-fanout", worker=GROUP)
async def conf_fanout(payload, step):
    ids = await step.enqueue_many("children", "conf-echo", [{"i": i} for i in range(payload["n"])])
    values = await step.wait("all-done", ids)
    return {"children": [v["echo"]["i"] for v in values]}


@workflow("conf-timeout", worker=GROUP, retries=0, timeout=1.0)
async def conf_timeout(payload):
    mark(payload, "start")
    try:
        await asyncio.sleep(payload["seconds"])
    except asyncio.CancelledError:  # the timeout stops the run; the handler may clean up
        mark(payload, "stopped")
        raise
    mark(payload, "end")
    return {"slept": payload["seconds"]}

"""Handlers that ignore cancels and timeouts, or honour them (group "stuck"). Marks go to SHOAL_TEST_DIR."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from shoal import workflow

HERE = Path(os.environ.get("SHOAL_TEST_DIR", "."))


def _mark(name: str, line: str) -> None:
    with open(HERE / name, "a") as fh:
        fh.write(line + "\n")


@workflow("sleep-forever", worker="stuck", retries=0)
def sleep_forever(payload, step):
    """Never looks at step.cancelled: only a new process frees its slot."""
    _mark("stuck.log", f"start {os.getpid()}")
    while True:
        time.sleep(3600)


@workflow("sleeps-past-timeout", worker="stuck", retries=1, timeout=1)
def sleeps_past_timeout(payload, step):
    """Sleeps 30 s in one call, far past its one-second timeout."""
    _mark("timeout.log", f"attempt {step.attempt} pid {os.getpid()}")
    time.sleep(30)
    return "too late"


@workflow("polite-loop", worker="stuck", retries=0)
def polite_loop(payload, step):
    """Checks step.cancelled every 20 ms and returns when told (or after payload["s"] seconds)."""
    _mark("polite.log", f"start {os.getpid()}")
    deadline = time.monotonic() + payload.get("s", 60)
    while not step.cancelled and time.monotonic() < deadline:
        time.sleep(0.02)
    _mark("polite.log", f"stopped {os.getpid()}")
    return "stopped"


@workflow("async-past-timeout", worker="stuck", retries=0, timeout=0.5)
async def async_past_timeout(payload, step):
    await asyncio.sleep(30)
    return "too late"


@workflow("stuck-echo", worker="stuck")
def stuck_echo(payload, step):
    return {"payload": payload, "pid": os.getpid()}


@workflow("async-sleeps", worker="stuck", retries=0)
async def async_sleeps(payload, step):
    _mark("async.log", f"start {os.getpid()}")
    await asyncio.sleep(60)
    return "woke"

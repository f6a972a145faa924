"""Workflows the end-to-end tests drive. Side effects go to files under SHOAL_TEST_DIR."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from shoal import Permanent, workflow

HERE = Path(os.environ.get("SHOAL_TEST_DIR", "."))


def _mark(name: str, line: str) -> None:
    with open(HERE / name, "a") as fh:
        fh.write(line + "\n")
        fh.flush()


@workflow("echo", worker="email")
def echo(payload, step):
    return {"payload": payload, "group": step.group, "pid": os.getpid()}


@workflow("media-echo", worker="media")
def media_echo(payload, step):
    return {"payload": payload, "group": step.group, "pid": os.getpid()}


@workflow("noop", worker="default")
def noop(payload):
    return None


@workflow("slow", worker="media")
def slow(payload):
    """Records start and end so a test can count how many ran at once."""
    tag = f"{os.getpid()}-{payload['i']}"
    _mark("slow.log", f"start {tag} {time.monotonic()}")
    time.sleep(payload.get("s", 0.2))
    _mark("slow.log", f"end {tag} {time.monotonic()}")
    return payload["i"]


@workflow("block", worker="media")
def block(payload):
    """Runs until the test creates the release file."""
    _mark("block.log", f"start {payload.get('i')}")
    release = HERE / payload.get("release", "release")
    deadline = time.monotonic() + payload.get("max_s", 60)
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    _mark("block.log", f"end {payload.get('i')}")
    return payload.get("i")


@workflow("flaky", worker="email", retries=3)
def flaky(payload, step):
    """Fails until its attempt number reaches payload['ok_on']."""
    if step.attempt < payload["ok_on"]:
        raise RuntimeError(f"attempt {step.attempt} fails")
    return step.attempt


@workflow("always-fails", worker="email", retries=1)
def always_fails(payload):
    raise RuntimeError("always")


@workflow("permanent", worker="email")
def permanent(payload):
    raise Permanent("this input can never work")


@workflow("toggle", worker="email", retries=0)
def toggle(payload):
    """Fails while the flag file is absent: dead first, fine after requeue."""
    if not (HERE / "toggle-ok").exists():
        raise RuntimeError("not yet")
    return "ok"


@workflow("record", worker="default")
def record(payload, step):
    """Idempotent side effect: the job id is appended once per run."""
    _mark("record.log", step.job_id.hex())
    time.sleep(payload.get("s", 0))
    return payload.get("n")


@workflow("crash-once", worker="default", retries=3)
def crash_once(payload, step):
    """Kills its own worker process on the first attempt."""
    _mark("crash.log", f"attempt {step.attempt} pid {os.getpid()}")
    if step.attempt == 1:
        os._exit(9)
    return "survived"


@workflow("crash-always", worker="default", retries=1)
def crash_always(payload, step):
    _mark("crash.log", f"attempt {step.attempt} pid {os.getpid()}")
    os._exit(9)


@workflow("unencodable", worker="email")
def unencodable(payload):
    return object()


@workflow("async-echo", worker="email")
async def async_echo(payload, step):
    await asyncio.sleep(payload.get("s", 0))
    return {"payload": payload, "async": True}


@workflow("cron-mark", worker="default")
def cron_mark(payload, step):
    """Records which cron entry fired, and the job id (derived from the entry and tick)."""
    _mark("cron.log", f"{payload['entry']} {step.job_id.hex()}")
    return payload["entry"]


@workflow("cron-media", worker="media")
def cron_media(payload, step):
    _mark("cron.log", f"{payload['entry']} {step.job_id.hex()}")
    return os.getpid()


@workflow("sink", worker="email")
def sink(payload):
    """Takes a (large) payload, returns something small."""
    return len(str(payload))


@workflow("rated", worker="email")
def rated(payload):
    return time.time()


@workflow("big-value", worker="email", retries=2)
def big_value(payload):
    """A small payload, a big result: payload['n'] bytes of it."""
    return "v" * payload["n"]

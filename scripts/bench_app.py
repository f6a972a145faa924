"""Workflows that ``scripts/bench.py`` drives; workers load this module with ``--app bench_app``.

Each workflow belongs to one group, as the broker requires: ``noop`` (group ``bench``) for
the core figures, ``email-noop`` (``email``) as the latency-sensitive group of the
head-of-line bench, and ``media-sleep`` / ``media-cpu`` (``media``) to keep the other
group's slots busy.
"""
from __future__ import annotations

import time
from typing import Any

from shoal import workflow


@workflow("noop", worker="bench")
def noop(payload: Any) -> None:
    """Does nothing: the figures measure Shoal, not the handler."""
    return None


@workflow("email-noop", worker="email")
def email_noop(payload: Any) -> None:
    """The latency-sensitive job of the head-of-line bench; does nothing."""
    return None


@workflow("media-sleep", worker="media")
def media_sleep(payload: Any) -> None:
    """Holds a media slot without using CPU (I/O-bound work)."""
    time.sleep(payload.get("s", 2.0) if isinstance(payload, dict) else 2.0)


@workflow("media-cpu", worker="media")
def media_cpu(payload: Any) -> int:
    """Holds a media slot and a CPU: a pure Python busy loop for about ``s`` seconds of wall time."""
    seconds = payload.get("s", 1.0) if isinstance(payload, dict) else 1.0
    deadline = time.perf_counter() + seconds
    spins = 0
    while True:
        for i in range(10_000):
            spins += i & 7
        if time.perf_counter() >= deadline:
            return spins


@workflow("step-timer", worker="bench")
def step_timer(payload: Any, step: Any) -> list[float]:
    """Runs ``n`` no-op steps and returns how long each ``step.run`` took (ms): round trip
    to the broker plus its synced commit, the cost a durable step adds."""
    timings = []
    for i in range(payload["n"]):
        t0 = time.perf_counter()
        step.run(f"s{i}", int, i)
        timings.append((time.perf_counter() - t0) * 1000)
    return timings

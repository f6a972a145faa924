"""Named fault points for crash tests: ``SHOAL_FAULT=after_commit_before_ack`` makes the
process SIGKILL itself the first time it reaches that point, so each crash window is hit
on purpose, not by luck. Unset (the normal case), a check costs one dict lookup.

``SHOAL_FAULT`` may name several points separated by commas; ``SHOAL_FAULT_AFTER=N`` lets
the point pass N times before it fires (to crash in the middle of a burst).

``trip`` points raise ``FaultInjected`` instead of killing the process: they stand for a bug
inside a broker handler, whose message must then be taken back whole (``raising`` arms them
in a test of the socket-free core).
"""
from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

POINTS = frozenset({
    "before_commit",            # broker: a batch decided, nothing written
    "after_commit_before_ack",  # broker: the batch is durable, no reply or JOB sent yet
    "after_dispatch",           # broker: JOB messages sent for a committed batch
    "after_step_stored",        # broker: a committed batch held a step result, before its reply
    "worker_after_step",        # worker: step.run's result is stored, before the handler goes on
    "during_snapshot",          # broker: a snapshot has started (its thread kills the whole process)
    "snapshot_overwriting",     # broker: the oldest snapshot's file is partly overwritten by a new one
    "wal_torn",                 # broker: half of a write-ahead record written (never acked), then SIGKILL
    "after_checkpoint",         # broker: LMDB committed a checkpoint, the write-ahead file not yet rewound
    "event_emit",               # broker, inside a handler: an event is recorded (``trip``: raises)
})

_armed = {p.strip() for p in os.environ.get("SHOAL_FAULT", "").split(",") if p.strip()}


def check(spec: str) -> None:
    """Refuse a ``SHOAL_FAULT`` value naming a point that does not exist (a misspelt crash test
    would otherwise pass without ever crashing). ``load_settings`` calls it, so the broker, the
    worker and ``shoal`` refuse to start with one."""
    unknown = sorted({p.strip() for p in spec.split(",") if p.strip()} - POINTS)
    if unknown:
        from .errors import ConfigError
        raise ConfigError(f"SHOAL_FAULT: unknown fault point(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(POINTS))}")


_skip = int(os.environ.get("SHOAL_FAULT_AFTER", "0") or 0)
_seen: dict[str, int] = {}


def armed(point: str) -> bool:
    """Whether ``point`` is armed (for a point that must do something before it fires)."""
    return point in _armed


def fault(point: str) -> None:
    """SIGKILL this process if ``point`` is armed (and its skip count is used up)."""
    if point not in _armed:
        return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] > _skip:
        os.kill(os.getpid(), signal.SIGKILL)


class FaultInjected(RuntimeError):
    """Raised by an armed ``trip`` point: a stand-in for a bug of ours inside a handler."""


def trip(point: str) -> None:
    """Raise ``FaultInjected`` if ``point`` is armed (by ``SHOAL_FAULT`` or ``raising``) and the
    passes ``raising`` let through are used up."""
    if point in _armed:
        left = _passes.get(point, 0)
        if left:
            _passes[point] = left - 1
            return
        raise FaultInjected(f"fault point {point} tripped")


_passes: dict[str, int] = {}  # trip point -> passes still let through (``raising(after=N)``)


@contextmanager
def raising(*points: str, after: int = 0) -> Iterator[None]:
    """Arm ``trip`` points in this process while the block runs; each lets ``after`` passes through first."""
    check(",".join(points))
    added = set(points) - _armed
    _armed.update(added)
    _passes.update((p, after) for p in points)
    try:
        yield
    finally:
        _armed.difference_update(added)
        for p in points:
            _passes.pop(p, None)

"""Rebuild the broker's stored state from its log alone: one table of what each op does.

Pure (no lmdb, no sockets): ``broker replay`` feeds it every entry of a log,
``shoal job why`` the entries of one job. Each entry is ``[wall_ms, op, job_id,
changes]`` (see store.py); ``enqueue`` carries the whole job record and later ops the
fields they changed; table-level entries (``learn_route``, ``cron``) have an empty job
id. Derived tables follow from the ops: ``counters`` from outcomes, the ``expiry``
index from the final records (``State.expiry``).

An entry this module cannot apply (an op it does not know, a job that was never
enqueued, a move the lifecycle table does not have) raises ``ReplayError``: a replay
that skipped what it did not understand would rebuild a state that never existed.
Adding an op is one line in ``OPS``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable

from shoal import jobs as J
from shoal.errors import ShoalError
from shoal.ids import id_to_str

JOB_FIELDS = frozenset(f.name for f in fields(J.Job))


class ReplayError(ShoalError):
    """A log entry that cannot be applied: unknown op, malformed, or an impossible move."""


@dataclass
class State:
    """The tables a replay rebuilds; ``steps`` is per job so expiring one drops its steps at once."""

    jobs: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    steps: dict[bytes, dict[str, dict[str, Any]]] = field(default_factory=dict)
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    cron: dict[str, int] = field(default_factory=dict)   # cron entry -> last fired tick (ms)
    applied: int = 0     # entries applied
    last_seq: int = 0    # seq of the last one

    def expiry(self) -> set[tuple[int, bytes]]:
        """The expiry index the broker keeps: finished jobs that have an expiry time."""
        return {(record["expire_ms"], job_id) for job_id, record in self.jobs.items()
                if record.get("expire_ms") and record.get("state") in J.FINAL_STATES}

    def step_count(self) -> int:
        """How many step records there are, all jobs together."""
        return sum(len(named) for named in self.steps.values())


Apply = Callable[[State, bytes, dict[str, Any]], None]


@dataclass(frozen=True)
class Op:
    """What one logged op does to the state."""

    apply: Apply
    event: str | None = None          # the lifecycle event it records, checked against jobs.TRANSITIONS
    counts: tuple[str, ...] = ()      # counters of the job's group it adds one to


# --- what each op does ---------------------------------------------------------------
def _job(state: State, job_id: bytes) -> dict[str, Any]:
    record = state.jobs.get(job_id)
    if record is None:
        raise ReplayError(f"job {_show(job_id)} has an entry but was never enqueued (or already expired)")
    return record


def _enqueue(state: State, job_id: bytes, changes: dict[str, Any]) -> None:
    if job_id in state.jobs:
        raise ReplayError(f"job {_show(job_id)} is enqueued a second time")
    if changes.get("id") != job_id or changes.get("state") not in (J.PENDING, J.SCHEDULED):
        raise ReplayError(f"the enqueue record of job {_show(job_id)} is not a new job's record")
    state.jobs[job_id] = dict(changes)


def _update(state: State, job_id: bytes, changes: dict[str, Any]) -> None:
    # entries also carry context that is not a job field ("why", "failed", "step", ...)
    _job(state, job_id).update((k, v) for k, v in changes.items() if k in JOB_FIELDS)


def _final(state: State, job_id: bytes, changes: dict[str, Any]) -> None:
    _update(state, job_id, changes)
    if changes.get("failed"):  # the FAIL that ended it was a failed attempt too
        _count(state, state.jobs[job_id], "failed")


def _step(state: State, job_id: bytes, changes: dict[str, Any]) -> None:
    _update(state, job_id, changes)  # "steps": how many the job has now
    state.steps.setdefault(job_id, {})[_text(changes, "step")] = changes["record"]


def _fan_in(state: State, job_id: bytes, changes: dict[str, Any]) -> None:
    _update(state, job_id, changes)  # every child is final: the wait step holds their results
    state.steps.setdefault(job_id, {})[_text(changes, "step")] = changes["record"]


def _expire(state: State, job_id: bytes, changes: dict[str, Any]) -> None:
    _job(state, job_id)
    del state.jobs[job_id]
    state.steps.pop(job_id, None)


def _learn_route(state: State, job_id: bytes, changes: dict[str, Any]) -> None:
    state.routes[_text(changes, "workflow")] = {"group": changes.get("group"), "retries": changes.get("retries")}


def _cron(state: State, job_id: bytes, changes: dict[str, Any]) -> None:
    tick_ms = changes["tick_ms"]
    if not isinstance(tick_ms, int):
        raise ReplayError(f"cron tick_ms must be an integer, found {type(tick_ms).__name__}")
    state.cron[_text(changes, "name")] = tick_ms


OPS: dict[str, Op] = {
    "enqueue": Op(_enqueue),
    "dispatch": Op(_update, "dispatch"),
    "release": Op(_update, "release"),
    "due": Op(_update, "due"),
    "retry": Op(_update, "retry", counts=("failed", "retried")),
    "requeue": Op(_update, "requeue"),
    "route": Op(_update),
    "suspend": Op(_update, "suspend"),
    "complete": Op(_update, "complete", counts=("completed",)),
    "dead": Op(_final, "bury", counts=("dead",)),
    "cancel": Op(_final, "cancel"),
    "cancel_requested": Op(_update),
    "step": Op(_step),
    "fan_in": Op(_fan_in, "due"),
    "expire": Op(_expire),
    "learn_route": Op(_learn_route),
    "cron": Op(_cron),
}


# --- applying entries ----------------------------------------------------------------
def apply_entry(state: State, seq: int, entry: Any) -> None:
    """Apply one decoded log entry; ``ReplayError`` (naming ``seq``) if it cannot be."""
    if not (isinstance(entry, list) and len(entry) == 4 and isinstance(entry[0], int)
            and isinstance(entry[1], str) and isinstance(entry[2], bytes) and isinstance(entry[3], dict)):
        raise ReplayError(f"log entry {seq} is malformed (expected [wall_ms, op, job_id, changes]): {entry!r:.200}")
    _, name, job_id, changes = entry
    op = OPS.get(name)
    if op is None:
        raise ReplayError(f"log entry {seq} has op {name!r}, which this version of replay does not know "
                          f"(known: {', '.join(sorted(OPS))}); refusing to rebuild a state without it")
    try:
        if op.event is not None:
            _check_move(state, job_id, op.event, changes)
        op.apply(state, job_id, changes)
        if op.counts:
            for counter in op.counts:
                _count(state, state.jobs[job_id], counter)
    except ReplayError as exc:
        raise ReplayError(f"log entry {seq} ({name}): {exc}") from None
    except (KeyError, TypeError, AttributeError) as exc:  # a field missing or of the wrong type
        raise ReplayError(f"log entry {seq} ({name}) is malformed: {exc!r}") from None
    state.applied += 1
    state.last_seq = seq


def _check_move(state: State, job_id: bytes, event: str, changes: dict[str, Any]) -> None:
    before = _job(state, job_id)["state"]
    try:
        after = J.next_state(before, event)
    except J.IllegalTransition as exc:
        raise ReplayError(f"job {_show(job_id)}: {exc}") from None
    if changes.get("state", after) != after:
        raise ReplayError(f"job {_show(job_id)}: {event} from {before} leads to {after}, "
                          f"but the entry says {changes['state']}")


def _count(state: State, record: dict[str, Any], counter: str) -> None:
    counts = state.counters.setdefault(record.get("group") or "", {})
    counts[counter] = counts.get(counter, 0) + 1


def _text(changes: dict[str, Any], key: str) -> str:
    value = changes[key]
    if not isinstance(value, str):
        raise ReplayError(f"field {key!r} must be text, found {type(value).__name__}")
    return value


def _show(job_id: bytes) -> str:
    return id_to_str(job_id) if len(job_id) == 16 else repr(job_id)

"""One job's history, from the log: a row per entry, answering "what happened to this job?".

The entries are folded with replay's own op table (``rebuild.OPS``), so every row shows
the job as it was right after that entry: the same state a replay stopped there would
rebuild. Pure: the HISTORY command (history_commands.py) reads the entries.
"""
from __future__ import annotations

from typing import Any, Iterable

from shoal.cli_format import timestamp
from shoal.ids import id_to_str

from .rebuild import JOB_FIELDS, OPS, ReplayError, State, apply_entry, normalized

# ops that belong to one run (one lease): their row names its worker, lease token and attempt
RUN_OPS = frozenset({"dispatch", "step", "complete", "retry", "dead", "release", "suspend", "cancel"})


def history_rows(job_id: bytes, entries: Iterable[tuple[int, list[Any]]]) -> list[dict[str, Any]]:
    """Rows ``{seq, wall_ms, op, state, attempt, worker, token, error, detail}``, oldest first."""
    state = State()
    rows: list[dict[str, Any]] = []
    for seq, entry in entries:
        entry = normalized(entry)
        wall_ms, op, _, changes = entry
        before = dict(state.record(job_id) or {})
        try:
            apply_entry(state, seq, entry)
        except ReplayError:
            _apply_loosely(state, job_id, op, changes)  # a history shows what the log says, even where replay refuses
        after = state.record(job_id) or before
        run = after if op == "dispatch" else before  # a run's entries carry the lease they were made under
        in_run = op in RUN_OPS
        rows.append({
            "seq": seq, "wall_ms": wall_ms, "op": op,
            "state": "expired" if op == "expire" else after.get("state", ""),
            "attempt": run.get("attempts", 0) if in_run else after.get("attempts", 0),
            "worker": run.get("worker", "") if in_run else "",
            "token": run.get("token", 0) if in_run else 0,
            "error": changes.get("error") if op in ("retry", "dead") else None,
            "detail": detail(op, changes, after),
        })
    return rows


def _apply_loosely(state: State, job_id: bytes, op: str, changes: dict[str, Any]) -> None:
    if op == "enqueue":
        state.put(job_id, dict(changes))
    elif state.has_job(job_id):
        state.change(job_id, ((k, v) for k, v in changes.items() if k in JOB_FIELDS))


def detail(op: str, changes: dict[str, Any], record: dict[str, Any]) -> str:
    """A short phrase on what the entry did, beyond state, attempt, worker and error."""
    if op == "enqueue":
        return _enqueued(changes)
    if op == "release":
        return f"lease lost ({changes.get('why', '?')}); back to the front of the queue"
    if op == "retry":
        return f"retry due {timestamp(changes.get('due_ms', 0))}"
    if op == "suspend":
        if changes.get("waiting_on"):
            return f"waiting for {len(changes['waiting_on'])} child jobs (step {changes.get('wait_step')!r})"
        return f"sleeping until {timestamp(changes.get('due_ms', 0))}"
    if op == "step":
        step = changes.get("record") or {}
        outcome = "failed permanently" if step.get("permanent") else "stored"
        return f"step {changes.get('step')!r} {outcome}"
    if op == "fan_in":
        return f"every child is final; step {changes.get('step')!r} holds their results"
    if op == "dead":
        kind = changes.get("error_kind") or "error"
        return f"dead letter ({kind})"
    if op == "complete" and record.get("expire_ms"):
        return f"result kept until {timestamp(record['expire_ms'])}"
    if op == "cancel" and record.get("expire_ms"):
        return f"kept until {timestamp(record['expire_ms'])}"
    if op == "route":
        return f"routed to group {changes.get('group')}"
    if op in _FIXED:
        return _FIXED[op]
    if op in OPS:  # nothing to add to the row's columns (dispatch, due)
        return ""
    return "changed " + ", ".join(sorted(changes))  # an op newer than this code


_FIXED = {
    "requeue": "requeued from the dead letters with a fresh retry budget",
    "cancel_requested": "cancel asked; its worker was told to stop it",
    "expire": "retention ended; the record and its steps were deleted",
}


def _enqueued(record: dict[str, Any]) -> str:
    parts = [f"workflow {record.get('workflow')!r}", f"group {record.get('group') or '(unrouted)'}"]
    if record.get("state") == "scheduled":
        parts.append(f"delayed until {timestamp(record.get('due_ms', 0))}")
    if record.get("priority"):
        parts.append(f"priority {record['priority']}")
    if record.get("key"):
        parts.append(f"key {record['key']!r}")
    if isinstance(record.get("parent"), bytes):
        parts.append(f"child of {id_to_str(record['parent'])}")
    return ", ".join(parts)

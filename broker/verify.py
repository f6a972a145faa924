"""``broker replay --verify``: compare the state the log rebuilds with the stored tables.

Both sides are read from one LMDB read transaction (``Store.snapshot``), so a live
broker committing meanwhile never shows up as a difference. Every difference is
reported, field by field, with the log's value next to the stored one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from shoal.ids import id_to_str
from shoal.protocol import unpack

from .rebuild import State
from .snapshot import Snapshot, split_expiry_key
from .store import CRON_PREFIX

_MISSING = object()
VALUE_CHARS = 80


@dataclass(frozen=True)
class Difference:
    """One place where the log and the stored tables disagree."""

    table: str
    key: str
    field: str            # "" when the whole row is on one side only
    log_value: Any
    stored_value: Any

    def __str__(self) -> str:
        if self.field:
            return (f"{self.table}  {self.key}  {self.field}: log {_show(self.log_value)}, "
                    f"stored {_show(self.stored_value)}")
        side = "the log" if self.stored_value is _MISSING else "the store"
        return f"{self.table}  {self.key}: only in {side}"


def stored_state(snapshot: Snapshot) -> tuple[State, set[tuple[int, bytes]]]:
    """The tables as the broker wrote them, shaped like a rebuilt ``State``, and the expiry index."""
    state = State()
    for key, raw in snapshot.items("jobs"):
        state.jobs[bytes(key)] = _decode(raw)
    for key, raw in snapshot.items("steps"):
        state.steps.setdefault(bytes(key[:16]), {})[bytes(key[16:]).decode()] = _decode(raw)
    for key, raw in snapshot.items("routes"):
        state.routes[bytes(key).decode()] = _decode(raw)
    for key, raw in snapshot.items("counters"):
        state.counters[bytes(key).decode()] = _decode(raw)
    for key, raw in snapshot.items("meta"):
        if bytes(key).startswith(CRON_PREFIX):
            state.cron[bytes(key[len(CRON_PREFIX):]).decode()] = _decode(raw)
    expiry = {split_expiry_key(bytes(key)) for key, _ in snapshot.items("expiry")}
    return state, expiry


def differences(rebuilt: State, stored: State, stored_expiry: set[tuple[int, bytes]]) -> Iterator[Difference]:
    """Every difference, table by table, in key order."""
    yield from _rows("jobs", rebuilt.jobs, stored.jobs, _id)
    yield from _rows("steps", _flat_steps(rebuilt), _flat_steps(stored), _step_key)
    yield from _rows("routes", rebuilt.routes, stored.routes, str)
    yield from _rows("counters", rebuilt.counters, stored.counters, str)
    yield from _rows("cron", rebuilt.cron, stored.cron, str)
    expiry_log = rebuilt.expiry()
    for expire_ms, job_id in sorted(expiry_log ^ stored_expiry):
        in_log = (expire_ms, job_id) in expiry_log
        yield Difference("expiry", f"{expire_ms} {_id(job_id)}", "",
                         True if in_log else _MISSING, _MISSING if in_log else True)


def _rows(table: str, from_log: dict[Any, Any], from_store: dict[Any, Any],
          show: Callable[[Any], str]) -> Iterator[Difference]:
    for key in sorted(from_log.keys() | from_store.keys()):
        log_row, stored_row = from_log.get(key, _MISSING), from_store.get(key, _MISSING)
        if log_row == stored_row:  # the common case, compared whole (keys are shown only for differences)
            continue
        if log_row is _MISSING or stored_row is _MISSING:
            yield Difference(table, show(key), "", log_row, stored_row)
        elif isinstance(log_row, dict) and isinstance(stored_row, dict):
            for name in sorted(log_row.keys() | stored_row.keys()):
                a, b = log_row.get(name, _MISSING), stored_row.get(name, _MISSING)
                if a != b:
                    yield Difference(table, show(key), name, a, b)
        else:
            yield Difference(table, show(key), "(value)", log_row, stored_row)


def _flat_steps(state: State) -> dict[tuple[bytes, str], Any]:
    return {(job_id, name): record for job_id, named in state.steps.items() for name, record in named.items()}


def _step_key(key: tuple[bytes, str]) -> str:
    return f"{_id(key[0])}/{key[1]}"


def _id(job_id: bytes) -> str:
    return id_to_str(job_id) if len(job_id) == 16 else job_id.hex()


def _show(value: Any) -> str:
    if value is _MISSING:
        return "(absent)"
    text = repr(value)
    return text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS] + f"... ({len(text)} chars)"


def _decode(raw: bytes) -> Any:
    return unpack(raw, max_bytes=max(len(raw), 1))  # our own data: no peer-facing size limit

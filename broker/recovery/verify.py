"""``broker replay --verify``: compare the state the log rebuilds with the stored tables.

Both sides are read from one LMDB read transaction (``Store.snapshot``), so a live
broker committing meanwhile never shows up as a difference. Every difference is
reported, field by field, with the log's value next to the stored one. The stored jobs
table is never decoded whole: it is read in key order beside the rebuilt jobs, and a
record is decoded only where its bytes differ from the rebuilt one's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from shoal.ids import id_to_str
from shoal.jobs import as_record

from .rebuild import State, decode_stored
from .snapshot import Snapshot, split_expiry_key
from ..storage.store import CRON_PREFIX

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


def stored_state(snapshot: Snapshot, state: State | None = None) -> State:
    """The tables as the broker wrote them, loaded into ``state`` (a new ``State`` if none):
    where a replay from a snapshot starts. Final jobs are handed on as they were stored."""
    state = _small_tables(snapshot, state if state is not None else State())
    for key, raw in snapshot.items("jobs"):
        state.load(key, raw)
    return state


def differences(rebuilt: State, snapshot: Snapshot) -> Iterator[Difference]:
    """Every difference between ``rebuilt`` and the snapshot's tables, table by table, in key order.

    The jobs table and the expiry index are streamed side by side with the rebuilt ones,
    never held. Packed records are compared first; only where the bytes differ are both
    decoded and compared as dicts, so key order alone is never a difference."""
    yield from _job_rows(rebuilt.packed_jobs(), snapshot.items("jobs"))
    stored = _small_tables(snapshot, State())
    yield from _rows("steps", _flat_steps(rebuilt), _flat_steps(stored), _step_key)
    yield from _rows("routes", rebuilt.routes, stored.routes, str)
    yield from _rows("counters", rebuilt.counters, stored.counters, str)
    yield from _rows("cron", rebuilt.cron, stored.cron, str)
    expiry_log = ((entry, True) for entry in sorted(rebuilt.expiry()))
    expiry_stored = ((split_expiry_key(key), True) for key, _ in snapshot.items("expiry"))
    for (expire_ms, job_id), in_log, in_store in _side_by_side(expiry_log, expiry_stored):
        if in_log is _MISSING or in_store is _MISSING:
            yield Difference("expiry", f"{expire_ms} {_id(job_id)}", "", in_log, in_store)


def _small_tables(snapshot: Snapshot, state: State) -> State:
    """Every table but jobs and the expiry index (which are streamed), loaded into ``state``."""
    for key, raw in snapshot.items("steps"):
        state.steps.setdefault(bytes(key[:16]), {})[bytes(key[16:]).decode()] = decode_stored(raw)
    for key, raw in snapshot.items("routes"):
        state.routes[bytes(key).decode()] = decode_stored(raw)
    for key, raw in snapshot.items("counters"):
        state.counters[bytes(key).decode()] = decode_stored(raw)
    for key, raw in snapshot.items("meta"):
        if bytes(key).startswith(CRON_PREFIX):
            state.cron[bytes(key[len(CRON_PREFIX):]).decode()] = decode_stored(raw)
    return state


def _job_rows(from_log: Iterator[tuple[bytes, bytes]],
              from_store: Iterator[tuple[bytes, bytes]]) -> Iterator[Difference]:
    for job_id, log_raw, stored_raw in _side_by_side(from_log, from_store):
        if log_raw != stored_raw:  # equal bytes: equal records (the common case, nothing decoded)
            yield from _row("jobs", _id(job_id), _decode_row(log_raw), _decode_row(stored_raw))


def _rows(table: str, from_log: dict[Any, Any], from_store: dict[Any, Any],
          show: Callable[[Any], str]) -> Iterator[Difference]:
    for key in sorted(from_log.keys() | from_store.keys()):
        yield from _row(table, show(key), from_log.get(key, _MISSING), from_store.get(key, _MISSING))


def _row(table: str, key: str, log_row: Any, stored_row: Any) -> Iterator[Difference]:
    if log_row == stored_row:  # the common case, compared whole (keys are shown only for differences)
        return
    if log_row is _MISSING or stored_row is _MISSING:
        yield Difference(table, key, "", log_row, stored_row)
    elif isinstance(log_row, dict) and isinstance(stored_row, dict):
        for name in sorted(log_row.keys() | stored_row.keys()):
            a, b = log_row.get(name, _MISSING), stored_row.get(name, _MISSING)
            if a != b:
                yield Difference(table, key, name, a, b)
    else:
        yield Difference(table, key, "(value)", log_row, stored_row)


def _side_by_side(from_log: Iterator[tuple[Any, Any]],
                  from_store: Iterator[tuple[Any, Any]]) -> Iterator[tuple[Any, Any, Any]]:
    """Two streams of ``(key, value)`` in key order, merged: ``(key, log value, stored value)``
    for every key once, ``_MISSING`` on the side that does not have it."""
    end = (None, None)
    log_key, log_value = next(from_log, end)
    store_key, store_value = next(from_store, end)
    while log_key is not None or store_key is not None:
        if store_key is None or (log_key is not None and log_key < store_key):
            yield log_key, log_value, _MISSING
            log_key, log_value = next(from_log, end)
        elif log_key is None or store_key < log_key:
            yield store_key, _MISSING, store_value
            store_key, store_value = next(from_store, end)
        else:
            yield log_key, log_value, store_value
            log_key, log_value = next(from_log, end)
            store_key, store_value = next(from_store, end)


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



def _decode_row(raw: Any) -> Any:
    """A jobs table row decoded into a record (a row or an older version's map alike)."""
    return raw if raw is _MISSING else as_record(decode_stored(raw))

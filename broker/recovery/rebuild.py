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
from itertools import chain
from typing import Any, Callable, Iterable, Iterator, Protocol

from shoal import jobs as J
from shoal.errors import ShoalError
from shoal.ids import id_to_str
from shoal.protocol import pack, unpack

JOB_FIELDS = frozenset(f.name for f in fields(J.Job))


class ReplayError(ShoalError):
    """A log entry that cannot be applied: unknown op, malformed, or an impossible move."""


class FinalJobs(Protocol):
    """Where a ``State`` keeps its final jobs: ``PackedJobs`` (in memory) unless told otherwise."""

    def __contains__(self, job_id: object) -> bool: ...

    def __len__(self) -> int: ...

    def ids(self) -> Iterable[bytes]:
        """Every job id held, in no particular order."""

    def add(self, job_id: bytes, record: dict[str, Any], raw: bytes | None) -> None:
        """Keep a final job; ``raw`` is its record already packed, when that is at hand."""

    def get(self, job_id: bytes) -> dict[str, Any] | None:
        """The job's record (a copy: changing it changes nothing held), or None."""

    def packed(self, job_id: bytes) -> bytes:
        """The job's record packed as the store keeps it; ``KeyError`` if it is not held."""

    def take(self, job_id: bytes) -> dict[str, Any]:
        """The job's record, no longer held; ``KeyError`` if it is not held."""

    def discard(self, job_id: bytes) -> None:
        """Hold the job no longer, if it is held."""


class PackedJobs:
    """Final jobs in memory, each packed as the store keeps it (``protocol.pack``): about a
    third of the memory of a dict (BENCHMARKS.md, "Replay rate"), and the very bytes
    ``broker replay --verify`` compares with the stored ones."""

    def __init__(self) -> None:
        self._packed: dict[bytes, bytes] = {}

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._packed

    def __len__(self) -> int:
        return len(self._packed)

    def ids(self) -> Iterable[bytes]:
        """Every job id held, in no particular order."""
        return self._packed.keys()

    def add(self, job_id: bytes, record: dict[str, Any], raw: bytes | None) -> None:
        """Keep a final job; ``raw`` is its record already packed, when that is at hand."""
        self._packed[job_id] = raw if raw is not None else pack_record(record)

    def get(self, job_id: bytes) -> dict[str, Any] | None:
        """The job's record, decoded, or None."""
        raw = self._packed.get(job_id)
        return None if raw is None else J.as_record(decode_stored(raw))

    def packed(self, job_id: bytes) -> bytes:
        """The job's record packed; ``KeyError`` if it is not held."""
        return self._packed[job_id]

    def take(self, job_id: bytes) -> dict[str, Any]:
        """The job's record, decoded and no longer held; ``KeyError`` if it is not held."""
        record: dict[str, Any] = J.as_record(decode_stored(self._packed.pop(job_id)))
        return record

    def discard(self, job_id: bytes) -> None:
        """Hold the job no longer, if it is held."""
        self._packed.pop(job_id, None)


@dataclass
class State:
    """The tables a replay rebuilds; ``steps`` is per job so expiring one drops its steps at once.

    A job is held one of two ways. While it can still move (pending, scheduled, running)
    it is a dict the next entries change. Once final (``J.FINAL_STATES``; most of a state
    that keeps results) it is *frozen*: handed to ``final``, which keeps it packed in
    memory (``PackedJobs``) or, for ``broker replay --out``, writes it to the new
    directory. An entry that touches a frozen job (a requeue from the dead letters, a step
    stored late, ...) thaws it back into a dict; if it is still final after the change it
    is frozen again. So between two entries no thawed job is final, and the expiry index
    comes from the ``expire_ms`` noted when a job was frozen, without reading a record back.

    Jobs are read and changed only through the methods below: ``record`` hands out a
    copy of a frozen job, ``packed`` and ``packed_jobs`` the bytes.
    """

    steps: dict[bytes, dict[str, dict[str, Any]]] = field(default_factory=dict)
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    cron: dict[str, int] = field(default_factory=dict)   # cron entry -> last fired tick (ms)
    applied: int = 0     # entries applied
    last_seq: int = 0    # seq of the last one
    final: FinalJobs = field(default_factory=PackedJobs, repr=False)                # frozen jobs
    _thawed: dict[bytes, dict[str, Any]] = field(default_factory=dict, repr=False)  # jobs not final
    _final_expire_ms: dict[bytes, int] = field(default_factory=dict, repr=False)    # frozen ones with one

    # --- reading ---------------------------------------------------------------------
    def job_count(self) -> int:
        """How many jobs there are, frozen or not."""
        return len(self._thawed) + len(self.final)

    def has_job(self, job_id: bytes) -> bool:
        """Whether the job exists (enqueued and not expired)."""
        return job_id in self._thawed or job_id in self.final

    def is_frozen(self, job_id: bytes) -> bool:
        """Whether the job is final, held by ``final``."""
        return job_id in self.final

    def record(self, job_id: bytes) -> dict[str, Any] | None:
        """The job's record (a frozen one read back, and left frozen), or None. Read it, do
        not change it: changes go through ``change``."""
        record = self._thawed.get(job_id)
        return record if record is not None else self.final.get(job_id)

    def packed(self, job_id: bytes) -> bytes:
        """The job's record packed as the store keeps it; ``KeyError`` if there is no such job."""
        record = self._thawed.get(job_id)
        return pack_record(record) if record is not None else self.final.packed(job_id)

    def packed_jobs(self) -> Iterator[tuple[bytes, bytes]]:
        """Every job as ``(id, packed record)``, in the store's key order."""
        for job_id in sorted(chain(self._thawed, self.final.ids())):
            yield job_id, self.packed(job_id)

    def unfinished(self) -> Iterator[tuple[bytes, dict[str, Any]]]:
        """Every job that is not final as ``(id, record)``, in key order."""
        for job_id in sorted(self._thawed):
            yield job_id, self._thawed[job_id]

    def expiry(self) -> set[tuple[int, bytes]]:
        """The expiry index the broker keeps: finished jobs that have an expiry time."""
        return {(expire_ms, job_id) for job_id, expire_ms in self._final_expire_ms.items()}

    def step_count(self) -> int:
        """How many step records there are, all jobs together."""
        return sum(len(named) for named in self.steps.values())

    # --- changing --------------------------------------------------------------------
    def put(self, job_id: bytes, record: dict[str, Any]) -> None:
        """Set the job's whole record (replacing any); frozen at once if it is final."""
        self._hold(job_id, record, None)

    def load(self, job_id: bytes, raw: bytes) -> None:
        """Set the job's record from its stored bytes (a snapshot's table): a final one is
        handed on as it is, without packing it again."""
        try:
            stored = decode_stored(raw)
        except Exception as exc:  # msgpack raises several unrelated types
            raise ReplayError(f"the stored record of job {_show(job_id)} does not decode ({exc})") from None
        if not isinstance(stored, (dict, list)):
            raise ReplayError(f"the stored record of job {_show(job_id)} is not a row nor a map: {stored!r:.200}")
        record = J.as_record(stored)
        self._hold(job_id, record, raw)

    def change(self, job_id: bytes, fields: Iterable[tuple[str, Any]]) -> dict[str, Any]:
        """Update some of the job's fields, thawing it first if it is frozen (and freezing it
        again if it is final after); ``KeyError`` if there is no such job. Returns the
        record as changed, to read (once frozen again, changing it changes nothing)."""
        record = self._thawed.get(job_id)
        if record is None:
            record = self._thaw(job_id)
        record.update(fields)
        if record.get("state") in J.FINAL_STATES:
            del self._thawed[job_id]
            self._freeze(job_id, record, None)
        return record

    def drop(self, job_id: bytes) -> None:
        """Forget the job's record (its steps are the caller's business)."""
        if self._thawed.pop(job_id, None) is None:
            self.final.discard(job_id)
            self._final_expire_ms.pop(job_id, None)

    def _hold(self, job_id: bytes, record: dict[str, Any], raw: bytes | None) -> None:
        self.drop(job_id)
        if record.get("state") in J.FINAL_STATES:
            self._freeze(job_id, record, raw)
        else:
            self._thawed[job_id] = record

    def _thaw(self, job_id: bytes) -> dict[str, Any]:
        record = self.final.take(job_id)  # KeyError: no such job
        self._final_expire_ms.pop(job_id, None)
        self._thawed[job_id] = record
        return record

    def _freeze(self, job_id: bytes, record: dict[str, Any], raw: bytes | None) -> None:
        self.final.add(job_id, record, raw)
        expire_ms = record.get("expire_ms")
        if expire_ms:
            self._final_expire_ms[job_id] = expire_ms


Apply = Callable[[State, bytes, dict[str, Any]], dict[str, Any] | None]  # -> the job's record after (None: no job)


@dataclass(frozen=True)
class Op:
    """What one logged op does to the state."""

    apply: Apply
    event: str | None = None          # the lifecycle event it records, checked against jobs.TRANSITIONS
    counts: tuple[str, ...] = ()      # counters of the job's group it adds one to


# --- what each op does ---------------------------------------------------------------
def _enqueue(state: State, job_id: bytes, changes: dict[str, Any]) -> dict[str, Any]:
    if state.has_job(job_id):
        raise ReplayError(f"job {_show(job_id)} is enqueued a second time")
    if changes.get("id") != job_id or changes.get("state") not in (J.PENDING, J.SCHEDULED):
        raise ReplayError(f"the enqueue record of job {_show(job_id)} is not a new job's record")
    record = dict(changes)
    state.put(job_id, record)
    return record


def _update(state: State, job_id: bytes, changes: dict[str, Any]) -> dict[str, Any]:
    try:  # entries also carry context that is not a job field ("why", "failed", "step", ...)
        return state.change(job_id, ((k, v) for k, v in changes.items() if k in JOB_FIELDS))
    except KeyError:  # the only one change raises: no such job
        raise ReplayError(_never_enqueued(job_id)) from None


def _final(state: State, job_id: bytes, changes: dict[str, Any]) -> dict[str, Any]:
    record = _update(state, job_id, changes)
    if changes.get("failed"):  # the FAIL that ended it was a failed attempt too
        _count(state, record, "failed")
    return record


def _step(state: State, job_id: bytes, changes: dict[str, Any]) -> dict[str, Any]:
    record = _update(state, job_id, changes)  # "steps": how many the job has now
    state.steps.setdefault(job_id, {})[_text(changes, "step")] = changes["record"]
    return record


def _fan_in(state: State, job_id: bytes, changes: dict[str, Any]) -> dict[str, Any]:
    record = _update(state, job_id, changes)  # every child is final: the wait step holds their results
    state.steps.setdefault(job_id, {})[_text(changes, "step")] = changes["record"]
    return record


def _expire(state: State, job_id: bytes, changes: dict[str, Any]) -> None:
    if not state.has_job(job_id):
        raise ReplayError(_never_enqueued(job_id))
    state.drop(job_id)  # without decoding it: an expiring job is nearly always frozen
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
def pack_record(record: dict[str, Any]) -> bytes:
    """A record packed as the store keeps it (a row: ``jobs.as_row``)."""
    return pack(J.as_row(record))


def normalized(entry: Any) -> Any:
    """A decoded log entry with its changes as a dict: a job's birth (``enqueue``) carries its
    whole record as a row since schema 2 (a map before), read back here into a record."""
    if isinstance(entry, list) and len(entry) == 4 and entry[1] == "enqueue" and isinstance(entry[3], list):
        entry = [entry[0], entry[1], entry[2], J.as_record(entry[3])]
    return entry


def apply_entry(state: State, seq: int, entry: Any) -> None:
    """Apply one decoded log entry; ``ReplayError`` (naming ``seq``) if it cannot be."""
    entry = normalized(entry)
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
        record = op.apply(state, job_id, changes)
        if op.counts and record is not None:
            for counter in op.counts:
                _count(state, record, counter)
    except ReplayError as exc:
        raise ReplayError(f"log entry {seq} ({name}): {exc}") from None
    except (KeyError, TypeError, AttributeError) as exc:  # a field missing or of the wrong type
        raise ReplayError(f"log entry {seq} ({name}) is malformed: {exc!r}") from None
    state.applied += 1
    state.last_seq = seq


def _check_move(state: State, job_id: bytes, event: str, changes: dict[str, Any]) -> None:
    record = state.record(job_id)  # decodes a frozen job: of the moves, only a requeue starts from one
    if record is None:
        raise ReplayError(_never_enqueued(job_id))
    before = record["state"]
    try:
        after = J.next_state(before, event)
    except J.IllegalTransition as exc:
        raise ReplayError(f"job {_show(job_id)}: {exc}") from None
    if changes.get("state", after) != after:
        raise ReplayError(f"job {_show(job_id)}: {event} from {before} leads to {after}, "
                          f"but the entry says {changes['state']}")


def _never_enqueued(job_id: bytes) -> str:
    return f"job {_show(job_id)} has an entry but was never enqueued (or already expired)"


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


def decode_stored(raw: bytes) -> Any:
    """A stored value (record, log entry, table row) decoded: our own data, so no peer-facing
    size limit applies."""
    return unpack(raw, max_bytes=max(len(raw), 1))

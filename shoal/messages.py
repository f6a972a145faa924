"""Typed bodies of the commands clients and workers send, checked once at the edge.

``protocol.decode`` gives a map; the ``from_body`` of each class below checks every field
(type, size, shape) and returns a small frozen dataclass, or raises ``ProtocolError`` with
code ``bad_request`` naming the field. The broker's handlers take these, never the raw map,
so a peer's bad frame is refused before any state is touched: a message with one bad entry
among good ones is refused whole.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

from . import protocol as P
from .errors import ProtocolError
from .protocol import field

MAX_SLOTS = 1_000_000
MAX_NAME = 1024          # workflow, step and group names
MAX_TEXT = 1 << 20       # error texts and tracebacks


_new_tuple = tuple.__new__  # builds a named tuple in one C call (its own __new__ is Python code)


def _refuse(reason: str, received: object) -> ProtocolError:
    err = ProtocolError(reason, received)
    err.code = P.E_BAD_REQUEST  # type: ignore[attr-defined]
    return err


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise _refuse(f"{what} must be an integer, got {type(value).__name__}", value)
    return value


def _job_id(value: Any, what: str = "job id") -> bytes:
    if type(value) is not bytes or len(value) != 16:
        shown = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise _refuse(f"{what} must be 16 bytes, got {shown}", value)
    return value


def _name(value: Any, what: str) -> str:
    if type(value) is not str or not value or len(value) > MAX_NAME:
        raise _refuse(f"{what} must be a non-empty string of at most {MAX_NAME} characters", value)
    return value


def _text(value: Any, what: str, default: str | None = "") -> str | None:
    if value is None:
        return default
    if type(value) is not str:
        raise _refuse(f"{what} must be a string, got {type(value).__name__}", value)
    return value[:MAX_TEXT]


def _list(body: Mapping[str, Any], name: str, required: bool = True) -> list[Any]:
    value = body.get(name)
    if value is None and not required:
        return []
    if type(value) is not list:
        raise _refuse(f"field {name!r} must be a list, got {type(value).__name__}", value)
    return value


def _lease(entry: Any, what: str) -> tuple[bytes, int]:
    if type(entry) is not list or len(entry) < 2:
        raise _refuse(f"each {what} must be [id, token, ...]", entry)
    return _job_id(entry[0]), _int(entry[1], "lease token")


@dataclass(frozen=True)
class Hello:
    """A worker joins (or re-announces itself): its group, slots, workflows and running leases."""

    group: str
    slots: int
    pid: int
    host: str
    server: str
    workflows: dict[str, int | None]          # name -> retries (None: the group's default)
    running: tuple[tuple[bytes, int], ...]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Hello":
        group = _name(body.get("group"), "HELLO's group")
        slots = _int(body.get("slots"), "HELLO's slots")
        if not 0 <= slots <= MAX_SLOTS:
            raise _refuse(f"HELLO's slots must be between 0 and {MAX_SLOTS}", slots)
        raw = body.get("workflows") or {}
        if type(raw) is not dict:
            raise _refuse("HELLO's workflows must be a map of name -> {retries}", raw)
        workflows: dict[str, int | None] = {}
        for name, info in raw.items():
            _name(name, "a workflow name")
            retries = info.get("retries") if type(info) is dict else None
            if retries is not None:
                _int(retries, f"retries of {name!r}")
            workflows[name] = retries
        running = tuple(_lease(e, "running entry") for e in _list(body, "running", required=False))
        return cls(group=group, slots=slots, pid=_int(body.get("pid", 0) or 0, "HELLO's pid"),
                   host=_text(body.get("host"), "HELLO's host") or "",
                   server=_text(body.get("server"), "HELLO's server") or "",
                   workflows=workflows, running=running)


@dataclass(frozen=True)
class Ready:
    """The worker's free slot count changed (0 while draining)."""

    slots: int

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Ready":
        slots = _int(body.get("slots"), "READY's slots")
        if not 0 <= slots <= MAX_SLOTS:
            raise _refuse(f"READY's slots must be between 0 and {MAX_SLOTS}", slots)
        return cls(slots)


class Result(NamedTuple):
    """One finished run: the packed value. A named tuple, as ``JobItem``: a DONE carries one per
    job, and a frozen dataclass took 1.9 µs to build against 0.8 µs (BENCHMARKS.md)."""

    id: bytes
    token: int
    value: bytes


def _result(entry: Any) -> Result:
    """The common case (well-formed) in one type check per field; anything odd is named below."""
    if (type(entry) is list and len(entry) >= 3 and type(entry[0]) is bytes and len(entry[0]) == 16
            and type(entry[1]) is int and type(entry[2]) is bytes):
        return _new_tuple(Result, (entry[0], entry[1], entry[2]))
    job_id, token = _lease(entry, "result")
    if len(entry) < 3 or type(entry[2]) is not bytes:
        raise _refuse("each result must be [id, token, packed value, ...]", entry)
    return Result(job_id, token, entry[2])


@dataclass(frozen=True)
class Done:
    """Finished runs."""

    results: tuple[Result, ...]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Done":
        return cls(tuple(map(_result, _list(body, "results"))))


@dataclass(frozen=True)
class Failure:
    """One failed run."""

    id: bytes
    token: int
    kind: str
    error: str
    traceback: str | None
    duration_ms: int


@dataclass(frozen=True)
class Fail:
    """Failed runs."""

    failures: tuple[Failure, ...]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Fail":
        failures = []
        for entry in _list(body, "failures"):
            if type(entry) is not dict:
                raise _refuse("each failure must be a map", entry)
            kind = entry.get("kind") or "error"
            failures.append(Failure(
                id=_job_id(entry.get("id")), token=_int(entry.get("token"), "lease token"),
                kind=_name(kind, "failure kind"), error=_text(entry.get("error"), "error") or "",
                traceback=_text(entry.get("traceback"), "traceback", None),
                duration_ms=_int(entry.get("duration_ms", 0) or 0, "duration_ms")))
        return cls(tuple(failures))


@dataclass(frozen=True)
class Return:
    """Unfinished jobs handed back by a draining worker."""

    jobs: tuple[tuple[bytes, int], ...]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Return":
        return cls(tuple(_lease(e, "returned job") for e in _list(body, "jobs")))


@dataclass(frozen=True)
class Step:
    """A step result to store before the handler goes on (answered with REPLY once committed)."""

    rid: int
    id: bytes
    token: int
    name: str
    record: dict[str, Any]
    enqueue: tuple[JobItem, ...]   # child jobs, each checked as an ENQUEUE item

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Step":
        record = body.get("record")
        if type(record) is not dict:
            raise _refuse("STEP's record must be a map", record)
        try:  # it is stored as is: what cannot be packed again must not reach the commit
            P.pack(record)
        except (TypeError, ValueError, OverflowError) as exc:
            raise _refuse(f"STEP's record cannot be stored: {exc}", None) from None
        return cls(rid=_int(body.get("rid"), "rid"), id=_job_id(body.get("id")),
                   token=_int(body.get("token"), "lease token"), name=_name(body.get("name"), "step name"),
                   record=record, enqueue=tuple(JobItem.from_body(c) for c in _list(body, "enqueue", required=False)))


@dataclass(frozen=True)
class Suspend:
    """Give the slot back until a wall time (``step.sleep``) or until children are final (``step.wait``)."""

    id: bytes
    token: int
    name: str
    due_ms: int
    wait_on: tuple[bytes, ...]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Suspend":
        due_ms = _int(body.get("due_ms", 0) or 0, "due_ms")
        if due_ms < 0:
            raise _refuse("due_ms must not be negative", due_ms)
        return cls(id=_job_id(body.get("id")), token=_int(body.get("token"), "lease token"),
                   name=_name(body.get("name"), "step name"), due_ms=due_ms,
                   wait_on=tuple(_job_id(c, "a child id") for c in _list(body, "wait_on", required=False)))


# --- client commands ---------------------------------------------------------------------------
# Field-by-field with ``protocol.field``, in the order the broker always read them, so a flawed
# request is refused with the same words as before the bodies were typed.
MAX_LIST = 10_000  # jobs listed by DEAD and JOBS at most


class JobItem(NamedTuple):
    """One job of an ENQUEUE (or a step's child, or a cron tick): checked, not yet admitted.

    A named tuple, not a dataclass: an ENQUEUE of 1,000 jobs builds 1,000 of them on the hot
    path, and a tuple is built in one call."""

    id: bytes
    wf: str
    payload: bytes
    group: str | None = None
    delay_ms: int = 0
    priority: int = 0
    retries: int | None = None
    key: str | None = None
    key_ttl_ms: int = 0

    @classmethod
    def from_body(cls, item: Any) -> "JobItem":
        """The common case (well-formed) takes a fast path; anything odd goes through the
        field-by-field checks, which name the problem."""
        if type(item) is dict:
            get = item.get
            job_id, wf, payload = get("id"), get("wf"), get("payload")
            group, delay, priority = get("group"), get("delay_ms", 0), get("priority", 0)
            retries, key, key_ttl = get("retries"), get("key"), get("key_ttl_ms", 0)
            if (type(job_id) is bytes and len(job_id) == 16 and type(wf) is str and wf
                    and type(payload) is bytes and (group is None or type(group) is str)
                    and type(delay) is int and type(priority) is int and (retries is None or type(retries) is int)
                    and (key is None or type(key) is str) and type(key_ttl) is int):
                # tuple.__new__ directly: a named tuple's own __new__ is Python code, 3x slower on this path
                return _new_tuple(cls, (job_id, wf, payload, group, delay, priority, retries, key, key_ttl))
        return cls._checked(item)

    @classmethod
    def _checked(cls, item: Any) -> "JobItem":
        if not isinstance(item, dict):
            raise ProtocolError("each job must be a map", item)
        job_id = field(item, "id", bytes)
        if len(job_id) != 16:
            raise ProtocolError(f"job id must be 16 bytes, got {len(job_id)}", job_id)
        workflow = field(item, "wf", str)
        if not workflow:
            raise ProtocolError("workflow name is empty", item)
        return cls(job_id, workflow, field(item, "payload", bytes), field(item, "group", str, None),
                   field(item, "delay_ms", int, 0), field(item, "priority", int, 0), field(item, "retries", int, None),
                   field(item, "key", str, None), field(item, "key_ttl_ms", int, 0))


class Enqueue(NamedTuple):
    """New jobs, admitted together or refused together (a named tuple, as ``JobItem``: the hot path)."""

    rid: int
    jobs: tuple[JobItem, ...]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Enqueue":
        rid = field(body, "rid", int)
        return _new_tuple(cls, (rid, tuple(map(JobItem.from_body, field(body, "jobs", list)))))


@dataclass(frozen=True, slots=True)
class Get:
    """Job records by id, now (an entry that is not a 16-byte id is answered None)."""

    rid: int
    ids: tuple[Any, ...]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Get":
        rid = field(body, "rid", int)
        return cls(rid, tuple(field(body, "ids", list)))


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A request about one job: WAIT, STEPS, HISTORY and CANCEL are each one of these."""

    rid: int
    id: bytes

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "JobRequest":
        rid = field(body, "rid", int)
        return cls(rid, P.job_id_field(body))


class Wait(JobRequest):
    """Answer when the job is final (pushed, never polled)."""


class Steps(JobRequest):
    """The stored steps of a job."""


class History(JobRequest):
    """The job's transitions from the log."""


class Cancel(JobRequest):
    """Cancel a job: at once when pending or scheduled, through its worker when running."""


@dataclass(frozen=True, slots=True)
class Plain:
    """A request with nothing but its rid: STATS, CRON and STORAGE are each one of these."""

    rid: int

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Plain":
        return cls(field(body, "rid", int))


class Stats(Plain):
    """Per-group counters."""


class Cron(Plain):
    """Cron entries with their last and next fire times."""


class Storage(Plain):
    """Sizes of the state, the log and the snapshots."""


@dataclass(frozen=True, slots=True)
class Dead:
    """Dead letters (of one group), at most ``limit``."""

    rid: int
    group: str | None
    limit: int

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Dead":
        rid = field(body, "rid", int)
        group = field(body, "group", str, None)
        return cls(rid, group, field(body, "limit", int, MAX_LIST))


@dataclass(frozen=True, slots=True)
class Requeue:
    """Dead letters back to pending: these ids, or ``all`` (of one group)."""

    rid: int
    ids: tuple[Any, ...]   # entries that are not 16-byte ids are skipped
    all: bool
    group: str | None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Requeue":
        rid = field(body, "rid", int)
        ids = tuple(field(body, "ids", list, []))
        every = field(body, "all", bool, False)
        return cls(rid, ids, every, field(body, "group", str, None) if every else None)


@dataclass(frozen=True, slots=True)
class Jobs:
    """Active jobs (in one state, of one group), oldest first, at most ``limit``."""

    rid: int
    state: str | None
    group: str | None
    limit: int

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Jobs":
        rid = field(body, "rid", int)
        state = field(body, "state", str, None)
        group = field(body, "group", str, None)
        return cls(rid, state, group, min(field(body, "limit", int, 100), MAX_LIST))


@dataclass(frozen=True, slots=True)
class Workers:
    """Connected workers (of one group)."""

    rid: int
    group: str | None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Workers":
        rid = field(body, "rid", int)
        return cls(rid, field(body, "group", str, None))

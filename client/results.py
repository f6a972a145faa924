"""What the client hands back: job results, steps, history entries, job ids, counters."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from shoal import protocol as P
from shoal.ids import id_to_str


@dataclass(frozen=True)
class Result:
    """A job as the broker reports it; ``value`` is decoded."""

    id: str
    status: str
    value: Any = None
    error: str | None = None
    error_kind: str | None = None
    traceback: str | None = None
    attempts: int = 0
    workflow: str = ""
    group: str = ""
    created_ms: int = 0
    started_ms: int = 0
    finished_ms: int = 0
    priority: int = 0
    key: str | None = None
    payload: Any = None  # decoded; only on ``get`` and ``dead_letters`` (listings leave it out)

    @property
    def ok(self) -> bool:
        """True when the job completed."""
        return self.status == "completed"

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Result":
        raw = record.get("value")
        return cls(id=id_to_str(record["id"]), status=record["state"],
                   value=None if raw is None else P.unpack(raw), error=record.get("error"),
                   error_kind=record.get("error_kind"), traceback=record.get("traceback"),
                   attempts=record.get("attempts", 0), workflow=record.get("workflow", ""),
                   group=record.get("group", "") or "", created_ms=record.get("created_ms", 0),
                   started_ms=record.get("started_ms", 0), finished_ms=record.get("finished_ms", 0),
                   priority=record.get("priority", 0), key=record.get("key"),
                   payload=None if record.get("payload") is None else P.unpack(record["payload"]))


@dataclass(frozen=True)
class StepInfo:
    """One stored step of a run: ``status`` is done, failed, sleeping or waiting."""

    name: str
    status: str
    attempts: int = 0
    duration_ms: int = 0
    finished_ms: int = 0
    value: Any = None
    error: str | None = None

    @classmethod
    def all_from(cls, steps: dict[str, dict[str, Any]]) -> list["StepInfo"]:
        out = [cls.from_record(name, record) for name, record in steps.items()]
        return sorted(out, key=lambda s: s.finished_ms)

    @classmethod
    def from_record(cls, name: str, record: dict[str, Any]) -> "StepInfo":
        common = {"attempts": record.get("attempts", 0), "duration_ms": record.get("duration_ms", 0),
                  "finished_ms": record.get("finished_ms", 0)}
        if record.get("permanent"):
            return cls(name, "failed", error=record.get("error"), **common)
        if "value" in record:
            return cls(name, "done", value=P.unpack(record["value"]), **common)
        if "children" in record:
            values = [[id_to_str(c[0]), c[1]] for c in record["children"]]
            return cls(name, "done", value=values, **common)
        if "wake_ms" in record:
            woke = record["wake_ms"] <= time.time() * 1000
            return cls(name, "done" if woke else "sleeping", value={"wake_ms": record["wake_ms"]}, **common)
        return cls(name, "waiting", value={"deadline_ms": record.get("deadline_ms")}, **common)


@dataclass(frozen=True)
class HistoryEntry:
    """One entry of a job's history (from the broker's log): what happened, when, in which run.

    ``time_ms`` is Unix ms; ``state`` and ``attempt`` are the job's right after it; ``worker``
    and ``token`` (the lease) are set on entries made during a run; ``error`` on failures.
    """

    seq: int
    time_ms: int
    op: str
    state: str
    attempt: int = 0
    worker: str = ""
    token: int = 0
    error: str | None = None
    detail: str = ""

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "HistoryEntry":
        return cls(seq=row["seq"], time_ms=row["wall_ms"], op=row["op"], state=row.get("state", ""),
                   attempt=row.get("attempt", 0), worker=row.get("worker", ""), token=row.get("token", 0),
                   error=row.get("error"), detail=row.get("detail", ""))


class JobId(str):
    """A job id as returned by ``enqueue``: a ``str``, plus ``deduplicated`` when a job
    holding the same ``key`` already existed and nothing new was enqueued."""

    deduplicated: bool = False

    @classmethod
    def of(cls, raw: bytes, deduplicated: bool) -> "JobId":
        out = cls(id_to_str(raw))
        if deduplicated:  # else the class's False: no instance dict made for the common case
            out.deduplicated = True
        return out


@dataclass(frozen=True)
class CancelResult:
    """What ``cancel`` did: ``cancelled`` is False for a job that had already finished."""

    cancelled: bool
    state: str
    message: str


def event_of(raw: dict[str, Any]) -> dict[str, Any]:
    """A lifecycle event as the user sees it: the job id as text."""
    raw["id"] = id_to_str(raw["id"])
    return raw


class Stats(dict):  # type: ignore[type-arg]
    """Per-group counters, keyed by group; ``unrouted`` counts jobs per unknown workflow name."""

    unrouted: dict[str, int]

"""Text formatting for the ``shoal`` command: aligned tables, ages, timestamps, values.

Pure functions with no I/O, so the look of every command is testable without a broker.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal.client import Result

VALUE_LIMIT_CHARS = 400  # longer values are cut in `shoal job`; --json shows them whole


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> list[str]:
    """Lines of an aligned table; columns whose index is in ``right`` are right-aligned (numbers)."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]
    lines = []
    for row in [headers, *rows]:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return lines


def duration(seconds: float) -> str:
    """A short human duration: ``350ms``, ``4.2s``, ``3m12s``, ``2h05m``, ``3d04h``."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def timestamp(ms: int) -> str:
    """Unix milliseconds as a UTC time people read; ``-`` for 0 (the event has not happened)."""
    if not ms:
        return "-"
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{ms % 1000:03d} UTC"


def to_json(value: Any, indent: int | None = None) -> str:
    """JSON text for a decoded msgpack value; what JSON cannot hold (bytes, ...) shows as its repr."""
    return json.dumps(value, indent=indent, ensure_ascii=False, default=_fallback)


def _fallback(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes: {bytes(value[:32])!r}{'...' if len(value) > 32 else ''}>"
    return repr(value)


def truncated(text: str, limit: int = VALUE_LIMIT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters; --json shows all)"


def first_line(text: str | None) -> str:
    """The first non-empty line of an error message, or ``-``."""
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return "-"


def plural(count: int, noun: str) -> str:
    """``1 job``, ``3 jobs``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def job_lines(r: "Result", now_ms: float) -> list[str]:
    """The text of ``shoal job``: one ``field: value`` line each, traceback indented at the end."""
    fields = [("id", r.id), ("status", r.status), ("workflow", r.workflow), ("group", r.group or "(unrouted)"),
              ("attempts", str(r.attempts)), ("created", timestamp(r.created_ms)),
              ("started", timestamp(r.started_ms)), ("finished", timestamp(r.finished_ms))]
    if r.started_ms and r.finished_ms:
        fields.append(("duration", duration((r.finished_ms - r.started_ms) / 1000)))
    elif r.started_ms and r.status == "running":
        fields.append(("duration", f"{duration((now_ms - r.started_ms) / 1000)} so far"))
    if r.status == "completed":
        fields.append(("value", truncated(to_json(r.value))))
    if r.error:
        # "error" is the ordinary kind (the handler raised); the others explain a death
        kind = f" ({r.error_kind})" if r.error_kind and r.error_kind != "error" else ""
        fields.append(("error", first_line(r.error) + kind))
    width = max(len(name) for name, _ in fields) + 2
    lines = [f"{name + ':':<{width}}{value}" for name, value in fields]
    if r.traceback:
        lines.append("traceback:")
        lines += ["  " + line for line in r.traceback.rstrip().splitlines()]
    return lines
